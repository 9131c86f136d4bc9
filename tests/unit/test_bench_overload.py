"""The overload bench's pure parts: telling waiting pages from error pages,
summarising a run, and what fails it. No process is started here.

Waiting pages are rendered by the gateway's own renderer, so a change to the
pages that the bench would no longer recognise fails here rather than
silently turning every waiting page into an "error page" in the report.
"""

from __future__ import annotations

from collections import Counter

import pytest

from bench import loadgen, overload
from bench.loadgen import BACK_OFF, ERROR, OK, ORIGIN, OTHER, WAITING, answer_kind
from gateway.waiting import render

NGINX_503 = (b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n"
             b"<body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
             b"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
HAPROXY_503 = (b"<html><body><h1>503 Service Unavailable</h1>\nNo server is available to"
               b" handle this request.\n</body></html>\n")


def gateway_page(kind: str, accept: bytes) -> tuple[int, bool, bytes]:
    page = render(kind, school_title="bench", accept=accept, accept_language=b"",  # type: ignore[arg-type]
                  retry_after=2, position=7, eta=3.0, original_url="/courses/1",
                  status_url="/.schoolgate/status")
    has_retry = any(name.lower() == b"retry-after" for name, _ in page.headers)
    return page.status, has_retry, page.body


class TestAnswerKind:
    @pytest.mark.parametrize("accept", [loadgen.ACCEPT_HTML.encode(), b"application/json"])
    def test_gateway_waiting_page_html_and_json(self, accept):
        status, retry, body = gateway_page("wait", accept)
        assert (status, retry) == (503, True)
        assert answer_kind(status, False, retry, body) == WAITING

    @pytest.mark.parametrize("accept", [b"application/json", b"*/*"])
    def test_gateway_bulk_429_is_a_back_off(self, accept):
        status, retry, body = gateway_page("bulk", accept)
        assert (status, retry) == (429, True)
        assert answer_kind(status, False, retry, body) == BACK_OFF

    @pytest.mark.parametrize("accept", [loadgen.ACCEPT_HTML.encode(), b"application/json"])
    def test_gateway_down_page_is_an_error_despite_retry_after(self, accept):
        status, retry, body = gateway_page("down", accept)
        assert (status, retry) == (503, True)
        assert answer_kind(status, False, retry, body) == ERROR

    @pytest.mark.parametrize(("status", "body"), [
        (503, NGINX_503), (502, b"<html>502 Bad Gateway</html>"), (503, HAPROXY_503),
        (504, b"<html>504 Gateway Time-out</html>"), (429, b"slow down"),
    ])
    def test_other_proxies_refusals_are_error_pages(self, status, body):
        assert answer_kind(status, False, False, body) == ERROR

    def test_a_503_with_retry_after_but_no_place_in_line_is_an_error_page(self):
        assert answer_kind(503, False, True, NGINX_503) == ERROR

    def test_origin_answers_are_never_the_proxys(self):
        assert answer_kind(200, True, False, b"") == OK
        assert answer_kind(503, True, True, b'"error":"busy"') == ORIGIN
        assert answer_kind(204, False, False, b"") == OTHER


def test_pages_ask_for_html_and_api_calls_for_json():
    assert loadgen.accept_for("/courses/5") == loadgen.ACCEPT_HTML
    assert loadgen.accept_for("/api/grades?student=1") == loadgen.ACCEPT_JSON
    assert all(loadgen.accept_for(p.format(n=1)) == loadgen.ACCEPT_JSON
               for p in loadgen.BULK_PATHS)
    raw = loadgen.request_bytes("/x", "application/json")
    assert raw.endswith(b"\r\nAccept: application/json\r\n\r\n")


def _run(answers_inter: dict, answers_bulk: dict, failures: dict | None = None):
    classes = {}
    for name, answers in (("interactive", answers_inter), ("bulk", answers_bulk)):
        result = loadgen.ClassResult()
        for (kind, status), n in answers.items():
            result.answers[kind, status] += n
            result.statuses[status] += n
            result.answer_latency += [0.5] * n
            if kind == OK:
                result.ok_latency += [0.1] * n
            elif kind == ORIGIN:
                result.origin_errors[status] += n
        result.sent = sum(answers.values())
        classes[name] = result
    classes["interactive"].failures = Counter(failures or {})
    return loadgen.RunResult(rate=100.0, duration=1.0, classes=classes, lag=[0.001],
                             elapsed=2.0)


class TestSummary:
    def test_gateway_row_splits_waiting_pages_from_errors(self):
        row = overload.summarize("gateway", 5, _run(
            {(OK, 200): 80, (WAITING, 503): 15},
            {(OK, 200): 5, (BACK_OFF, 429): 20},
        ))
        assert row["statuses"] == {200: 85, 503: 15, 429: 20}
        assert row["waiting_pages"] == {503: 15, 429: 20}
        assert row["error_pages"] == {}
        assert row["origin_errors"] == {}
        assert row["bulk_share_admitted"] == pytest.approx(5 / 85)
        assert row["answers"] == {"back-off 429": 20, "ok 200": 85, "waiting 503": 15}
        assert row["answers_by_class"]["bulk"] == {"back-off 429": 20, "ok 200": 5}
        assert row["admitted_rps"] == pytest.approx(85 / 2.0)
        assert overload.row_problems(row) == []

    def test_gateway_errors_and_origin_refusals_fail_the_run(self):
        row = overload.summarize("gateway", 10, _run(
            {(OK, 200): 10, (ERROR, 502): 2, (ORIGIN, 503): 3}, {(ERROR, 504): 1},
        ))
        assert row["error_pages"] == {502: 2, 504: 1}
        problems = overload.row_problems(row)
        assert len(problems) == 2
        assert "gateway at 10x: error pages 502: 2, 504: 1" in problems[0]
        assert "origin refused 503: 3" in problems[1]

    def test_other_proxies_may_refuse_with_error_pages(self):
        row = overload.summarize("nginx", 2, _run({(OK, 200): 10, (ERROR, 503): 9}, {}))
        assert row["error_pages"] == {503: 9}
        assert row["bulk_share_admitted"] == 0
        assert overload.row_problems(row) == []

    def test_no_answer_fails_any_system_but_the_generators_own_limit_does_not(self):
        row = overload.summarize("haproxy", 2, _run({(OK, 200): 1}, {}, {"reset": 2}))
        assert overload.row_problems(row) == ["haproxy at 2x: no HTTP answer {'reset': 2}"]
        row = overload.summarize("haproxy", 2, _run({(OK, 200): 1}, {}, {"client-limit": 2}))
        assert overload.row_problems(row) == []

    def test_markdown_has_a_column_each(self):
        row = overload.summarize("gateway", 5, _run(
            {(OK, 200): 8, (WAITING, 503): 2}, {(BACK_OFF, 429): 1},
        ))
        row["origin_peak_inflight"] = 20
        lines = overload.markdown([row]).splitlines()
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        cells = dict(zip(header, (c.strip() for c in lines[2].strip("|").split("|")),
                         strict=True))
        assert cells["statuses"] == "200: 8, 429: 1, 503: 2"
        assert cells["waiting pages"] == "429: 1, 503: 2"
        assert cells["error pages"] == "-"
        assert cells["bulk % of 2xx"] == "0.0"

