"""slowlink: train with a ps-server over a slow network (Local SGD / DiLoCo, compressed both ways).

The protocol and the codecs are the project's C++ client library (docs/client.md); this package
binds it (slowlink._native) and adds a PyTorch integration (slowlink.torch, imported on demand).
See docs/python.md.
"""
from slowlink._native import (  # noqa: F401
    Codec, DeadlineExceededError, Error, FailedPreconditionError, InvalidArgumentError, Layout,
    NotMemberError, PermissionDeniedError, Session, UnavailableError)

__all__ = ["Codec", "DeadlineExceededError", "Error", "FailedPreconditionError",
           "InvalidArgumentError", "Layout", "NotMemberError", "PermissionDeniedError", "Session",
           "UnavailableError"]
