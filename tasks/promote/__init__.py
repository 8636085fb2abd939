"""Promotion: the champion/challenger gate and the registry aliases it moves."""
