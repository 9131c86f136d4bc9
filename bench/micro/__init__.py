"""Micro-benchmarks (pytest-benchmark) of the native hot path beside its
plain-Python reference: `python -m bench.micro`. Kept out of the default test
run: pytest collects `tests/` only, and these files are named `bench_*.py`.
"""
