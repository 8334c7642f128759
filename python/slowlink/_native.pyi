"""Type hints of slowlink._native, the binding of the C++ client library (python/native.cc)."""
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy
import numpy.typing

FloatArray = numpy.typing.NDArray[numpy.float32]

class Error(Exception):
    """Any error of the client library; the server's message is kept."""
    code: str  # the status code's name, e.g. "RESOURCE_EXHAUSTED"

class InvalidArgumentError(Error):
    """INVALID_ARGUMENT: the caller's input (a bad layout, NaN or Inf in an update, an
    encoding the server does not allow). Nothing was applied."""

class FailedPreconditionError(Error):
    """FAILED_PRECONDITION: the run cannot take this process (another layout, named in the
    message; shards that disagree; a full run)."""

class NotMemberError(Error):
    """NOT_FOUND: the server does not know this process (join first)."""

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
    """One training process's part in a run (docs/client.md). Calls from several threads are
    taken one at a time; counters() may be read at any time. Network calls release the GIL."""
    def __init__(self, servers: List[str], name: str = "python", rank: int = -1,
                 rpc_timeout: float = 30.0, retry_budget: float = 60.0, token: str = "",
                 tls_ca: str = "", tls_cert: str = "", tls_key: str = "",
                 tls_server_name: str = "", update_encoding: str = "", bits: int = 0,
                 bits_policy: str = "") -> None: ...
    def server_status(self) -> Dict[str, Any]:
        """Shard 0's Status as a dict (ps.proto's field names; 64-bit integers are strings, as
        in protobuf's JSON mapping), before or after joining."""
    def join(self, layout: Layout, initial: FloatArray) -> Dict[str, Any]:
        """Joins every shard. A server without a model takes `initial` (layout.size float32
        values; may be empty if the server has one). Returns worker_id, rank, version,
        num_workers, local_steps, sync, gradient, learning_rate and the whole config.
        FailedPreconditionError names the first tensor of another layout."""
    def model(self) -> FloatArray:
        """A copy of the global model as last pulled (flat, layout order)."""
    @property
    def version(self) -> int: ...
    @property
    def size(self) -> int: ...
    def sync(self, params: FloatArray, sample_count: int = 1, train_loss: float = 0.0,
             learning_rate: float = 0.0, round: int = 0,
             total_rounds: int = 0) -> Dict[str, Any]:
        """One Local SGD synchronisation: pushes params - model() compressed as the server
        asks, writes the next global model into params (in place). Returns version,
        stale_refusals, repushes, rejoined and bits; a stale refusal is counted, not raised."""
    def push(self, update: FloatArray, sample_count: int = 1, train_loss: float = 0.0,
             learning_rate: float = 0.0, round: int = 0,
             total_rounds: int = 0) -> Dict[str, Any]:
        """Pushes an update of the run's kind (a model change or a gradient), then pulls the
        next global model into model(). Returns what sync returns."""
    def refresh(self, wait: float = 0.0) -> int:
        """Pulls the newest model without pushing, waiting up to `wait` seconds for one newer
        than version. Returns the version."""
    def report(self, version: int, test_loss: float, test_accuracy: float) -> None: ...
    def leave(self) -> None:
        """Leaves every shard; the session is done afterwards."""
    def counters(self) -> Dict[str, Union[int, float]]:
        """Totals since the session was made: bytes_sent, bytes_received, raw_bytes_sent and
        raw_bytes_received (fp32 equivalents), upload_bytes_sent (of bytes_sent, what
        uploading the initial model took, won or lost), updates, stale_refusals,
        stale_repushes, rejoins (ints) and mean_update_bits (float). Safe from any thread."""
