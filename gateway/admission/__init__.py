"""Sans-IO admission control: token buckets, priority queues, pools, windows.

`AdmissionController` is what the proxy shell talks to (the waiting room's
line is gateway/waiting/line.py). Native pieces live in gateway._native
(bucket, scheduler); their plain-Python models are in `tests/oracles/admission.py`.
"""

from gateway.admission.bucket import TokenBucket
from gateway.admission.controller import (
    ADMITTED,
    CANCELLED,
    QUEUED,
    REJECTED,
    AdmissionController,
    Ticket,
)
from gateway.admission.scheduler import Scheduler
from gateway.admission.windows import ClassWindows

__all__ = [
    "ADMITTED", "CANCELLED", "QUEUED", "REJECTED", "AdmissionController", "ClassWindows",
    "Scheduler", "Ticket", "TokenBucket",
]
