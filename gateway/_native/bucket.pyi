"""Token bucket with an injected clock (the admission rate limits).

A bucket holds up to `capacity` tokens and gains `rate` tokens a second. The
level is only brought up to date when the bucket is used. A clock that steps
backwards is ignored, so a clock jump never mints tokens.
"""

class TokenBucket:
    """`rate` tokens per second up to `burst`; rate 0 means unlimited.

    burst 0 means one second's worth of tokens (at least one), so a school
    configured with only a rate still gets a working bucket. The bucket
    starts full.
    """

    @property
    def rate(self) -> float: ...
    @property
    def capacity(self) -> float: ...
    def __init__(self, rate: float, burst: int, now: float) -> None: ...
    def try_take(self, now: float, n: float = 1.0) -> bool:
        """Take n tokens if the bucket holds them; False leaves it untouched."""
    def time_until(self, now: float, n: float = 1.0) -> float:
        """Seconds until n tokens are held: 0 if now, inf if n > capacity."""
    def reserve(self, now: float, n: float = 1.0, max_wait: float = ...) -> float:
        """Take n tokens on credit if they will be held within max_wait.

        Returns the seconds the caller must wait before using them (0 when
        available now), or -1 with nothing taken when the wait would exceed
        max_wait. The level goes negative while reservations are outstanding,
        so later callers queue up behind earlier ones.
        """
    def tokens(self, now: float) -> float:
        """Tokens held now (inf when unlimited, negative while in debt)."""
    def idle(self, now: float) -> bool:
        """True when the bucket is full, i.e. forgetting it changes nothing."""
