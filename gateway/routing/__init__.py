"""Host -> school routing and request -> traffic class classification.

Re-exports the compiled implementation (`native/router.pyx`);
`tests/oracles/routing.py` is the plain-Python model it is tested against.
"""

from gateway._native.router import Classifier, Router

__all__ = ["Classifier", "Router"]
