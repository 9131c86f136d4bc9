"""End-to-end benchmarks: schoolgate against nginx, HAProxy and no proxy at all.

`python -m bench.load`, `python -m bench.overload` and `python -m bench.memory`
start every process they measure on 127.0.0.1 in a temporary directory and
stop them again however the run ends; see bench/README.md.
"""
