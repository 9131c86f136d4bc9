"""Demo: schoolgate in front of pretend school platforms (``schoolgate demo``)."""

from .launcher import main

__all__ = ["main"]
