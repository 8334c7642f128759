"""The server's Status call from Python, for scripts that need its numbers (version, checkpoint
version, max_round_wait_ms, ...) while it runs. The messages are generated from
proto/ps/v1/ps.proto by protoc into a temporary folder, once per process, as
tests/python_client_test.py does; grpcio and protobuf are Debian's python3-grpcio and
python3-protobuf (deploy/install-deps.sh installs them for /usr/bin/python3)."""
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_ROOT = os.path.join(ROOT, "proto")
_messages = None


def messages():
    """The generated module ps.v1.ps_pb2."""
    global _messages
    if _messages is None:
        out = tempfile.mkdtemp(prefix="ps_pb2_")
        try:
            subprocess.run(["protoc", "--proto_path=" + PROTO_ROOT, "--python_out=" + out,
                            os.path.join(PROTO_ROOT, "ps", "v1", "ps.proto")], check=True)
            sys.path.insert(0, out)
            from ps.v1 import ps_pb2  # noqa: E402
        finally:
            # The module is loaded; its folder is not needed any more.
            shutil.rmtree(out, ignore_errors=True)
        _messages = ps_pb2
    return _messages


class StatusClient:
    """Status of one server process. Use a new client per process: a channel to an address whose
    server died backs off before it reconnects."""

    def __init__(self, address):
        import grpc
        self._grpc = grpc
        self._pb = messages()
        self.channel = grpc.insecure_channel(address)
        self._call = self.channel.unary_unary(
            "/ps.v1.ParameterServer/Status",
            request_serializer=self._pb.StatusRequest.SerializeToString,
            response_deserializer=self._pb.StatusResponse.FromString)

    def get(self, timeout=2.0):
        """The StatusResponse, or None if the server did not answer within timeout."""
        try:
            return self._call(self._pb.StatusRequest(), timeout=timeout)
        except self._grpc.RpcError:
            return None

    def close(self):
        self.channel.close()
