"""The access log's writer and the rate-limited warnings of a worker.

Access log: exchanges record their line into the native buffer as they end
(gateway._native.accesslog, no Python frame per request); a worker calls
AccessLog.flush() every FLUSH_INTERVAL seconds and when it stops, which
takes the buffer, encodes it (msgspec JSON lines, or one readable line per
request for a console) and writes it in one go to standard output or a
file, in writes of at most PIPE_BUF bytes that end at a line's end, so the
lines of several workers sharing one pipe or socket (journald's) never
interleave. A file is opened for appending and reopened by reopen()
(SIGUSR1, for logrotate: rename, signal, the next lines go to a new file).

A destination that stops taking lines (a pipe nobody reads, journald
stalled, a FIFO) never stalls the worker: every write is non-blocking (a
pipe, FIFO or terminal is opened again through /proc/self/fd with
O_NONBLOCK, so the flag is this worker's own and not set on a descriptor
shared with other processes; a socket is written with MSG_DONTWAIT). What
it does not take waits, up to MAX_PENDING bytes, for the next flush; lines
beyond that are dropped and counted in a rate-limited warning.

One JSON line, e.g.::

    {"time":"2026-11-30T08:00:01.234Z","status":200,"decision":"queued",
     "queue_ms":812.4,"bytes_in":412,"bytes_out":18211,"duration_ms":848.0,
     "school":"nord","class":"interactive","method":"GET","path":"/lesson",
     "upstream":"10.0.0.5:80","upstream_ms":35.1}

decision: "admitted" (at once; queue_ms 0), "queued" (queue_ms in line first),
"waiting_page", "429", "refused" (hostile or malformed input; reason says
why), "local" (another answer the gateway made: reason). status 499: the
client closed the connection before an answer. Keys whose value is unknown
(no school, no upstream, no reason) are left out.

Warnings: RateLimitedLog lets at most `burst` lines per kind (key) through
per `interval` seconds and then writes one "suppressed N similar" line, so a
flood of bad requests or an upstream that stays down cannot fill the disk.
The warnings about requests (hostile input refused, upstream not answering,
other 5xx the gateway made) are derived from the buffered lines at each
flush, so they cost the request path nothing either.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import stat
import time
from collections.abc import Callable, Hashable
from typing import Any

import msgspec

from gateway._native import accesslog as _native
from gateway.config import Log

FLUSH_INTERVAL = 0.1  # seconds between two writes of the access log
# Writes to a pipe or socket of at most this size are not interleaved with
# other writers' (pipe(7)); journald's stdout socket is read line by line.
PIPE_BUF = select.PIPE_BUF
MAX_KEYS = 256  # distinct warning kinds tracked; more share one key
# Bytes a worker holds for a destination that is not taking them (a full
# pipe, a stalled journald) until its next flush; lines beyond are dropped.
MAX_PENDING = 1 << 20

DECISIONS = {
    _native.ADMITTED: "admitted",
    _native.QUEUED: "queued",
    _native.WAITING: "waiting_page",
    _native.TOO_MANY: "429",
    _native.REFUSED: "refused",
    _native.LOCAL: "local",
}
UPSTREAM_DOWN = "upstream not answering"  # the reason Exchange._unavailable gives


class RateLimitedLog:
    """A logger front that lets at most `burst` lines per key through per
    `interval` seconds (a fixed window starting at the key's first line),
    then, once the window has passed, one line saying how many similar
    lines it suppressed. At most `max_keys` keys are tracked at once;
    beyond that new keys share one. `clock`: monotonic seconds."""

    def __init__(self, logger: logging.Logger, burst: int = 5, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS) -> None:
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self.clock = clock
        self.max_keys = max_keys
        # key -> [window start, lines let through, suppressed, level, last msg, args]
        self._keys: dict[Hashable, list[Any]] = {}

    def configure(self, burst: int, interval: float) -> None:
        self.burst = burst
        self.interval = interval

    def warning(self, key: Hashable, msg: str, *args: Any) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key: Hashable, msg: str, *args: Any, exc_info: Any = None) -> bool:
        return self.log(logging.ERROR, key, msg, *args, exc_info=exc_info)

    def log(self, level: int, key: Hashable, msg: str, *args: Any,
            exc_info: Any = None) -> bool:
        """Log `msg % args` unless `key` is over its burst; True if logged."""
        if not self.allow(level, key, msg, args):
            return False
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def allow(self, level: int, key: Hashable, msg: str, args: Any) -> bool:
        """Whether a line of `key` may be written now (counted as written if
        so, as suppressed if not); `msg % args` is remembered for the
        summary."""
        now = self.clock()
        keys = self._keys
        state = keys.get(key)
        if state is not None and now - state[0] >= self.interval:
            self._summarize(keys.pop(key))
            state = None
        if state is None:
            if len(keys) >= self.max_keys:
                self.tick()
                if len(keys) >= self.max_keys:
                    key = "other"
                    msg, args = "(more kinds of warnings than tracked) " + msg, args
            state = keys.get(key)
            if state is None:
                state = keys[key] = [now, 0, 0, level, msg, args]
        state[3], state[4], state[5] = level, msg, args
        if state[1] < self.burst:
            state[1] += 1
            return True
        state[2] += 1
        return False

    def tick(self) -> None:
        """Close the windows that have passed: their suppressed counts are
        written now (not only when the key comes back), and they are
        forgotten, so the table holds only keys seen within `interval`."""
        now = self.clock()
        keys = self._keys
        for key in [k for k, s in keys.items() if now - s[0] >= self.interval]:
            self._summarize(keys.pop(key))

    def _summarize(self, state: list[Any]) -> None:
        _, _, suppressed, level, msg, args = state
        if suppressed:
            self.logger.log(level, "suppressed %d similar line(s) in %gs, the last: " + msg,
                            suppressed, self.interval, *args)


class LimitFilter(logging.Filter):
    """Puts another logger's lines behind a RateLimitedLog, keyed by the
    logger and the message's format: asyncio and uvloop log some troubles
    per connection themselves (a write to a connection already lost, say)."""

    def __init__(self, limited: RateLimitedLog) -> None:
        super().__init__()
        self.limited = limited

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        return self.limited.allow(record.levelno, (record.name, str(record.msg)), "%s",
                                  (record.getMessage(),))


class Line(msgspec.Struct, omit_defaults=True):
    """One access-log line (see the module docstring)."""

    time: str
    status: int
    decision: str
    queue_ms: float
    bytes_in: int
    bytes_out: int
    duration_ms: float
    school: str | None = None
    # "class" is a Python keyword: the field is named klass, encoded "class".
    klass: str | None = msgspec.field(default=None, name="class")
    method: str | None = None
    path: str | None = None
    reason: str | None = None
    upstream: str | None = None
    upstream_ms: float | None = None


class _Clock:
    """RFC 3339 UTC times with milliseconds; the part up to the second is
    formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((when - second) * 1000):03d}Z"


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "backslashreplace")


def to_line(entry: tuple, stamp: Callable[[float], str]) -> Line:
    """The Line for one buffered entry (gateway/_native/accesslog.pyi's order)."""
    (when, school, klass, method, path, status, decision, queue_ms, reason, upstream,
     upstream_ms, bytes_in, bytes_out, duration_ms) = entry
    return Line(
        time=stamp(when), status=status, decision=DECISIONS.get(decision, "local"),
        school=school, klass=klass, method=_text(method), path=_text(path),
        queue_ms=round(queue_ms, 1), reason=reason, upstream=upstream,
        upstream_ms=round(upstream_ms, 1) if upstream_ms >= 0 else None,
        bytes_in=bytes_in, bytes_out=bytes_out, duration_ms=round(duration_ms, 1))


def text_line(line: Line) -> str:
    """One readable line for a console, e.g. ``08:00:01.234 nord/interactive
    GET /lesson -> 200 queued 812 ms, upstream 10.0.0.5:80 35 ms``."""
    what = {
        "admitted": "admitted",
        "queued": f"queued {line.queue_ms:.0f} ms",
        "waiting_page": "waiting page",
        "429": "429 (too many requests)",
        "refused": "refused",
        "local": "answered by the gateway",
    }.get(line.decision, line.decision)
    if line.decision in ("waiting_page", "429", "local") and line.queue_ms >= 1:
        what += f" after {line.queue_ms:.0f} ms in line"
    parts = [line.time[11:23], f"{line.school or '-'}/{line.klass or '-'}",
             line.method or "-", line.path or "-", "->", str(line.status), what]
    text = " ".join(parts)
    if line.reason:
        text += f": {line.reason}"
    if line.upstream and line.upstream_ms is not None:
        text += f", upstream {line.upstream} {line.upstream_ms:.0f} ms"
    return text + "\n"


class AccessLog:
    """One worker's access log: where the lines go, their format, and the
    warnings about the requests they describe (see the module docstring)."""

    def __init__(self, cfg: Log, warnings: RateLimitedLog) -> None:
        self.warnings = warnings
        self.cfg = cfg
        self.fd = -1
        self._own_fd = False
        self._sock: socket.socket | None = None  # the destination, when it is a socket
        self._atomic = True  # one write per flush keeps lines whole (a regular file)
        self._pending = b""  # encoded lines the destination has not taken yet
        self._encoder = msgspec.json.Encoder()
        self._stamp = _native.Clock()
        self.written = 0  # lines written so far (tests, metrics)
        self.dropped = 0  # lines dropped because the destination did not take them
        self.configure(cfg)

    def configure(self, cfg: Log) -> None:
        """Apply [log] (at start and on reload); a changed destination is
        opened now."""
        changed = cfg.access != self.cfg.access or self.fd < 0
        self.cfg = cfg
        _native.configure(cfg.access != "off", cfg.sample, cfg.buffer, cfg.query)
        self.warnings.configure(cfg.warn_burst, cfg.warn_interval)
        if changed:
            self.reopen()

    def reopen(self) -> None:
        """Open the destination again (SIGUSR1): a file renamed by logrotate
        is closed and a new one created at the configured path. A file that
        cannot be opened (its directory gone, no permission) is warned
        about and the one open before stays in use, as nginx does, so a
        rotation gone wrong does not silence the log."""
        self.flush()
        access = self.cfg.access
        if access == "off":
            self._close()
            self._pending = b""
            return
        if access == "stdout":
            self._close()
            self._open_stdout()
        else:
            try:
                # O_NONBLOCK: a FIFO without a reader is refused (ENXIO)
                # instead of blocking the open, and a full one refuses
                # writes (EAGAIN) instead of stalling the worker; a regular
                # file ignores it.
                fd = os.open(access, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                             | os.O_NONBLOCK, 0o640)
            except OSError as err:
                self.warnings.error(("open", access), "access log: cannot open %s: %s%s",
                                    access, err.strerror or err,
                                    "; still writing where it went before" if self.fd >= 0
                                    else "")
                return
            self._close()
            self.fd, self._own_fd = fd, True
        try:
            self._atomic = stat.S_ISREG(os.fstat(self.fd).st_mode)
        except OSError:
            self._atomic = False

    def _open_stdout(self) -> None:
        """Standard output, written without ever blocking (see the module
        docstring): a regular file as is, a socket through MSG_DONTWAIT, a
        pipe, FIFO or terminal opened again with O_NONBLOCK of its own."""
        self.fd, self._own_fd = 1, False
        try:
            mode = os.fstat(1).st_mode
        except OSError:
            return  # closed: the first write says so (rate-limited)
        if stat.S_ISREG(mode):
            return
        if stat.S_ISSOCK(mode):
            try:
                self._sock = socket.socket(fileno=os.dup(1))
            except OSError:
                self._sock = None
            return
        try:
            self.fd = os.open("/proc/self/fd/1", os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
                              | os.O_NONBLOCK)
            self._own_fd = True
        except OSError:
            # No /proc, or a pipe whose reader is gone: the plain descriptor
            # (a write then fails with EPIPE, which is warned about).
            self.fd, self._own_fd = 1, False

    def _close(self) -> None:
        if self._own_fd and self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
        if self._sock is not None:
            self._sock.close()  # a dup of standard output: fd 1 stays open
            self._sock = None
        self.fd, self._own_fd = -1, False

    def close(self) -> None:
        self.flush()
        self._close()

    def flush(self) -> None:
        """Take the buffered lines, warn about the ones that call for it,
        and write them."""
        entries, dropped = _native.take()
        warnings = self.warnings
        if dropped:
            warnings.warning(("dropped",), "access log: %d line(s) dropped: more than "
                             "[log] buffer = %d in %gs", dropped, self.cfg.buffer, FLUSH_INTERVAL)
        if not entries:
            if self._pending and self.fd >= 0:
                pending, self._pending = self._pending, b""
                self._write(pending)
            return
        # (to_line for each, natively: the Python loop cost more per line
        # than proxying a small request.)
        lines = _native.to_lines(entries, Line, DECISIONS, self._stamp)
        for line in lines:
            if line.decision == "refused":
                warnings.warning(("refused", line.status, line.reason),
                                 "refused a request: %d %s (school %s)", line.status,
                                 line.reason, line.school or "-")
            elif line.decision == "local" and line.status >= 500:
                if line.reason == UPSTREAM_DOWN:
                    warnings.warning(("upstream", line.upstream),
                                     "school %s: upstream %s is not answering; visitors get "
                                     "the 503 page", line.school, line.upstream)
                else:
                    warnings.warning(("local", line.status, line.reason),
                                     "answered %d: %s (school %s)", line.status, line.reason,
                                     line.school or "-")
        if self.cfg.access == "off" or self.fd < 0:
            return
        if self.cfg.format == "text":
            data = "".join(text_line(line) for line in lines).encode()
        else:
            data = self._encoder.encode_lines(lines)
        pending = self._pending
        if len(pending) + len(data) > MAX_PENDING:
            # The destination has not taken the lines held for it: these
            # are dropped (whole lines), counted and warned about.
            room = max(0, MAX_PENDING - len(pending))
            cut = data.rfind(b"\n", 0, room) + 1
            lost = data.count(b"\n", cut)
            data = data[:cut]
            self.dropped += lost
            self.warnings.warning(("stalled", self.cfg.access),
                                  "access log: %d line(s) dropped: %s is not taking them "
                                  "(%d bytes waiting)", lost, self.cfg.access, len(pending))
        self.written += data.count(b"\n")
        self._pending = b""
        self._write(pending + data if pending else data)

    def _write(self, data: bytes) -> None:
        """Write `data` (whole lines) without blocking; what the destination
        does not take now is kept in self._pending for the next flush."""
        view = memoryview(data)
        while view:
            if self._atomic or len(view) <= PIPE_BUF:
                n = len(view)
            else:
                # Up to PIPE_BUF, ending at a line's end (a longer line goes
                # on its own).
                cut = data.rfind(b"\n", len(data) - len(view), len(data) - len(view) + PIPE_BUF)
                n = (cut + 1 - (len(data) - len(view))) if cut >= 0 else \
                    data.index(b"\n", len(data) - len(view)) + 1 - (len(data) - len(view))
            try:
                if self._sock is not None:
                    written = self._sock.send(view[:n], socket.MSG_DONTWAIT)
                else:
                    written = os.write(self.fd, view[:n])
            except InterruptedError:
                continue
            except BlockingIOError:
                # The destination is full (nobody reads the pipe, journald
                # is behind): the rest waits for the next flush.
                self._pending = bytes(view)
                return
            except OSError as err:
                # A full disk, a reader gone (EPIPE): these lines are lost,
                # the worker goes on.
                name = errno.errorcode.get(err.errno or 0, str(err.errno))
                self.warnings.error(("write", name), "access log: cannot write to %s: %s",
                                    self.cfg.access, err.strerror or err)
                return
            view = view[written:]
