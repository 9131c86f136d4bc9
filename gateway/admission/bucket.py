"""Token bucket (native); `TokenBucket` in `tests/oracles/admission.py` is the model."""

from gateway._native.bucket import TokenBucket

__all__ = ["TokenBucket"]
