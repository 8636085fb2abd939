"""Answering with a model the pipeline made: `smolforge generate` in a fresh process."""
