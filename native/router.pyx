# cython: auto_pickle=False
"""Host routing and traffic classification (compiled hot path).

Mirrors tests/oracles/routing.py. Everything is prepared when a config is
loaded (normalised bytes keys, frozensets, tuples); per request a route is one
dict probe plus, when wildcards exist, one probe per label whose suffix length
some wildcard actually has, and a classification allocates nothing unless a
header criterion has to ask a non-native head.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.string cimport memcmp, memset

from gateway._native.head cimport RequestHead

# Host characters that survive parse_request_head's normalisation (RFC 3986
# reg-name, lower case) and the inside of an IP literal.
_REG_NAME = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=%")
_IP_LITERAL = frozenset("0123456789abcdef:.")


def _host_key(str entry):
    """Normalise a configured host the way parse_request_head normalises Host."""
    key = entry.strip().lower()
    # Explicit lengths: the module is compiled with wraparound off.
    if key.endswith("."):
        key = key[:len(key) - 1]
    if key.startswith("["):
        valid = (len(key) > 2 and key.endswith("]")
                 and _IP_LITERAL.issuperset(key[1:len(key) - 1]))
    else:
        valid = bool(key) and _REG_NAME.issuperset(key)
    if not valid:
        raise ValueError(f"invalid host entry {entry!r} (a host name without port)")
    return key.encode("ascii")


cdef class Router:
    """Host -> school index, built once per config."""

    def __init__(self, hosts_per_school):
        cdef dict owner = {}
        cdef Py_ssize_t n
        self._exact = {}
        self._wildcard = {}
        self._default = -1
        memset(self._suffix_len, 0, sizeof(self._suffix_len))
        for school, hosts in enumerate(hosts_per_school):
            for entry in hosts:
                stripped = entry.strip()
                if stripped == "*":
                    label = "*"
                elif stripped.startswith("*."):
                    suffix = _host_key(stripped[2:])
                    if b"*" in suffix:
                        raise ValueError(f"invalid host entry {entry!r}")
                    label = "*." + suffix.decode()
                else:
                    key = _host_key(stripped)
                    if b"*" in key:
                        raise ValueError(f"invalid host entry {entry!r}: '*' only as a whole "
                                         f"leading label ('*.example.org') or alone")
                    label = key.decode()
                first = owner.setdefault(label, school)
                if first != school:
                    raise ValueError(
                        f"host {label!r} is listed by school {first} and school {school}")
                if label == "*":
                    self._default = school
                elif label.startswith("*."):
                    # Keyed with the dot so a lookup can slice the host at a label boundary.
                    self._wildcard[b"." + suffix] = school
                    n = len(suffix) + 1
                    self._suffix_len[n if n < 256 else 256] = 1
                else:
                    self._exact[key] = school

    cpdef int route(self, bytes host) except -2:
        """School index for a normalised host, or -1 when no entry covers it."""
        cdef PyObject* hit
        cdef const char* p
        cdef Py_ssize_t n, i
        if host is None:
            raise TypeError("host must be bytes")
        hit = PyDict_GetItem(self._exact, host)
        if hit != NULL:
            return <int><object>hit
        if self._wildcard:
            p = PyBytes_AS_STRING(host)
            n = PyBytes_GET_SIZE(host)
            # Leftmost dot first, so the longest suffix is tried first.
            for i in range(1, n):
                if p[i] == 46 and self._suffix_len[n - i if n - i < 256 else 256]:
                    hit = PyDict_GetItem(self._wildcard,
                                         PyBytes_FromStringAndSize(p + i, n - i))
                    if hit != NULL:
                        return <int><object>hit
        return self._default


cdef inline bint _ows(unsigned char c) noexcept:
    return c == 32 or c == 9


cdef bint _trimmed_equals(bytes value, bytes wanted) noexcept:
    cdef const char* p = PyBytes_AS_STRING(value)
    cdef Py_ssize_t start = 0, end = PyBytes_GET_SIZE(value)
    while start < end and _ows(p[start]):
        start += 1
    while end > start and _ows(p[end - 1]):
        end -= 1
    return (end - start == PyBytes_GET_SIZE(wanted)
            and memcmp(p + start, PyBytes_AS_STRING(wanted), end - start) == 0)


cdef class _Rule:
    def __init__(self, int index, match):
        self.index = index
        self.methods = frozenset(m.strip().upper().encode("ascii") for m in match.methods) or None
        self.paths = tuple(p.encode("ascii") for p in match.paths)
        self.names = tuple(name.strip().lower().encode("ascii") for name in match.headers)
        self.values = tuple(None if value == "*" else value.encode("latin-1").strip(b" \t")
                            for value in match.headers.values())

    cdef bint fits(self, bytes method, bytes path, object head) except -1:
        cdef Py_ssize_t i, n
        cdef bytes prefix
        if self.methods is not None and method not in self.methods:
            return False
        n = PyTuple_GET_SIZE(self.paths)
        if n:
            for i in range(n):
                prefix = <bytes>PyTuple_GET_ITEM(self.paths, i)
                if (PyBytes_GET_SIZE(path) >= PyBytes_GET_SIZE(prefix)
                        and memcmp(PyBytes_AS_STRING(path), PyBytes_AS_STRING(prefix),
                                   PyBytes_GET_SIZE(prefix)) == 0):
                    break
            else:
                return False
        for i in range(PyTuple_GET_SIZE(self.names)):
            name = <bytes>PyTuple_GET_ITEM(self.names, i)
            if type(head) is RequestHead:
                value = (<RequestHead>head).header(name)
            else:
                value = head.header(name)
            if value is None:
                return False
            wanted = <object>PyTuple_GET_ITEM(self.values, i)
            if wanted is not None and not _trimmed_equals(<bytes?>value, <bytes>wanted):
                return False
        return True


cdef class Classifier:
    """Request -> traffic class index: the first class whose match fits."""

    def __init__(self, classes):
        self._rules = []
        self._fallback = -1
        for index, match in enumerate(classes):
            if match is None:
                if self._fallback < 0:
                    self._fallback = index
            else:
                self._rules.append(_Rule(index, match))

    cpdef int classify(self, bytes method, bytes path, object head) except -2:
        """Index of the first fitting class, else the first match-less one, else -1."""
        cdef _Rule rule
        if method is None or path is None:
            raise TypeError("method and path must be bytes")
        for rule in self._rules:
            if rule.fits(method, path, head):
                return rule.index
        return self._fallback
