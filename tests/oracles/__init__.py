"""Test oracles: the plain-Python models the native modules are checked against.

Each module here is an executable specification of a Cython module, written
for clarity rather than speed and making the same checks in the same order,
so that the tests run both on the same input, check for check, and
hypothesis searches for any input on which they differ:

- `admission`: the token bucket and the scheduler (native/bucket.pyx,
  native/scheduler.pyx), checked by tests/unit/test_bucket.py and
  test_scheduler.py;
- `http`: request/response head parsing and serialization (native/head.pyx,
  native/serialize.pyx), checked by tests/unit/test_head.py;
- `routing`: host routing and traffic classification (native/router.pyx),
  checked by tests/unit/test_routing.py.

The micro-benchmarks (`python -m bench.micro`) time each native function
beside its model here. None of this is product code: the installed `gateway`
package never imports it (tests/unit/test_package_imports.py).
"""
