"""The worker's access-log buffer (the fields of one line per exchange).

exchange.pyx calls record() as an exchange ends: a tuple appended to a
list, with no Python frame and no formatting, so the per-request cost stays
a few allocations. gateway.server.logs takes the buffer every ~100 ms
(take()), encodes it with msgspec and writes it in one go. The buffer is
bounded (configure's `capacity`): under a flood the lines beyond it are
dropped and counted (take() reports how many) rather than growing memory.

Sampling (`sample` < 1) keeps that share of the lines of requests answered
below 400 that were forwarded or answered locally (a status poll); waiting
pages, 429s, refusals and every error are always kept.

Stub and field order: gateway/_native/accesslog.pyi.
"""

from libc.stdint cimport uint64_t

cdef list _entries = []
cdef Py_ssize_t _capacity = 10000
cdef long long _dropped = 0
cdef bint _enabled = True
cdef double _sample = 1.0
cdef bint _keep_query = False
# xorshift64* state for sampling: a good enough spread, no Python call.
cdef uint64_t _rng = 0x9E3779B97F4A7C15

ADMITTED, QUEUED, WAITING, TOO_MANY, REFUSED, LOCAL = (
    D_ADMITTED, D_QUEUED, D_WAITING, D_429, D_REFUSED, D_LOCAL)


cdef bint keep_query() noexcept:
    """Whether lines carry the target with its query string."""
    return _keep_query


cdef inline double _random() noexcept:
    global _rng
    _rng ^= _rng >> 12
    _rng ^= _rng << 25
    _rng ^= _rng >> 27
    return <double>((_rng * <uint64_t>0x2545F4914F6CDD1D) >> 11) / 9007199254740992.0


cdef bint wanted(int status, int decision) noexcept:
    """Whether record() could keep a line of this status and decision: False
    only when the access log is off and the line is not one the warnings
    need. exchange.pyx asks first, so that with the log off (the common
    production setting for a busy site) an ordinary exchange builds none
    of the line's fields: no clock read, no strings, no tuple."""
    if _enabled:
        return True
    return decision == D_REFUSED or (decision == D_LOCAL and status >= 500)


cdef bint record(double when, object school, object klass, bytes method, bytes path,
                 int status, int decision, double queue_ms, object reason,
                 object upstream, double upstream_ms, long long bytes_in,
                 long long bytes_out, double duration_ms) except -1:
    """Buffer one line; False if it was sampled away, dropped (buffer full)
    or not wanted (access log off: only refusals and the gateway's own
    5xx answers are kept, for the warnings)."""
    global _dropped
    cdef bint plain = status < 400 and (decision == D_ADMITTED or decision == D_QUEUED
                                        or decision == D_LOCAL)
    if not wanted(status, decision):
        return False
    elif _enabled and plain and _sample < 1.0 and _random() >= _sample:
        return False
    if len(_entries) >= _capacity:
        _dropped += 1
        return False
    _entries.append((when, school, klass, method, path, status, decision, queue_ms, reason,
                     upstream, upstream_ms, bytes_in, bytes_out, duration_ms))
    return True


def configure(bint enabled, double sample, Py_ssize_t capacity, bint query):
    """enabled: write lines (False: keep only what warnings need); sample:
    share of plain lines kept (0..1); capacity: lines held between two
    take() calls; query: log the target with its query string."""
    global _enabled, _sample, _capacity, _keep_query
    if capacity < 1 or not 0.0 <= sample <= 1.0:
        raise ValueError("capacity must be >= 1 and sample within 0..1")
    _enabled = enabled
    _sample = sample
    _capacity = capacity
    _keep_query = query


def take():
    """(lines, dropped): the buffered lines (tuples in the field order
    gateway/_native/accesslog.pyi gives) and how many were dropped since the
    last call; the buffer is empty afterwards."""
    global _entries, _dropped
    entries = _entries
    dropped = _dropped
    _entries = []
    _dropped = 0
    return entries, dropped


def pending():
    """Lines buffered now."""
    return len(_entries)


def add(double when, object school, object klass, bytes method, bytes path, int status,
        int decision, double queue_ms=0.0, object reason=None, object upstream=None,
        double upstream_ms=-1.0, long long bytes_in=0, long long bytes_out=0,
        double duration_ms=0.0):
    """record() for Python callers and tests; True if the line was kept."""
    return record(when, school, klass, method, path, status, decision, queue_ms, reason,
                  upstream, upstream_ms, bytes_in, bytes_out, duration_ms)


# -- turning entries into lines (gateway.server.logs) ---------------------------
# The writer's per-line work, done here rather than in a Python loop: with
# the log on, building each line in Python (keyword construction of the
# msgspec Line, the time stamp, three roundings) cost more than the whole
# proxying of a small request in user space.

import time as _time

cdef object _round = round
cdef object _gmtime = _time.gmtime
cdef object _strftime = _time.strftime


cdef class Clock:
    """RFC 3339 UTC times with milliseconds ("2026-11-30T08:00:01.500Z"),
    from Unix seconds; the part up to the second is formatted once per
    second. Same text as gateway.server.logs._Clock."""

    cdef long long _second
    cdef str _prefix
    cdef bint _set

    def __init__(self):
        self._set = False
        self._prefix = ""

    cdef str stamp(self, double when):
        cdef long long second = <long long>when  # int(): towards zero
        if not self._set or second != self._second:
            self._set = True
            self._second = second
            self._prefix = _strftime("%Y-%m-%dT%H:%M:%S", _gmtime(second))
        return f"{self._prefix}.{<long long>((when - second) * 1000):03d}Z"

    def __call__(self, double when):
        return self.stamp(when)


cdef inline object _text(object raw):
    return None if raw is None else (<bytes>raw).decode("utf-8", "backslashreplace")


def to_lines(list entries, object line_type, dict decisions, object stamp):
    """[line_type(...) for each entry]: gateway.server.logs.to_line for a
    whole take() at once (same fields, same rounding: Python's round). The
    stamp is called per line, or run natively when it is a Clock."""
    cdef list out = []
    cdef tuple e
    cdef Clock clock = stamp if type(stamp) is Clock else None
    cdef double upstream_ms
    for e in entries:
        when = e[0]
        upstream_ms = e[10]
        out.append(line_type(
            clock.stamp(when) if clock is not None else stamp(when),
            e[5],
            decisions.get(e[6], "local"),
            _round(e[7], 1),
            e[11],
            e[12],
            _round(e[13], 1),
            e[1],
            e[2],
            _text(e[3]),
            _text(e[4]),
            e[8],
            e[9],
            _round(upstream_ms, 1) if upstream_ms >= 0 else None,
        ))
    return out
