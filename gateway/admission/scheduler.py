"""Admission scheduler (native); `gateway.admission.reference.Scheduler` is the model."""

from gateway._native.scheduler import ADMITTED, CANCELLED, QUEUED, REJECTED, Scheduler, Ticket

__all__ = ["ADMITTED", "CANCELLED", "QUEUED", "REJECTED", "Scheduler", "Ticket"]
