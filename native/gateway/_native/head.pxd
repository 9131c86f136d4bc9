# Declarations for native/head.pyx, built as gateway._native.head (attributes
# documented in gateway/_native/head.pyi).
#
# Cython looks a module's .pxd up by its qualified name, so the file sits in a
# package-shaped tree under the include path (native/) rather than next to the
# .pyx; router.pyx cimports RequestHead through the same name.

cdef class _Head:
    cdef readonly int version
    cdef readonly long long content_length
    cdef readonly bint chunked
    cdef readonly bint keep_alive
    cdef readonly bytes upgrade
    cdef readonly list headers
    cdef readonly bytes via
    # Every received (name, value) pair, hop-by-hop ones included, for header().
    cdef tuple _raw

    cpdef object header(self, bytes name)


cdef class RequestHead(_Head):
    cdef readonly bytes method
    cdef readonly bytes target
    cdef readonly bytes path
    cdef readonly bytes host
    cdef readonly bytes host_header
    cdef readonly bint expect_continue
    cdef readonly bint idempotent
    cdef readonly bytes xff


cdef class ResponseHead(_Head):
    cdef readonly int status
    cdef readonly bytes reason
