"""Token bucket with an injected clock (the admission rate limits).

A bucket holds up to `capacity` tokens and gains `rate` tokens a second. The
level is only brought up to date when the bucket is used. A clock that steps
backwards is ignored, so a clock jump never mints tokens. A bucket made with
rate 0 is unlimited for life; a limited one can be retuned and topped up or
drained while it runs (the admission allotment, gateway.admission.allotment).
"""

class TokenBucket:
    """`rate` tokens per second up to `burst`; rate 0 means unlimited.

    burst 0 means one second's worth of tokens (at least one), so a school
    configured with only a rate still gets a working bucket. The bucket
    starts full.
    """

    @property
    def unlimited(self) -> bool:
        """Made with rate 0: every take succeeds, for the bucket's whole life."""
    @property
    def rate(self) -> float:
        """Tokens per second; 0 in a limited bucket means no refill at all."""
    @property
    def capacity(self) -> float:
        """Most tokens held (the burst); inf for an unlimited bucket."""
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
    def set_rate(self, now: float, rate: float, burst: int) -> None:
        """Refill at `rate` tokens/s up to `burst` tokens from now on.

        burst 0 means one second's worth of the new rate (at least one), as
        in the constructor. Tokens accrued until now count at the old rate;
        the level is capped at the new capacity, never raised, so retuning
        mints nothing. rate 0 stops the refill (only deposit adds tokens).
        ValueError on an unlimited bucket, a negative or non-finite rate, or
        a negative burst.
        """
    def deposit(self, now: float, n: float) -> float:
        """Add up to n tokens, as far as the capacity allows; returns the
        number added (0 for an unlimited bucket). ValueError if n < 0 or
        not finite."""
    def withdraw(self, now: float, n: float) -> float:
        """Remove up to n of the tokens held now (never into debt); returns
        the number removed (0 for an unlimited bucket). ValueError if n < 0
        or not finite."""
    def tokens(self, now: float) -> float:
        """Tokens held now (inf when unlimited, negative while in debt)."""
    def idle(self, now: float) -> bool:
        """True when the bucket is full, i.e. forgetting it changes nothing."""
