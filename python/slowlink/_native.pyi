"""Type hints of slowlink._native, the binding of the C++ client library (python/native.cc)."""
from typing import Any, Dict, List, Sequence, Tuple

import numpy
import numpy.typing

FloatArray = numpy.typing.NDArray[numpy.float32]

class Error(Exception):
    """Any error of the client library; the server's message is kept."""

class InvalidArgumentError(Error):
    """INVALID_ARGUMENT: the caller's input; nothing was applied."""

class FailedPreconditionError(Error):
    """FAILED_PRECONDITION: the run cannot take this process (another layout, a full run)."""

class NotMemberError(Error):
    """NOT_FOUND: the server does not know this process."""

class UnavailableError(Error):
    """UNAVAILABLE: no server answered within the retry budget."""

class DeadlineExceededError(Error):
    """DEADLINE_EXCEEDED: a server answered too slowly, past the retries."""

class PermissionDeniedError(Error):
    """UNAUTHENTICATED or PERMISSION_DENIED: the token or certificate was refused."""

class Layout:
    """An ordered list of named float32 tensors."""
    def __init__(self, tensors: Sequence[Tuple[str, Sequence[int]]]) -> None: ...
    @property
    def size(self) -> int: ...
    def fingerprint(self) -> int: ...

class Codec:
    """A wire codec, the same code the session and the server run."""
    def __init__(self, encoding: str = "fp32", bits: int = 4, bucket_size: int = 512,
                 scaling: str = "max_abs", seed: int = 0) -> None: ...
    def encode(self, values: FloatArray) -> bytes: ...
    def decode(self, payload: bytes, size: int) -> FloatArray: ...
    def encoded_size(self, size: int) -> int: ...

class Session:
    """One training process's part in a run."""
    def __init__(self, servers: List[str], name: str = "python", rank: int = -1,
                 rpc_timeout: float = 30.0, retry_budget: float = 60.0, token: str = "",
                 tls_ca: str = "", tls_cert: str = "", tls_key: str = "",
                 tls_server_name: str = "", update_encoding: str = "", bits: int = 0,
                 bits_policy: str = "") -> None: ...
    def server_status(self) -> Dict[str, Any]: ...
    def join(self, layout: Layout, initial: FloatArray) -> Dict[str, Any]: ...
    def model(self) -> FloatArray: ...
    @property
    def version(self) -> int: ...
    @property
    def size(self) -> int: ...
    def sync(self, params: FloatArray, sample_count: int = 1, train_loss: float = 0.0,
             learning_rate: float = 0.0, round: int = 0,
             total_rounds: int = 0) -> Dict[str, Any]: ...
    def push(self, update: FloatArray, sample_count: int = 1, train_loss: float = 0.0,
             learning_rate: float = 0.0, round: int = 0,
             total_rounds: int = 0) -> Dict[str, Any]: ...
    def refresh(self, wait: float = 0.0) -> int: ...
    def report(self, version: int, test_loss: float, test_accuracy: float) -> None: ...
    def leave(self) -> None: ...
    def counters(self) -> Dict[str, float]: ...
