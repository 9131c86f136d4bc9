"""Host routing and traffic classification: every case runs against the native
module and the plain-Python reference, and hypothesis checks the two agree."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._native import router as native
from gateway.config.schema import Match, default_classes
from gateway.http import parse_request_head
from tests.oracles import http as http_reference
from tests.oracles import routing as reference

IMPLS = [pytest.param(native, id="native"), pytest.param(reference, id="reference")]


@pytest.fixture(params=IMPLS)
def m(request):
    return request.param


# --- routing -------------------------------------------------------------------

def test_exact_and_wildcard(m):
    router = m.Router([["gymnasium.example", "*.gymnasium.example"], ["realschule.example"]])
    assert router.route(b"gymnasium.example") == 0
    assert router.route(b"moodle.gymnasium.example") == 0
    assert router.route(b"a.b.c.gymnasium.example") == 0
    assert router.route(b"realschule.example") == 1
    assert router.route(b"www.realschule.example") == -1
    assert router.route(b"example") == -1
    assert router.route(b"") == -1


def test_wildcard_does_not_match_its_own_apex_or_partial_labels(m):
    router = m.Router([["*.school.example"]])
    assert router.route(b"school.example") == -1
    assert router.route(b"oldschool.example") == -1
    assert router.route(b".school.example") == -1
    assert router.route(b"x.school.example") == 0


def test_exact_beats_wildcard_and_longest_suffix_wins(m):
    router = m.Router([["*.example"], ["*.school.example"], ["admin.school.example"],
                       ["*.x.school.example"]])
    assert router.route(b"other.example") == 0
    assert router.route(b"portal.school.example") == 1
    assert router.route(b"admin.school.example") == 2
    assert router.route(b"deep.admin.school.example") == 1
    assert router.route(b"a.x.school.example") == 3
    assert router.route(b"a.b.x.school.example") == 3


def test_catch_all_has_lowest_precedence(m):
    router = m.Router([["*"], ["*.school.example", "exact.example"]])
    assert router.route(b"unknown.example") == 0
    assert router.route(b"a.school.example") == 1
    assert router.route(b"exact.example") == 1
    assert router.route(b"[::1]") == 0


def test_entries_normalised_like_host(m):
    router = m.Router([["Portal.School.Example.", " *.Moodle.Example "], ["[::1]", "10.0.0.7"]])
    assert router.route(b"portal.school.example") == 0
    assert router.route(b"x.moodle.example") == 0
    assert router.route(b"[::1]") == 1
    assert router.route(b"10.0.0.7") == 1


def test_routes_what_parse_request_head_produces(m):
    router = m.Router([["portal.school.example"], ["[::1]"]])
    for host, school in [(b"Portal.School.Example.:8443", 0), (b"[::1]:8080", 1)]:
        head = parse_request_head(b"GET", b"/", "1.1", [(b"Host", host)], False)
        assert router.route(head.host) == school


@pytest.mark.parametrize(("hosts", "named"), [
    ([["a.example"], ["A.Example."]], "'a.example'"),
    ([["*.a.example"], ["*.A.example"]], "'*.a.example'"),
    ([["*"], ["b.example"], ["*"]], "'*' is listed by school 0 and school 2"),
])
def test_duplicate_across_schools_is_named(m, hosts, named):
    with pytest.raises(ValueError) as info:
        m.Router(hosts)
    assert named in str(info.value)


def test_duplicate_within_one_school_is_harmless(m):
    assert m.Router([["a.example", "a.example."]]).route(b"a.example") == 0


@pytest.mark.parametrize("entry", ["", ".", "a.example:80", "a b", "*a.example", "a.*.example",
                                   "*.", "*.*.example", "user@a.example", "[::1]:80", "[zz]",
                                   "schöl.example"])
def test_malformed_entries_are_rejected(m, entry):
    with pytest.raises(ValueError, match="entry"):
        m.Router([[entry]])


def test_no_schools(m):
    assert m.Router([]).route(b"a") == -1


_LABELS = st.sampled_from(["a", "b", "school", "x-1"])
_HOSTNAMES = st.lists(_LABELS, min_size=1, max_size=4).map(".".join)
_ENTRIES = st.one_of(_HOSTNAMES, _HOSTNAMES.map("*.".__add__), st.just("*"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_ENTRIES, max_size=4), max_size=4), st.lists(_HOSTNAMES, max_size=8))
def test_router_impls_agree(schools, hosts):
    outcomes = []
    for mod in (native, reference):
        try:
            router = mod.Router(schools)
        except ValueError as error:
            outcomes.append(str(error))
        else:
            outcomes.append([router.route(h.encode()) for h in hosts])
    assert outcomes[0] == outcomes[1]


# --- classification ------------------------------------------------------------

def head(headers=()):
    return http_reference.parse_request_head(b"GET", b"/", "1.1", [(b"Host", b"a"), *headers],
                                             False)


@pytest.fixture(params=["native", "reference"])
def make_head(request):
    """Heads of either implementation: the classifier takes anything with header()."""
    impl = parse_request_head if request.param == "native" else \
        http_reference.parse_request_head

    def make(headers=()):
        return impl(b"GET", b"/", "1.1", [(b"Host", b"a"), *headers], False)
    return make


def test_default_classes(m, make_head):
    classifier = m.Classifier([c.match for c in default_classes()])
    h = make_head()
    assert classifier.classify(b"POST", b"/api/import/users", h) == 0
    assert classifier.classify(b"GET", b"/export", h) == 0
    assert classifier.classify(b"POST", b"/kurse/abgabe", h) == 1
    assert classifier.classify(b"PUT", b"/x", h) == 1
    assert classifier.classify(b"GET", b"/kurse", h) == 2
    assert classifier.classify(b"DELETE", b"/", h) == 2


def test_first_fitting_class_wins_in_list_order(m, make_head):
    classifier = m.Classifier([Match(methods=["GET"]), Match(paths=["/a"]), None])
    assert classifier.classify(b"GET", b"/a", make_head()) == 0
    assert classifier.classify(b"POST", b"/a", make_head()) == 1


def test_fallback_is_first_match_less_class_whatever_its_position(m, make_head):
    classifier = m.Classifier([None, Match(methods=["POST"]), None])
    assert classifier.classify(b"POST", b"/", make_head()) == 1
    assert classifier.classify(b"GET", b"/", make_head()) == 0


def test_nothing_fits_without_fallback(m, make_head):
    assert m.Classifier([Match(methods=["POST"])]).classify(b"GET", b"/", make_head()) == -1
    assert m.Classifier([]).classify(b"GET", b"/", make_head()) == -1


def test_empty_match_fits_everything(m, make_head):
    assert m.Classifier([Match(), None]).classify(b"PATCH", b"/x", make_head()) == 0


def test_all_criteria_must_fit(m, make_head):
    match = Match(methods=["post"], paths=["/api/", "/sync"], headers={"X-Client": "app"})
    classifier = m.Classifier([match, None])
    app = make_head([(b"x-client", b" app\t")])
    assert classifier.classify(b"POST", b"/api/x", app) == 0
    assert classifier.classify(b"POST", b"/sync", app) == 0
    assert classifier.classify(b"GET", b"/api/x", app) == 1
    assert classifier.classify(b"POST", b"/ap", app) == 1
    assert classifier.classify(b"POST", b"/api/x", make_head()) == 1
    assert classifier.classify(b"POST", b"/api/x", make_head([(b"X-Client", b"App")])) == 1


def test_header_wildcard_and_hop_by_hop_headers(m, make_head):
    classifier = m.Classifier([Match(headers={"upgrade": "*"}), Match(headers={"X-A": "1"})])
    assert classifier.classify(b"GET", b"/", make_head([(b"Upgrade", b"websocket")])) == 0
    assert classifier.classify(b"GET", b"/", make_head([(b"X-A", b"")])) == -1
    assert classifier.classify(b"GET", b"/", make_head([(b"X-A", b"1"), (b"X-A", b"2")])) == 1
    assert classifier.classify(b"GET", b"/", make_head([(b"X-A", b"2"), (b"X-A", b"1")])) == -1


_METHODS = st.sampled_from(["GET", "POST", "PUT", "get"])
_PATHS = st.sampled_from(["/", "/api", "/api/import", "/export", "/a/b"])
_MATCHES = st.one_of(st.none(), st.builds(
    Match,
    methods=st.lists(_METHODS, max_size=2),
    paths=st.lists(_PATHS, max_size=2),
    headers=st.dictionaries(st.sampled_from(["X-A", "x-b", "Upgrade"]),
                            st.sampled_from(["*", "1", " 2 "]), max_size=2),
))


@settings(max_examples=300, deadline=None)
@given(st.lists(_MATCHES, max_size=5), st.sampled_from([b"GET", b"POST", b"PUT"]),
       _PATHS.map(str.encode),
       st.lists(st.tuples(st.sampled_from([b"X-A", b"x-b", b"Upgrade"]),
                          st.sampled_from([b"1", b"2 ", b"3", b""])), max_size=3))
def test_classifier_impls_agree(matches, method, path, headers):
    h = head(headers)
    assert (native.Classifier(matches).classify(method, path, h)
            == reference.Classifier(matches).classify(method, path, h))
