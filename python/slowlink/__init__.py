"""slowlink: train with a ps-server over a slow network (Local SGD / DiLoCo, compressed both ways).

The protocol and the codecs are the project's C++ client library (docs/client.md); this package
binds it (slowlink._native). Provisional name: check it against PyPI before publishing.
"""
from slowlink._native import (  # noqa: F401
    DeadlineExceededError, Error, FailedPreconditionError, InvalidArgumentError, Layout,
    NotMemberError, PermissionDeniedError, Session, UnavailableError)
