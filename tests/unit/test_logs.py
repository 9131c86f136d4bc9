"""The access-log buffer, its writer and the rate-limited warnings, without
sockets (gateway._native.accesslog, gateway.server.logs)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import pytest

from gateway._native import accesslog
from gateway.config import ConfigError, Log, parse_config
from gateway.server.logs import (
    PIPE_BUF,
    AccessLog,
    LimitFilter,
    RateLimitedLog,
    _Clock,
    text_line,
    to_line,
)

T0 = 1796025601.5  # 2026-11-30T08:00:01.500Z


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def recorder():
    logger = logging.getLogger("test.logs")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    rec = Recorder()
    logger.addHandler(rec)
    yield logger, rec
    logger.removeHandler(rec)


@pytest.fixture(autouse=True)
def fresh_buffer():
    accesslog.take()
    accesslog.configure(True, 1.0, 10000, False)
    yield
    accesslog.take()
    accesslog.configure(True, 1.0, 10000, False)


def add(status=200, decision=accesslog.ADMITTED, **kw):
    return accesslog.add(T0, kw.pop("school", "nord"), kw.pop("klass", "interactive"),
                         b"GET", kw.pop("path", b"/p"), status, decision, **kw)


# -------------------------------------------------------------- the limiter


def test_limiter_lets_burst_through_then_summarizes(recorder):
    logger, rec = recorder
    clock = Clock()
    limited = RateLimitedLog(logger, burst=3, interval=60.0, clock=clock)
    for i in range(100):
        limited.warning("k", "bad request %d", i)
    assert rec.lines == ["bad request 0", "bad request 1", "bad request 2"]
    clock.now = 59.0
    limited.tick()
    assert len(rec.lines) == 3  # the window is still open
    clock.now = 60.0
    limited.tick()
    assert rec.lines[3] == "suppressed 97 similar line(s) in 60s, the last: bad request 99"
    # A new window: the burst again.
    limited.warning("k", "again")
    assert rec.lines[4] == "again"


def test_limiter_keys_are_independent_and_bounded(recorder):
    logger, rec = recorder
    clock = Clock()
    limited = RateLimitedLog(logger, burst=1, interval=10.0, clock=clock, max_keys=4)
    for key in range(1000):  # a flood of distinct kinds
        limited.warning(key, "kind %d", key)
    # Four tracked kinds, then every other one shares a single key.
    assert len(rec.lines) == 5
    assert rec.lines[4] == "kind 4"
    clock.now = 10.0
    limited.tick()
    assert rec.lines[5] == ("suppressed 995 similar line(s) in 10s, the last: "
                            "(more kinds of warnings than tracked) kind 999")
    assert len(rec.lines) == 6


def test_limiter_summary_when_the_key_comes_back(recorder):
    logger, rec = recorder
    clock = Clock()
    limited = RateLimitedLog(logger, burst=1, interval=5.0, clock=clock)
    limited.warning("up", "down %s", "a")
    limited.warning("up", "down %s", "b")
    clock.now = 6.0
    assert limited.warning("up", "down %s", "c")
    assert rec.lines == ["down a", "suppressed 1 similar line(s) in 5s, the last: down b",
                         "down c"]


# -------------------------------------------------------------- the buffer


def test_buffer_is_bounded_and_counts_drops():
    accesslog.configure(True, 1.0, 5, False)
    kept = [add() for _ in range(12)]
    assert kept == [True] * 5 + [False] * 7
    lines, dropped = accesslog.take()
    assert (len(lines), dropped) == (5, 7)
    assert accesslog.take() == ([], 0)


def test_sampling_never_drops_errors_pages_or_refusals():
    accesslog.configure(True, 0.0, 100, False)
    assert not add(200)
    assert not add(304, accesslog.QUEUED)
    assert not add(200, accesslog.LOCAL)  # a status poll
    assert add(503, accesslog.WAITING)
    assert add(429, accesslog.TOO_MANY)
    assert add(400, accesslog.REFUSED, reason="bad")
    assert add(503, accesslog.LOCAL, reason="upstream not answering")
    assert add(404)
    assert add(499, accesslog.QUEUED)


def test_sampling_keeps_about_its_share():
    accesslog.configure(True, 0.25, 100000, False)
    kept = sum(add() for _ in range(20000))
    assert 4000 < kept < 6000


def test_off_keeps_only_what_warnings_need():
    accesslog.configure(False, 1.0, 100, False)
    assert not add(200)
    assert not add(503, accesslog.WAITING)
    assert add(400, accesslog.REFUSED, reason="bad")
    assert add(503, accesslog.LOCAL, reason="upstream not answering")


def test_configure_refuses_out_of_range():
    with pytest.raises(ValueError):
        accesslog.configure(True, 1.5, 10, False)
    with pytest.raises(ValueError):
        accesslog.configure(True, 1.0, 0, False)


# -------------------------------------------------------------- lines


def test_json_line_fields():
    add(200, accesslog.QUEUED, queue_ms=812.44, upstream="10.0.0.5:80", upstream_ms=35.06,
        bytes_in=412, bytes_out=18211, duration_ms=848.0, path=b"/caf\xc3\xa9")
    [entry], _ = accesslog.take()
    line = to_line(entry, lambda t: "T")
    assert (line.decision, line.queue_ms, line.upstream_ms, line.path) == (
        "queued", 812.4, 35.1, "/café")


def test_text_line():
    add(503, accesslog.WAITING, queue_ms=5002.0, reason=None)
    add(400, accesslog.REFUSED, reason="request header block too large", school=None,
        klass=None)
    entries, _ = accesslog.take()
    stamp = _Clock()
    texts = [text_line(to_line(e, stamp)) for e in entries]
    assert texts[0] == ("08:00:01.500 nord/interactive GET /p -> 503 waiting page "
                        "after 5002 ms in line\n")
    assert texts[1] == ("08:00:01.500 -/- GET /p -> 400 refused: "
                        "request header block too large\n")


def _writer(tmp_path: Path, logger, **cfg) -> tuple[AccessLog, Path]:
    path = tmp_path / "access.log"
    log = AccessLog(Log(access=str(path), **cfg), RateLimitedLog(logger))
    return log, path


def test_writer_encodes_json_lines_with_rfc3339_times(tmp_path, recorder):
    logger, rec = recorder
    log, path = _writer(tmp_path, logger)
    add(200, upstream="10.0.0.5:80", upstream_ms=3.0)
    add(400, accesslog.REFUSED, reason="bad header", school=None, klass=None)
    log.flush()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["time"] == "2026-11-30T08:00:01.500Z"
    assert lines[0]["upstream"] == "10.0.0.5:80"
    assert "reason" not in lines[0] and "school" not in lines[1]
    assert lines[1]["decision"] == "refused" and lines[1]["reason"] == "bad header"
    # The refusal is also a (rate-limited) warning.
    assert rec.lines == ["refused a request: 400 bad header (school -)"]
    log.close()


def test_writer_reopens_a_renamed_file(tmp_path, recorder):
    logger, _ = recorder
    log, path = _writer(tmp_path, logger)
    add(200, path=b"/one")
    log.flush()
    os.rename(path, tmp_path / "access.log.1")
    add(200, path=b"/two")
    log.reopen()  # what was buffered goes to the old file first
    add(200, path=b"/three")
    log.flush()
    old = [json.loads(x)["path"] for x in (tmp_path / "access.log.1").read_text().splitlines()]
    new = [json.loads(x)["path"] for x in path.read_text().splitlines()]
    assert (old, new) == (["/one", "/two"], ["/three"])
    log.close()


def test_writer_keeps_lines_whole_on_a_pipe(recorder, monkeypatch):
    """On a pipe (or journald's socket) each write is at most PIPE_BUF and
    ends at a line's end, so lines from several workers never interleave."""
    logger, _ = recorder
    log = AccessLog(Log(access="stdout"), RateLimitedLog(logger))
    r, w = os.pipe()
    try:
        log.fd = w
        log._atomic = False  # as fstat finds for a pipe
        n = 100  # well within the pipe's capacity
        for i in range(n):
            add(200, path=b"/%d" % i)
        chunks: list[bytes] = []
        real_write = os.write

        def spy(fd: int, data) -> int:
            chunks.append(bytes(data))
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", spy)
        log.flush()
        monkeypatch.undo()
        assert len(chunks) > 1
        assert all(len(c) <= PIPE_BUF and c.endswith(b"\n") for c in chunks)
        got = b""
        while len(got) < sum(map(len, chunks)):
            got += os.read(r, 65536)
        assert [json.loads(x)["path"] for x in got.splitlines()] == [f"/{i}" for i in range(n)]
    finally:
        log.fd = -1
        os.close(r)
        os.close(w)


def test_dropped_lines_are_warned_about(tmp_path, recorder):
    logger, rec = recorder
    log, _ = _writer(tmp_path, logger, buffer=2)
    for _ in range(5):
        add(200)
    log.flush()
    assert rec.lines == ["access log: 3 line(s) dropped: more than [log] buffer = 2 in 0.1s"]
    log.close()


# -------------------------------------------------------------- config

BASE = b'[server]\nlisten = "127.0.0.1:8080"\n[[schools]]\nname = "s"\nhosts = ["s"]\n' \
       b'upstreams = ["127.0.0.1:1"]\n'


def test_log_config_defaults_and_relative_file(tmp_path):
    cfg = parse_config(BASE, "t.toml", base_dir=str(tmp_path))
    assert (cfg.log.access, cfg.log.format, cfg.log.sample, cfg.log.query) == (
        "stdout", "json", 1.0, False)
    (tmp_path / "logs").mkdir()
    cfg = parse_config(BASE + b'[log]\naccess = "logs/a.log"\n', "t.toml",
                       base_dir=str(tmp_path))
    assert cfg.log.access == str(tmp_path / "logs" / "a.log")


@pytest.mark.parametrize("text, message", [
    (b'[log]\naccess = "nowhere/a.log"\n', "no such directory"),
    (b'[log]\naccess = "."\n', "is a directory"),
    (b'[log]\nsample = 1.5\n', "<= 1"),
    (b'[log]\nformat = "xml"\n', "xml"),
])
def test_log_config_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + text, "t.toml", base_dir=str(tmp_path))
    assert "log." in str(err.value) and message in str(err.value)


def test_limit_filter_puts_another_loggers_lines_behind_the_limiter(recorder):
    logger, rec = recorder
    clock = Clock()
    limited = RateLimitedLog(logger, burst=2, interval=60.0, clock=clock)
    other = logging.getLogger("test.logs.asyncio")
    other.propagate = False
    seen = Recorder()
    other.addHandler(seen)
    other.addFilter(LimitFilter(limited))
    try:
        for i in range(50):
            other.warning("socket.send() raised exception %d.", i)
        other.info("not limited")
        assert seen.lines == ["socket.send() raised exception 0.",
                              "socket.send() raised exception 1.", "not limited"]
        clock.now = 60.0
        limited.tick()
        assert rec.lines == ["suppressed 48 similar line(s) in 60s, the last: "
                             "socket.send() raised exception 49."]
    finally:
        other.removeHandler(seen)


class _Hung(BaseException):
    """Raised by the alarm if a write blocks (not an OSError: the writer
    must not mistake it for a failed write)."""


@contextlib.contextmanager
def unread_stdout():
    """Standard output (fd 1) replaced by a pipe nobody reads (within the
    test's body: pytest's capture puts its own fd 1 back between phases);
    yields the pipe's read end. An alarm turns a blocked write into _Hung."""
    import signal

    r, w = os.pipe()
    saved = os.dup(1)
    os.dup2(w, 1)
    os.close(w)

    def hung(signum, frame):
        raise _Hung

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        yield r
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        os.dup2(saved, 1)
        os.close(saved)
        os.close(r)


def _drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    got = b""
    while True:
        try:
            piece = os.read(fd, 1 << 16)
        except BlockingIOError:
            return got
        if not piece:
            return got
        got += piece


def test_a_stdout_pipe_nobody_reads_never_blocks_the_worker(recorder, monkeypatch):
    """A full pipe on standard output (a reader that stopped, journald
    behind) is not waited for: the lines it does not take wait for the next
    flush, up to MAX_PENDING bytes; beyond that they are dropped and warned
    about. Nothing is lost or cut while it is within that bound."""
    from gateway.server import logs

    logger, rec = recorder
    monkeypatch.setattr(logs, "MAX_PENDING", 256 << 10)
    with unread_stdout() as reader:
        _unread_stdout_case(logger, rec, reader)


def _unread_stdout_case(logger, rec, unread_stdout: int) -> None:
    log = AccessLog(Log(access="stdout"), RateLimitedLog(logger))
    n = 0
    # Well beyond what a pipe holds (64 KiB) plus MAX_PENDING.
    for _ in range(40):
        for _ in range(100):
            add(200, path=b"/%d" % n + b"x" * 100)
            n += 1
        log.flush()  # returns: _Hung here is the fault
    assert log.dropped > 0
    assert any("is not taking them" in line for line in rec.lines)
    got = _drain(unread_stdout)
    # The reader is back: what waited is written at the next flush.
    for _ in range(100):
        log.flush()
        more = _drain(unread_stdout)
        got += more
        if not log._pending and not more:
            break
    paths = [json.loads(x)["path"] for x in got.splitlines()]
    # Whole lines, in order, from the first; the dropped ones are the last.
    assert paths == [f"/{i}" + "x" * 100 for i in range(len(paths))]
    assert len(paths) + log.dropped == n
    log.close()
    # fd 1 itself was never made non-blocking (other processes share it).
    assert os.get_blocking(1)


def test_a_fifo_without_a_reader_is_refused_not_waited_for(tmp_path, recorder):
    """A FIFO as [log] access with nobody reading it: the open is refused
    (warned about) instead of hanging the worker."""
    import signal

    logger, rec = recorder
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)

    def hung(signum, frame):
        raise _Hung

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        log = AccessLog(Log(access=str(fifo)), RateLimitedLog(logger))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert log.fd < 0
    assert rec.lines and rec.lines[0].startswith(f"access log: cannot open {fifo}")
    add(200)
    log.flush()  # nowhere to write: nothing happens
    log.close()


def test_a_reopen_that_fails_keeps_the_file_open_before(tmp_path, recorder):
    """logrotate gone wrong: the log's directory is gone at SIGUSR1. The
    worker warns and keeps writing to the file it had (it wrote nothing
    until the next SIGUSR1); once the directory is back, a reopen moves on."""
    logger, rec = recorder
    logs_dir = tmp_path / "logs"
    logs_dir.mkdir()
    log = AccessLog(Log(access=str(logs_dir / "access.log")), RateLimitedLog(logger))
    add(200, path=b"/one")
    log.flush()
    moved = tmp_path / "logs.old"
    os.rename(logs_dir, moved)
    log.reopen()
    assert rec.lines == [f"access log: cannot open {logs_dir / 'access.log'}: No such file or "
                         "directory; still writing where it went before"]
    add(200, path=b"/two")
    log.flush()
    logs_dir.mkdir()
    log.reopen()
    add(200, path=b"/three")
    log.flush()
    log.close()
    old = [json.loads(x)["path"] for x in (moved / "access.log").read_text().splitlines()]
    new = [json.loads(x)["path"] for x in (logs_dir / "access.log").read_text().splitlines()]
    assert (old, new) == (["/one", "/two"], ["/three"])


# -------------------------------------------------------------- native lines
# The writer builds its lines with accesslog.to_lines and stamps them with
# accesslog.Clock; each must give exactly what to_line and _Clock give.

NATIVE_ENTRIES = [
    (T0, "nord", "interactive", b"GET", b"/p", 200, accesslog.ADMITTED, 0.0, None,
     "10.0.0.5:80", 0.4123, 40, 180, 0.812),
    (T0 + 0.0004, None, None, None, None, 499, accesslog.QUEUED, 812.45, "gone", None,
     -1.0, 0, 0, 1e6 + 0.05),
    (T0 + 0.9999, "süd", "bulk", b"POST", b"/caf\xc3\xa9\xff", 503, accesslog.WAITING,
     0.25, None, None, -1.0, 1 << 40, 7, 0.35),
    (T0 + 1.0, "x", None, b"PATCH", b"/", 429, accesslog.TOO_MANY, 2.5, "over", "h:1",
     0.0, 1, 2, 0.15),
    (0.0, None, None, b"\x80", b"", 400, accesslog.REFUSED, -0.05, "bad", None, -0.5, 3, 4,
     0.0),
    (T0 + 3600.25, "y", "c", b"GET", None, 502, 99, 1e-7, None, "u:2", 123456.789, 5, 6,
     7.05),
]


def test_native_lines_equal_to_line():
    from gateway.server.logs import DECISIONS, Line
    for stamp_type in (_Clock, accesslog.Clock):
        native = accesslog.to_lines(list(NATIVE_ENTRIES), Line, DECISIONS, stamp_type())
        reference = [to_line(e, _Clock()) for e in NATIVE_ENTRIES]
        assert native == reference
    # any callable stamp
    native = accesslog.to_lines(list(NATIVE_ENTRIES), Line, DECISIONS, lambda t: "T")
    assert [line.time for line in native] == ["T"] * len(NATIVE_ENTRIES)


def test_native_clock_equals_python_clock():
    native, python = accesslog.Clock(), _Clock()
    for when in (T0, T0 + 0.0004, T0 + 0.9999, T0 + 1.0, T0 + 59.001, 0.0, 0.5, 1.999,
                 T0 + 86400 * 400 + 0.123, T0 - 1.5):
        assert native(when) == python(when), when
    assert accesslog.Clock()(T0) == "2026-11-30T08:00:01.500Z"
