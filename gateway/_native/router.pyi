"""Host routing and traffic classification (native/router.pyx).

Import through `gateway.routing`; `tests/oracles/routing.py` is the
plain-Python model with the same behaviour.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

class _Match(Protocol):
    methods: Sequence[str]
    paths: Sequence[str]
    headers: Mapping[str, str]

class _Head(Protocol):
    def header(self, name: bytes) -> bytes | None: ...

class Router:
    """Host -> school index, built once per config."""

    def __init__(self, hosts_per_school: Sequence[Iterable[str]]) -> None:
        """Index the host entries of each school (list position = school index).

        Entries are exact names, `*.example.org` (any depth of subdomain, not
        example.org itself) or a lone `*` (catch-all). They are lower-cased and
        lose one trailing dot, as Host does. Raises ValueError for a malformed
        entry or one listed by two schools.
        """
    def route(self, host: bytes) -> int:
        """School index for a normalised host (RequestHead.host), or -1.

        Exact entries beat wildcards, the longest wildcard suffix wins, and `*`
        only catches what nothing else does.
        """

class Classifier:
    """Request -> traffic class index: the first class whose match fits."""

    def __init__(self, classes: Sequence[_Match | None]) -> None:
        """Prepare matches (config `Match` objects; None marks a fallback class).

        Methods are compared upper-cased, paths as prefixes, header names
        case-insensitively and header values exactly after trimming OWS
        (`"*"` only requires presence).
        """
    def classify(self, method: bytes, path: bytes, head: _Head) -> int:
        """Index of the first class whose every non-empty criterion fits.

        When none fits: the first None class, or -1 when there is none.
        """
