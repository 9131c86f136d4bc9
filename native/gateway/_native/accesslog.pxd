# Declarations for native/accesslog.pyx, built as gateway._native.accesslog
# (documented in gateway/_native/accesslog.pyi): the worker's access-log
# buffer, filled by exchange.pyx at each exchange's end.

# The admission decision of a logged exchange (the log's "decision" field;
# gateway.server.logs names them).
cdef enum:
    D_ADMITTED = 0    # forwarded, admitted at once
    D_QUEUED = 1      # forwarded after waiting in line (queue_ms)
    D_WAITING = 2     # answered with the waiting page (503)
    D_429 = 3         # answered 429 (a bulk class, or a client over its rate)
    D_REFUSED = 4     # hostile or malformed input, refused with `reason`
    D_LOCAL = 5       # another answer the gateway made itself (`reason`)

cdef bint keep_query() noexcept
cdef bint wanted(int status, int decision) noexcept


cdef bint record(double when, object school, object klass, bytes method, bytes path,
                 int status, int decision, double queue_ms, object reason,
                 object upstream, double upstream_ms, long long bytes_in,
                 long long bytes_out, double duration_ms) except -1
