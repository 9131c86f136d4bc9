"""Oracle: splitting a school's limits across the worker processes of one
gateway by rewriting the config (the mechanism before allotments), kept to
check that StaticAllotment gives the same limits and decisions.

Each worker runs its own AdmissionController (no shared memory between
processes), and SO_REUSEPORT spreads connections evenly across workers, so
each worker enforces its share of every limit. Shares add up to the limit
exactly: worker i gets limit // n, plus one for the first limit % n workers.
A limit smaller than the worker count still gives every worker one slot
(0 would mean unlimited), so the sum can then exceed the limit by at most
n - 1; with workers = 1 the limits are exact.

Per-client buckets are not split: one client's connections normally land on
one worker.

The product uses gateway.admission.allotment.StaticAllotment, which sets the
same numbers as allotments on a controller built from the whole config
(AdmissionController(cfg, now, allotment=StaticAllotment(worker, workers))),
so a shared allotment task can later move them. Both use share() below.
"""

from __future__ import annotations

from msgspec.structs import replace

from gateway.admission.allotment import share
from gateway.config.schema import Config


def split_limits(cfg: Config, index: int, workers: int | None = None) -> Config:
    """The config as worker `index` of `workers` (default server.workers)
    should enforce it."""
    n = cfg.server.workers if workers is None else workers
    if n <= 1:
        return cfg
    schools = [
        replace(
            s,
            max_inflight=share(s.max_inflight, index, n),
            max_connections=share(s.max_connections, index, n),
            burst=share(s.burst, index, n),
            rate=s.rate / n,
        )
        for s in cfg.schools
    ]
    pools = [replace(p, max_inflight=share(p.max_inflight, index, n)) for p in cfg.pools]
    admission = replace(cfg.admission, max_queue=share(cfg.admission.max_queue, index, n))
    return replace(cfg, schools=schools, pools=pools, admission=admission)


__all__ = ["share", "split_limits"]
