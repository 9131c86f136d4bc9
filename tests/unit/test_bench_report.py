"""The benchmark harness's pure parts: wrk output, summaries, tables, configs.

No process is started and nothing is timed here.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from bench import configs, cpu, report, systems, wrk
from gateway.config import parse_config
from gateway.config.schema import Config

WRK_STDOUT = """\
Running 3s test @ http://127.0.0.1:40001/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.31ms  412.07us  12.40ms   90.12%
    Req/Sec    49.20k     2.10k   52.30k    71.00%
  Latency Distribution
     50%    1.28ms
     99%    2.97ms
  146912 requests in 3.00s, 17.23MB read
  Non-2xx or 3xx responses: 12
Requests/sec:  48962.51
Transfer/sec:      5.74MB
WRK_RESULT {"duration_us": 3000500, "requests": 146912, "bytes": 18067000, "connect": 0,\
 "read": 2, "write": 1, "timeout": 3, "status": 12, "p50_us": 1280, "p99_us": 2970,\
 "max_us": 12400, "mean_us": 1310.4}
"""


def result(rps: float, p50: float = 1.0, p99: float = 2.0, http: int = 0, sock: int = 0):
    return wrk.WrkResult(
        requests=int(rps * 10), duration_s=10.0, bytes=0, connect_errors=0, read_errors=sock,
        write_errors=0, timeouts=0, http_errors=http, p50_ms=p50, p99_ms=p99, max_ms=p99,
        mean_ms=p50,
    )


class TestWrkParse:
    def test_reads_the_reporter_line_among_wrk_text(self):
        parsed = wrk.parse(WRK_STDOUT)
        assert parsed.requests == 146912
        assert parsed.duration_s == pytest.approx(3.0005)
        assert parsed.rps == pytest.approx(146912 / 3.0005)
        assert (parsed.p50_ms, parsed.p99_ms, parsed.max_ms) == (1.28, 2.97, 12.4)
        assert parsed.http_errors == 12
        assert parsed.socket_errors == 2 + 1 + 3

    def test_json_form_carries_derived_fields(self):
        data = wrk.parse(WRK_STDOUT).to_json()
        assert data["socket_errors"] == 6
        assert data["rps"] == pytest.approx(146912 / 3.0005)
        json.dumps(data)

    def test_missing_line_is_an_error_quoting_the_output(self):
        with pytest.raises(wrk.WrkError, match="unable to connect"):
            wrk.parse("unable to connect to 127.0.0.1:1 Connection refused\n")

    def test_malformed_line_is_an_error(self):
        with pytest.raises(wrk.WrkError, match="malformed"):
            wrk.parse('WRK_RESULT {"requests": 1}\n')

    def test_zero_duration_gives_zero_rate_not_a_crash(self):
        assert dataclasses.replace(result(5), duration_s=0.0).rps == 0.0

    def test_reporter_prints_every_field_parse_reads(self):
        for key in ("duration_us", "requests", "bytes", "connect", "read", "write",
                    "timeout", "status", "p50_us", "p99_us", "max_us", "mean_us"):
            assert f'"{key}"' in wrk.REPORTER_LUA


def used(us_per_request: float, origin_us: float = 10.0):
    """A CpuUse whose figures come out at the given microseconds per request."""
    # At 100 ticks/s over 100,000 requests one tick adds 0.1 us per request.
    return cpu.CpuUse(ticks=round(us_per_request * 10), origin_ticks=round(origin_us * 10),
                      requests=100_000, ticks_per_second=100)


def cells_of(line: str) -> list[str]:
    return [c.strip() for c in line.strip("|").split("|")]


class TestRatios:
    def test_median_of_per_round_ratios_not_ratio_of_medians(self):
        # Round by round: 0.5, 4.0, 0.75 -> 0.75; the medians' ratio would be 3 / 2.
        assert report.median_ratio([1, 4, 3], [2, 1, 4]) == pytest.approx(0.75)

    def test_unmeasured_or_zero_rounds_are_skipped(self):
        assert report.paired_ratios([1, None, 3, 4], [2, 5, 0, None]) == [0.5]
        assert report.median_ratio([None], [1]) is None
        assert report.median_ratio([], []) is None


class TestLoadSummary:
    def test_medians_over_rounds_and_ratio_to_nginx(self):
        rows = report.load_summary(
            {"small": {
                "gateway": [result(900, 1, 5), result(100, 9, 50), result(800, 2, 6)],
                "nginx": [result(1000), result(1000), result(1000)],
            }},
            {"gateway": 40 * 1024, "nginx": 12 * 1024},
        )
        gateway = next(r for r in rows if r["system"] == "gateway")
        # The one disturbed round (100 req/s) does not drag the median.
        assert gateway["rps"] == 800
        assert (gateway["p50_ms"], gateway["p99_ms"]) == (2, 6)
        assert gateway["vs_nginx"] == pytest.approx(0.8)
        assert gateway["rounds"] == 3
        assert gateway["peak_rss_kib"] == 40 * 1024

    def test_errors_are_summed_over_rounds(self):
        rows = report.load_summary(
            {"64k": {"haproxy": [result(10, http=2), result(10, sock=3), result(10, http=1)]}},
            {},
        )
        assert rows[0]["http_errors"] == 3
        assert rows[0]["socket_errors"] == 3

    def test_without_nginx_there_is_no_ratio(self):
        rows = report.load_summary({"small": {"direct": [result(5)]}}, {})
        assert rows[0]["vs_nginx"] is None
        line = report.load_markdown(rows).splitlines()[2]
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[5] == "-"
        assert cells[8] == "-"

    def test_markdown_row_shows_rounded_values(self):
        rows = report.load_summary(
            {"small": {"nginx": [result(48962.5, 1.284, 2.97)]}}, {"nginx": 13824}
        )
        line = report.load_markdown(rows).splitlines()[2]
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells == ["small", "nginx", "48,962", "1.28", "2.97", "1.00x", "0", "0", "13.5"]


    def test_cpu_per_request_medians_and_ratio_to_nginx(self):
        rows = report.load_summary(
            {"small": {"gateway": [result(800)] * 3, "nginx": [result(1000)] * 3}},
            {},
            {"small": {
                "gateway": [used(30, 9), used(90, 10), used(20, 11)],
                "nginx": [used(20), used(30), used(10)],
            }},
        )
        gateway, nginx = rows
        # The disturbed round (90 us) does not move the median.
        assert gateway["cpu_us"] == pytest.approx(30)
        # Per round 1.5, 3.0, 2.0 -> 2.0 (not 30 / 20 from the medians).
        assert gateway["cpu_vs_nginx"] == pytest.approx(2.0)
        assert gateway["origin_cpu_us"] == pytest.approx(10)
        assert nginx["cpu_vs_nginx"] == pytest.approx(1.0)

    def test_cpu_columns_in_the_table(self):
        rows = report.load_summary(
            {"small": {"nginx": [result(1000)], "gateway": [result(800)]}},
            {"nginx": 13824},
            {"small": {"nginx": [used(20, 8)], "gateway": [used(25, 8)]}},
        )
        header, _, nginx, gateway = report.load_markdown(rows).splitlines()
        assert cells_of(header) == ["case", "system", "req/s", "p50 ms", "p99 ms", "vs nginx",
                                    "CPU us/req", "CPU vs nginx", "non-2xx", "socket err",
                                    "peak RSS MiB", "origin CPU us/req"]
        assert cells_of(nginx)[5:8] == ["1.00x", "20.0", "1.00x"]
        assert cells_of(gateway)[5:8] == ["0.80x", "25.0", "1.25x"]
        assert cells_of(gateway)[11] == "8.0"

    def test_a_round_without_requests_has_no_cpu_figure(self):
        rows = report.load_summary(
            {"small": {"haproxy": [result(0), result(10)]}}, {},
            {"small": {"haproxy": [cpu.CpuUse(ticks=5, origin_ticks=1, requests=0),
                                   used(40)]}},
        )
        assert rows[0]["cpu_us"] == pytest.approx(40)
        assert rows[0]["cpu_vs_nginx"] is None
        assert cells_of(report.load_markdown(rows).splitlines()[2])[7] == "-"


class TestAdmissionCost:
    def test_median_of_paired_per_round_ratios(self):
        cost = report.admission_cost({"small": {
            "gateway": [result(900, 2, 8), result(500, 3, 9), result(1000, 2, 7)],
            "gateway-noadm": [result(1000, 1, 5), result(1000, 1, 6), result(1000, 1, 4)],
            "nginx": [result(2000)] * 3,
        }})
        (row,) = cost
        # Rounds pair up: 0.9, 0.5, 1.0; the disturbed one does not decide.
        assert row["ratio"] == pytest.approx(0.9)
        assert (row["ratio_min"], row["ratio_max"]) == (pytest.approx(0.5), pytest.approx(1.0))
        assert (row["rps_on"], row["rps_off"]) == (900, 1000)
        assert (row["p99_ms_on"], row["p99_ms_off"]) == (8, 5)
        assert row["rounds"] == 3

    def test_cases_without_both_gateways_are_left_out(self):
        assert report.admission_cost({"small": {"gateway": [result(5)]}}) == []
        assert report.admission_cost({"small": {"gateway-noadm": [result(5)]}}) == []

    def test_a_zero_round_is_skipped_not_divided_by(self):
        cost = report.admission_cost({"64k": {
            "gateway": [result(5), result(8)], "gateway-noadm": [result(0), result(10)],
        }})
        assert cost[0]["ratio"] == pytest.approx(0.8)
        assert cost[0]["rounds"] == 1

    def test_markdown(self):
        cost = report.admission_cost({"small": {
            "gateway": [result(9500, 1.25, 3.5)], "gateway-noadm": [result(10000, 1.0, 3.0)],
        }})
        line = report.admission_markdown(cost).splitlines()[2]
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells == ["small", "9,500", "10,000", "0.950x", "0.950-0.950",
                         "1.25 / 1.00", "3.50 / 3.00"]


    def test_cpu_on_and_off_with_per_round_ratio(self):
        cost = report.admission_cost(
            {"small": {"gateway": [result(900)] * 3, "gateway-noadm": [result(1000)] * 3}},
            {"small": {"gateway": [used(24), used(60), used(22)],
                       "gateway-noadm": [used(20), used(20), used(20)]}},
        )
        (row,) = cost
        assert (row["cpu_us_on"], row["cpu_us_off"]) == (pytest.approx(24), pytest.approx(20))
        # Per round 1.2, 3.0, 1.1 -> 1.2.
        assert row["cpu_ratio"] == pytest.approx(1.2)
        header, _, line = report.admission_markdown(cost).splitlines()
        assert cells_of(header)[-2:] == ["CPU us/req on / off", "CPU on/off"]
        assert cells_of(line)[-2:] == ["24.0 / 20.0", "1.200x"]


class TestEnvironment:
    def test_cpu_model_from_cpuinfo(self, tmp_path: Path):
        info = tmp_path / "cpuinfo"
        info.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Example CPU 9000\n\n"
                        "processor\t: 1\nmodel name\t: Example CPU 9000\n")
        assert report.cpu_model(info) == "Example CPU 9000"

    def test_cpu_model_without_cpuinfo_is_still_text(self, tmp_path: Path):
        assert isinstance(report.cpu_model(tmp_path / "missing"), str)


class TestResolveSystems:
    def test_missing_programs_are_named_with_the_fix(self, monkeypatch):
        monkeypatch.setattr(systems.shutil, "which",
                            lambda name: None if name in ("haproxy", "wrk") else f"/x/{name}")
        with pytest.raises(systems.BenchError, match=r"haproxy, wrk.*bootstrap --test"):
            systems.resolve_systems(["nginx", "haproxy"], ["nginx", "haproxy"],
                                    extra_binaries=("wrk",))

    def test_gateways_and_direct_need_no_program(self, monkeypatch):
        monkeypatch.setattr(systems.shutil, "which", lambda name: None)
        names, notes = systems.resolve_systems(
            ["gateway", "gateway-noadm", "direct"], ["gateway", "gateway-noadm", "direct"]
        )
        assert (names, notes) == (["gateway", "gateway-noadm", "direct"], [])

    def test_unknown_system(self):
        with pytest.raises(systems.BenchError, match="unknown system 'envoy'"):
            systems.resolve_systems(["envoy"], ["gateway"])


class TestTables:
    def test_numeric_columns_right_aligned_with_rule(self):
        table = report.markdown_table(["name", "n"], [["a", "1"], ["bbbb", "1,000"]],
                                      [False, True])
        assert table.splitlines() == [
            "| name |     n |",
            "|------|------:|",
            "| a    |     1 |",
            "| bbbb | 1,000 |",
        ]

    def test_ragged_rows_are_refused(self):
        with pytest.raises(ValueError, match="one cell per header"):
            report.markdown_table(["a", "b"], [["only one"]])

    @pytest.mark.parametrize(("value", "digits", "text"), [
        (None, 0, "-"), (float("nan"), 1, "-"), (1234.5, 0, "1,234"), (0.456, 2, "0.46"),
    ])
    def test_fmt(self, value, digits, text):
        assert report.fmt(value, digits) == text

    def test_counts_sorted_and_empty(self):
        assert report.counts({503: 7, 200: 90, 429: 0}) == "200: 90, 503: 7"
        assert report.counts({}) == "-"

    def test_percentile_nearest_rank(self):
        values = [float(v) for v in range(100, 0, -1)]
        assert report.percentile(values, 50) == 50
        assert report.percentile(values, 99) == 99
        assert report.percentile(values, 100) == 100
        assert report.percentile([3.0], 99) == 3.0
        assert report.percentile([], 50) is None


def test_results_are_written_as_markdown_and_json(tmp_path: Path):
    out = report.results_dir(tmp_path, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert out == tmp_path / "20260102T030405Z"
    md, js = report.write(out, "load", "# table", {"rows": [1, 2]})
    assert md.read_text() == "# table\n"
    assert json.loads(js.read_text()) == {"rows": [1, 2]}


class TestConfigs:
    POLICY = configs.OverloadPolicy(capacity=20, rate=400.0, max_queue=400, max_wait=1.0)

    @pytest.mark.parametrize("overload", [None, POLICY])
    def test_gateway_config_decodes_against_the_schema(self, overload):
        text = configs.gateway(port=8000, upstream_port=9000, workers=1, overload=overload,
                               keepalive_timeout=600)
        cfg = msgspec.convert(tomllib.loads(text), Config)
        school = cfg.schools[0]
        assert cfg.server.listen == "127.0.0.1:8000"
        assert school.upstreams == ["127.0.0.1:9000"]
        assert cfg.timeouts.keepalive == 600
        if overload is None:
            assert school.max_inflight >= 1_000_000 and cfg.classes == []
        else:
            assert school.max_inflight == 20
            assert cfg.admission.max_queue == 400
            bulk, interactive = cfg.classes
            assert bulk.match is not None and bulk.match.paths == ["/api/import"]
            assert interactive.priority > bulk.priority

    @pytest.mark.parametrize("overload", [None, POLICY])
    def test_gateway_noadm_is_the_same_config_with_admission_off(self, overload):
        def config(enabled: bool) -> Config:
            text = configs.gateway(port=8000, upstream_port=9000, workers=2, overload=overload,
                                   keepalive_timeout=75, admission_enabled=enabled)
            # The loader's semantic checks too, not just the schema.
            return parse_config(text.encode(), "bench.toml")

        on, off = config(True), config(False)
        assert on.admission.enabled is True
        assert off.admission.enabled is False
        assert msgspec.structs.replace(off.admission, enabled=True) == on.admission
        assert (off.schools, off.classes, off.server) == (on.schools, on.classes, on.server)

    def test_gateway_plain_load_runs_every_limit_without_refusing(self):
        cfg = parse_config(configs.gateway(
            port=8000, upstream_port=9000, workers=1, overload=None, keepalive_timeout=75,
        ).encode(), "bench.toml")
        school = cfg.schools[0]
        # Each limit is on (non-zero) yet far above anything wrk can send.
        assert school.max_inflight >= 1_000_000
        assert school.rate >= 1e7 and school.burst >= 1e7
        assert school.client_rate >= 1e7 and school.client_burst >= 1e7
        assert cfg.admission.enabled

    def test_nginx_overload_limits_key_on_a_named_server(self, tmp_path: Path):
        text = configs.nginx_proxy(port=1, upstream_port=2, workers=1, prefix=tmp_path,
                                   overload=self.POLICY, keepalive_timeout=75)
        assert "server_name bench;" in text
        assert "limit_req zone=school burst=400;" in text
        assert "rate=400r/s" in text
        assert "max_conns=20" in text

    def test_haproxy_overload_queue(self):
        text = configs.haproxy(port=1, upstream_port=2, threads=1, overload=self.POLICY,
                               keepalive_timeout=75)
        assert "maxconn 20 maxqueue 400" in text
        assert "timeout queue 1000ms" in text
        assert "strict-limits" not in text

    def test_haproxy_starts_below_its_wanted_fd_limit(self):
        text = configs.haproxy(port=1, upstream_port=2, threads=1, overload=None,
                               keepalive_timeout=600, max_clients=11024, fd_limit=20000)
        assert "no strict-limits" in text

    def test_nginx_fd_limit_capped(self, tmp_path: Path):
        text = configs.nginx_proxy(port=1, upstream_port=2, workers=1, prefix=tmp_path,
                                   overload=None, keepalive_timeout=75, max_clients=11024,
                                   fd_limit=20000)
        assert "worker_rlimit_nofile 20000;" in text
        assert "worker_connections 12048;" in text
