"""CPU per request from /proc/<pid>/stat snapshots (bench.cpu).

Synthetic stat lines and a fake /proc tree; one test reads this process's
own line to check the field positions against os.times(). Nothing is timed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import cpu


def stat_line(pid: int, comm: str = "nginx", utime: int = 0, stime: int = 0,
              start: int = 1000) -> str:
    # proc(5) fields 1..52; 14 utime, 15 stime, 22 starttime, the rest filler.
    fields = [str(pid), f"({comm})", "S"] + ["7"] * 49
    fields[13], fields[14], fields[21] = str(utime), str(stime), str(start)
    return " ".join(fields) + "\n"


def fake_proc(root: Path, lines: dict[int, str]) -> Path:
    for pid, line in lines.items():
        (root / str(pid)).mkdir()
        (root / str(pid) / "stat").write_text(line)
    return root


class TestParseStat:
    def test_user_plus_system_ticks_and_start_time(self):
        stat = cpu.parse_stat(stat_line(4242, utime=150, stime=25, start=98765))
        assert stat == cpu.ProcCpu(pid=4242, start_ticks=98765, cpu_ticks=175)

    def test_command_name_with_spaces_and_parentheses(self):
        stat = cpu.parse_stat(stat_line(77, comm="we) ird (x) S 1 2", utime=3, stime=4))
        assert (stat.pid, stat.cpu_ticks, stat.start_ticks) == (77, 7, 1000)

    @pytest.mark.parametrize("text", ["", "12 nginx S 1 2 3", "12 (nginx) S 1 2 3\n"])
    def test_other_text_is_refused(self, text):
        with pytest.raises(ValueError, match="stat line"):
            cpu.parse_stat(text)

    def test_fields_match_this_process_times(self):
        before = cpu.snapshot([os.getpid()])
        times = os.times()
        after = cpu.snapshot([os.getpid()])
        ((key, ticks_before),) = before.items()
        assert key[0] == os.getpid()
        # os.times() reports the same utime + stime (times(2)), as seconds.
        own = round((times.user + times.system) * cpu.TICKS_PER_SECOND)
        assert ticks_before - 1 <= own <= after[key] + 1


class TestSnapshot:
    def test_reads_each_listed_process_and_skips_a_gone_one(self, tmp_path: Path):
        proc = fake_proc(tmp_path, {
            10: stat_line(10, utime=5, stime=1, start=100),
            11: stat_line(11, utime=40, stime=2, start=200),
        })
        assert cpu.snapshot([10, 11, 12], proc) == {(10, 100): 6, (11, 200): 42}


class TestTicksBetween:
    def test_growth_of_each_process_summed(self):
        before = {(10, 100): 6, (11, 200): 42}
        after = {(10, 100): 16, (11, 200): 142}
        assert cpu.ticks_between(before, after) == 110

    def test_process_started_meanwhile_counts_whole(self):
        assert cpu.ticks_between({(10, 100): 6}, {(10, 100): 8, (12, 300): 5}) == 7

    def test_reused_pid_is_a_new_process(self):
        # pid 11 exited and its number went to a process started later.
        assert cpu.ticks_between({(11, 200): 500}, {(11, 900): 3}) == 3


class TestPerRequest:
    def test_microseconds_per_request(self):
        # 250 ticks at 100/s = 2.5 s over 100,000 requests = 25 us each.
        assert cpu.us_per_request(250, 100_000, 100) == pytest.approx(25.0)

    def test_no_request_gives_no_figure(self):
        assert cpu.us_per_request(250, 0, 100) is None

    def test_from_proxy_and_origin_snapshots(self):
        before = ({(1, 5): 100, (2, 6): 10}, {(3, 7): 50})
        after = ({(1, 5): 101, (2, 6): 310}, {(3, 7): 150})
        use = cpu.CpuUse.between(before, after, 150_000)
        assert (use.ticks, use.origin_ticks) == (301, 100)
        assert use.us_per_request == pytest.approx(301 / cpu.TICKS_PER_SECOND * 1e6 / 150_000)
        data = use.to_json()
        assert data["cpu_us_per_request"] == use.us_per_request
        assert data["origin_cpu_us_per_request"] == use.origin_us_per_request
