"""Admission scheduler (native); `Scheduler` in `tests/oracles/admission.py` is the model."""

from gateway._native.scheduler import ADMITTED, CANCELLED, QUEUED, REJECTED, Scheduler, Ticket

__all__ = ["ADMITTED", "CANCELLED", "QUEUED", "REJECTED", "Scheduler", "Ticket"]
