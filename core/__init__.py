"""smolforge: small language models made as an orchestrated, reproducible pipeline."""

__version__ = "0.1.0"
