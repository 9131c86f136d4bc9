"""Token bucket (native); `gateway.admission.reference.TokenBucket` is the model."""

from gateway._native.bucket import TokenBucket

__all__ = ["TokenBucket"]
