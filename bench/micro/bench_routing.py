"""Routing and classification hot path, native vs plain-Python reference.

Run: `python -m bench.micro` (every micro-benchmark, native beside reference);
`python -m bench.micro -k bench_routing` for this file only.
"""

from __future__ import annotations

import pytest

from gateway._native import router as native
from gateway.config.schema import default_classes
from gateway.http import parse_request_head
from tests.oracles import routing as reference

IMPLS = pytest.mark.parametrize("m", [native, reference], ids=["native", "reference"])

# A cloud deployment: 200 schools, each with a portal name and a wildcard.
SCHOOLS = [[f"schule{i}.example", f"*.schule{i}.example"] for i in range(200)] + [["*"]]

HEAD = parse_request_head(b"GET", b"/course/view.php", "1.1",
                          [(b"Host", b"moodle.schule150.example")], False)


@IMPLS
def test_route_exact(benchmark, m):
    router = m.Router(SCHOOLS)
    assert benchmark(router.route, b"schule150.example") == 150


@IMPLS
def test_route_wildcard(benchmark, m):
    router = m.Router(SCHOOLS)
    assert benchmark(router.route, b"moodle.schule150.example") == 150


@IMPLS
def test_route_miss_to_default(benchmark, m):
    router = m.Router(SCHOOLS)
    assert benchmark(router.route, b"www.unknown.school.example") == 200


@IMPLS
def test_classify_default_classes(benchmark, m):
    """A plain GET walks every bulk prefix before falling back to interactive."""
    classifier = m.Classifier([c.match for c in default_classes()])
    assert benchmark(classifier.classify, b"GET", b"/course/view.php", HEAD) == 2
