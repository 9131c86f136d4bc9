"""Compiled hot path (built from native/*.pyx by setup.py). Import via the public modules."""
