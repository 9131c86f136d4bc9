"""schoolgate: an admission-control reverse proxy for school platforms."""

__version__ = "0.1.0"
