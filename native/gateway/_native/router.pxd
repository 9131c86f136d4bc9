# Declarations for native/router.pyx, built as gateway._native.router.
#
# Cython looks a module's .pxd up by its qualified name, so the file sits in a
# package-shaped tree under the include path (native/) rather than next to the
# .pyx.

cdef class Router:
    # Normalised exact host -> school index.
    cdef dict _exact
    # ".suffix" (with its leading dot) of each "*.suffix" entry -> school index.
    cdef dict _wildcard
    # School of the lone "*" entry, or -1.
    cdef int _default
    # _suffix_len[n] is set when some wildcard key is n bytes long (index 256:
    # any longer), so route() only slices the host where a lookup can hit.
    cdef unsigned char _suffix_len[257]

    cpdef int route(self, bytes host) except -2


cdef class _Rule:
    cdef int index
    # Upper-case methods; None when the match names none.
    cdef frozenset methods
    cdef tuple paths
    # Lower-case header names and the trimmed value each must have (None: any).
    cdef tuple names
    cdef tuple values

    cdef bint fits(self, bytes method, bytes path, object head) except -1


cdef class Classifier:
    cdef list _rules
    # Index of the first match-less class, or -1.
    cdef int _fallback

    cpdef int classify(self, bytes method, bytes path, object head) except -2
