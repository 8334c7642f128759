#!/usr/bin/env python3
"""The wire contract from a client that is not ours: Python grpcio and messages generated from
proto/ps/v1/ps.proto by protoc. A server told nothing of the model: join with a layout, upload the
initial model, join again, pull it, push a delta in two chunks, pull the new version, see a NaN
push refused with INVALID_ARGUMENT and a Join of another layout refused naming the tensor, read
Status, leave. Then what a hostile or
careless client can send that our C++ client never would (raw bytes, compressed messages, two
messages to a unary call, control characters in names), and what the server answers.

Usage: python_client_test.py PS_SERVER_BINARY PROTO_ROOT
"""
import array
import os
import subprocess
import sys
import tempfile
import time
import unittest

SERVER, PROTO_ROOT = sys.argv[1], sys.argv[2]
WORK = tempfile.mkdtemp()
subprocess.run(["protoc", f"--proto_path={PROTO_ROOT}", f"--python_out={WORK}",
                os.path.join(PROTO_ROOT, "ps/v1/ps.proto")], check=True)
sys.path.insert(0, WORK)

import grpc  # noqa: E402
import numpy  # noqa: E402
from ps.v1 import ps_pb2 as pb  # noqa: E402

# An initial model for the servers that are given one (10 float32 zeros), as numpy writes it.
INIT_NPY = os.path.join(WORK, "init.npy")
numpy.save(INIT_NPY, numpy.zeros(10, dtype=numpy.float32))

SERVICE = "/ps.v1.ParameterServer/"


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


class ServerTestCase(unittest.TestCase):
    """A ps-server started with FLAGS on a free loopback port for the class, its log in log_path."""
    FLAGS = []

    @classmethod
    def setUpClass(cls):
        port_file = os.path.join(tempfile.mkdtemp(dir=WORK), "port")
        cls.log_path = os.path.join(WORK, f"{cls.__name__}.log")
        with open(cls.log_path, "wb") as log:
            cls.server = subprocess.Popen(
                [SERVER, "--listen=127.0.0.1:0", f"--port_file={port_file}"] + cls.FLAGS,
                stderr=log)
        for _ in range(100):
            if os.path.exists(port_file) and read(port_file).strip():
                break
            time.sleep(0.1)
        cls.channel = grpc.insecure_channel(f"127.0.0.1:{read(port_file).strip()}")

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.server.terminate()
        cls.server.wait(timeout=30)

    def call(self, kind, method, request_type, response_type):
        make = getattr(self.channel, kind)
        return make(SERVICE + method, request_serializer=request_type.SerializeToString,
                    response_deserializer=response_type.FromString)

    def pull(self, worker_id, have_version):
        pull = self.call("unary_stream", "Pull", pb.PullRequest, pb.ModelChunk)
        chunks = list(pull(pb.PullRequest(worker_id=worker_id, have_version=have_version,
                                          accept_encodings=[pb.ENCODING_FP32], max_wait_ms=5000),
                           timeout=30))
        header = chunks[0].header
        payload = b"".join(c.data for c in chunks)
        self.assertEqual(len(payload), header.payload_bytes)
        return header, array.array("f", payload)

    def push(self, worker_id, sequence, base_version, values, split=2):
        return self.call("stream_unary", "Push", pb.UpdateChunk, pb.PushAck)(
            iter(self.chunks(worker_id, sequence, base_version, values, split)), timeout=30)

    @staticmethod
    def chunks(worker_id, sequence, base_version, values, split=2):
        payload = array.array("f", values).tobytes()
        header = pb.UpdateHeader(
            worker_id=worker_id, sequence=sequence, kind=pb.UPDATE_KIND_MODEL_DELTA,
            base_version=base_version, sample_count=32,
            encoding=pb.EncodingParams(encoding=pb.ENCODING_FP32),
            num_elements=len(values), payload_bytes=len(payload))
        cut = len(payload) // split // 4 * 4
        return [pb.UpdateChunk(header=header, offset=0, data=payload[:cut]),
                pb.UpdateChunk(offset=cut, data=payload[cut:])]


class PythonClientTest(ServerTestCase):
    FLAGS = ["--mode=async", "--num_workers=1"]
    LAYOUT = pb.ModelLayout(tensors=[pb.TensorSpec(name="w", shape=[2, 4]),
                                     pb.TensorSpec(name="b", shape=[2])])

    def upload(self, values):
        payload = array.array("f", values).tobytes()
        header = pb.UpdateHeader(
            kind=pb.UPDATE_KIND_INITIAL_MODEL, encoding=pb.EncodingParams(encoding=pb.ENCODING_FP32),
            num_elements=len(values), payload_bytes=len(payload), layout=self.LAYOUT)
        return self.call("stream_unary", "Push", pb.UpdateChunk, pb.PushAck)(
            iter([pb.UpdateChunk(header=header, offset=0, data=payload)]), timeout=30)

    def test_join_pull_push_pull_status_leave(self):
        join = self.call("unary_unary", "Join", pb.JoinRequest, pb.JoinResponse)
        request = pb.JoinRequest(worker_name="python", requested_rank=-1, layout=self.LAYOUT)
        asked = join(request, timeout=30)
        self.assertTrue(asked.initial_model_needed)
        self.assertEqual(asked.worker_id, 0)
        self.assertEqual((asked.shard_begin, asked.shard_end), (0, 10))
        initial = [0.5 * i for i in range(10)]
        ack = self.upload(initial)
        self.assertEqual(ack.version, 1)
        with self.assertRaises(grpc.RpcError) as again:
            self.upload(initial)
        self.assertEqual(again.exception.code(), grpc.StatusCode.ALREADY_EXISTS)

        joined = join(request, timeout=30)
        self.assertFalse(joined.initial_model_needed)
        self.assertEqual(joined.model_size, 2 * 4 + 2)
        self.assertEqual(joined.config.mode, pb.AGGREGATION_MODE_ASYNC)
        self.assertEqual([t.name for t in joined.layout.tensors], ["w", "b"])

        header, x0 = self.pull(joined.worker_id, 0)
        self.assertEqual(header.kind, pb.ModelHeader.KIND_FULL)
        self.assertEqual(header.version, 1)
        self.assertEqual(list(x0), initial)

        other = pb.JoinRequest(worker_name="other", layout=pb.ModelLayout(
            tensors=[pb.TensorSpec(name="w", shape=[4, 2]), pb.TensorSpec(name="b", shape=[2])]))
        with self.assertRaises(grpc.RpcError) as refused:
            join(other, timeout=30)
        self.assertEqual(refused.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn("w [4, 2]", refused.exception.details())
        self.assertIn("w [2, 4]", refused.exception.details())

        delta = [0.25 * (i + 1) for i in range(joined.model_size)]
        ack = self.push(joined.worker_id, 1, 1, delta)
        self.assertEqual(ack.result, pb.PushAck.RESULT_APPLIED)
        self.assertEqual(ack.version, 2)

        header, x1 = self.pull(joined.worker_id, 1)
        self.assertEqual(header.version, 2)
        # One worker, a fresh update: x1 = x0 + delta, in float32.
        expected = array.array("f", [a + b for a, b in zip(x0, delta)])
        self.assertEqual(list(x1), list(expected))

        with self.assertRaises(grpc.RpcError) as refused:
            self.push(joined.worker_id, 2, 2, [float("nan")] * joined.model_size)
        self.assertEqual(refused.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("NaN", refused.exception.details())

        status = self.call("unary_unary", "Status", pb.StatusRequest, pb.StatusResponse)(
            pb.StatusRequest(), timeout=30)
        self.assertEqual(status.version, 2)
        self.assertEqual(status.updates_applied, 1)
        self.assertGreaterEqual(status.updates_refused_invalid, 1)
        self.assertEqual(len(status.members), 1)
        self.assertTrue(status.has_model)
        self.assertEqual([(t.name, list(t.shape)) for t in status.layout.tensors],
                         [("w", [2, 4]), ("b", [2])])
        self.assertEqual(len(status.layout_fingerprint), 16)

        self.call("unary_unary", "Leave", pb.LeaveRequest, pb.LeaveResponse)(
            pb.LeaveRequest(worker_id=joined.worker_id), timeout=30)
        with self.assertRaises(grpc.RpcError) as gone:
            self.pull(joined.worker_id, 0)
        self.assertEqual(gone.exception.code(), grpc.StatusCode.NOT_FOUND)


class HostileClientTest(ServerTestCase):
    """Issue 10: what the server does with input that only a hostile or broken client sends."""
    FLAGS = ["--mode=async", "--num_workers=8", "--init_model=" + INIT_NPY]

    def raw(self, kind, method):
        return getattr(self.channel, kind)(SERVICE + method)  # bytes in, bytes out

    def join(self, name="python"):
        return self.call("unary_unary", "Join", pb.JoinRequest, pb.JoinResponse)(
            pb.JoinRequest(worker_name=name), timeout=30)

    def model(self):
        status = self.call("unary_unary", "Status", pb.StatusRequest, pb.StatusResponse)(
            pb.StatusRequest(), timeout=30)
        return status.version, status.updates_applied

    def test_a_valid_push_followed_by_a_message_that_is_not_protobuf_is_refused(self):
        # Item 3: gRPC reported the bad message like a normal end of stream, and the push applied.
        joined = self.join()
        before = self.model()
        messages = [c.SerializeToString() for c in self.chunks(joined.worker_id, 1, 1, [0.5] * 10)]
        with self.assertRaises(grpc.RpcError) as refused:
            self.raw("stream_unary", "Push")(iter(messages + [b"\xff\xff\xff\xff"]), timeout=30)
        self.assertEqual(refused.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("not a ps.v1.UpdateChunk", refused.exception.details())
        self.assertEqual(self.model(), before)

    def test_a_compressed_request_is_refused_before_it_is_decompressed(self):
        # Item 9: a 500 KB gzip message inflating to 512 MiB was refused only after inflating.
        bomb = pb.JoinRequest(worker_name="x" * (4 << 20)).SerializeToString()
        with self.assertRaises(grpc.RpcError) as refused:
            self.raw("unary_unary", "Join")(bomb, timeout=30, compression=grpc.Compression.Gzip)
        self.assertEqual(refused.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
        self.assertIn("disabled", refused.exception.details())
        self.assertGreater(self.join().worker_id, 0)  # and the server still serves

    def test_unparsable_request_bytes_get_the_grpc_librarys_answer(self):
        # Item 10, gRPC's own behaviour (pinned, documented in the README's error table): a unary
        # request that does not parse never reaches the service.
        with self.assertRaises(grpc.RpcError) as refused:
            self.raw("unary_unary", "Join")(b"\xff\xff\xff\xff", timeout=30)
        self.assertEqual(refused.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
        self.assertEqual(refused.exception.details(), "")

    def test_a_unary_call_sent_as_two_messages_takes_the_first(self):
        # Item 10, gRPC's own behaviour (pinned, documented): a unary handler reads one message.
        first = pb.JoinRequest(worker_name="first").SerializeToString()
        second = pb.JoinRequest(worker_name="second").SerializeToString()
        answer = pb.JoinResponse.FromString(
            self.raw("stream_unary", "Join")(iter([first, second]), timeout=30))
        status = self.call("unary_unary", "Status", pb.StatusRequest, pb.StatusResponse)(
            pb.StatusRequest(), timeout=30)
        names = {m.worker_id: m.name for m in status.members}
        self.assertEqual(names[answer.worker_id], "first")

    def test_a_worker_name_with_a_newline_cannot_forge_a_log_line(self):
        # Item 6: the name wrote a forged "E event=shutdown" line into the server's log.
        self.join("evil\n2026-01-01T00:00:00.000Z E event=shutdown version=1\x00")
        time.sleep(0.2)
        log = read(self.log_path, "rb")
        self.assertNotIn(b"\n2026-01-01T00:00:00.000Z E event=shutdown", log)
        self.assertNotIn(b"\x00", log)
        self.assertIn(b'name="evil\\n2026-01-01', log)


class OuterOptimizerKillTest(unittest.TestCase):
    """kill -9 of a server running DiLoCo's outer Nesterov, then a restart from its checkpoint
    directory, makes exactly the next version that an undisturbed server makes from the same
    update: the momentum comes back bit for bit with the model."""

    FLAGS = ["--mode=sync", "--num_workers=1", "--init_model=" + INIT_NPY,
             "--outer_optimizer=nesterov", "--checkpoint_every_versions=1"]

    def start(self, work, name, ckpt):
        port_file = os.path.join(work, name + ".port")
        if os.path.exists(port_file):
            os.remove(port_file)
        proc = subprocess.Popen([SERVER, "--listen=127.0.0.1:0", "--port_file=" + port_file,
                                 "--checkpoint_dir=" + ckpt] + self.FLAGS,
                                stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        for _ in range(300):
            if os.path.exists(port_file) and read(port_file).strip():
                break
            time.sleep(0.1)
        channel = grpc.insecure_channel("127.0.0.1:" + read(port_file).strip())
        self.addCleanup(channel.close)
        return proc, channel

    @staticmethod
    def rpc(channel, kind, method, request_type, response_type):
        return getattr(channel, kind)(SERVICE + method,
                                      request_serializer=request_type.SerializeToString,
                                      response_deserializer=response_type.FromString)

    def status(self, channel):
        return self.rpc(channel, "unary_unary", "Status", pb.StatusRequest, pb.StatusResponse)(
            pb.StatusRequest(), timeout=30)

    def join(self, channel, name):
        return self.rpc(channel, "unary_unary", "Join", pb.JoinRequest, pb.JoinResponse)(
            pb.JoinRequest(worker_name=name, requested_rank=0), timeout=30).worker_id

    def push_and_wait(self, channel, worker_id, sequence, base_version, delta):
        self.rpc(channel, "stream_unary", "Push", pb.UpdateChunk, pb.PushAck)(
            iter(ServerTestCase.chunks(worker_id, sequence, base_version, delta)), timeout=30)
        for _ in range(300):  # the round closed, and its checkpoint is written
            st = self.status(channel)
            if st.version == base_version + 1 and st.checkpoint_version == base_version + 1:
                return
            time.sleep(0.05)
        self.fail("version %d was not reached and checkpointed" % (base_version + 1))

    def model(self, channel, worker_id):
        pull = self.rpc(channel, "unary_stream", "Pull", pb.PullRequest, pb.ModelChunk)
        chunks = list(pull(pb.PullRequest(worker_id=worker_id, have_version=0,
                                          accept_encodings=[pb.ENCODING_FP32]), timeout=30))
        return chunks[0].header.version, b"".join(c.data for c in chunks)

    def test_a_resumed_outer_nesterov_makes_the_same_next_version(self):
        self.procs = []
        self.addCleanup(lambda: [p.kill() for p in self.procs if p.poll() is None])
        work = tempfile.mkdtemp(dir=WORK)
        deltas = [[0.25 * (i % 3 + 1) for i in range(10)], [-0.125 * (i + 1) for i in range(10)],
                  [0.5] * 10]
        _, undisturbed = self.start(work, "undisturbed", os.path.join(work, "a"))
        victim, disturbed = self.start(work, "disturbed", os.path.join(work, "b"))
        ids = [self.join(undisturbed, "u"), self.join(disturbed, "d")]
        for n, delta in enumerate(deltas[:2]):
            for channel, worker_id in zip([undisturbed, disturbed], ids):
                self.push_and_wait(channel, worker_id, n + 1, n + 1, delta)
        victim.kill()  # kill -9
        victim.wait(timeout=30)
        _, resumed = self.start(work, "disturbed", os.path.join(work, "b"))
        self.assertEqual(self.status(resumed).resumed_from_version, 3)
        resumed_id = self.join(resumed, "d")  # the restarted server forgot the old member
        self.push_and_wait(undisturbed, ids[0], 3, 3, deltas[2])
        self.push_and_wait(resumed, resumed_id, 1, 3, deltas[2])
        version_a, model_a = self.model(undisturbed, ids[0])
        version_b, model_b = self.model(resumed, resumed_id)
        self.assertEqual((version_a, version_b), (4, 4))
        self.assertEqual(model_a, model_b, "the momentum was not restored bit for bit")
        # Plain averaging (K = 1) would hold the sum of the deltas: the outer optimizer acted.
        summed = array.array("f", [sum(d[i] for d in deltas) for i in range(10)])
        self.assertNotEqual(model_a, summed.tobytes())


class ExportTest(unittest.TestCase):
    """numpy in, numpy out: two shards start from an .npz numpy wrote (the layout comes with it),
    checkpoint at shutdown, and ps-server --export_model gives back the same arrays by name."""

    def test_an_npz_round_trips_through_two_shards_and_their_checkpoints(self):
        work = tempfile.mkdtemp(dir=WORK)
        rng = numpy.random.default_rng(5)
        arrays = {"encoder.weight": rng.standard_normal((7, 3), dtype=numpy.float32),
                  "encoder.bias": rng.standard_normal(7, dtype=numpy.float32),
                  "head": rng.standard_normal((2, 2, 2), dtype=numpy.float32)}
        init = os.path.join(work, "init.npz")
        numpy.savez(init, **arrays)
        dirs = [os.path.join(work, "shard%d" % i) for i in range(2)]
        servers = []
        for i, ckpt in enumerate(dirs):
            port_file = os.path.join(work, "port%d" % i)
            servers.append(subprocess.Popen(
                [SERVER, "--listen=127.0.0.1:0", "--port_file=" + port_file, "--mode=sync",
                 "--num_workers=1", "--init_model=" + init, "--shard_index=%d" % i,
                 "--shard_count=2", "--checkpoint_dir=" + ckpt],
                stderr=subprocess.DEVNULL))
            for _ in range(100):
                if os.path.exists(port_file):
                    break
                time.sleep(0.1)
        for server in servers:
            server.terminate()
            self.assertEqual(server.wait(timeout=30), 0)
        out = os.path.join(work, "model.npz")
        exported = subprocess.run([SERVER, "--export_model=" + out,
                                   "--checkpoint_dir=" + ",".join(dirs)],
                                  capture_output=True, text=True)
        self.assertEqual(exported.returncode, 0, exported.stderr)
        self.assertIn("exported version 1", exported.stdout)
        with numpy.load(out) as loaded:
            self.assertEqual(list(loaded.keys()), list(arrays.keys()))
            for name, values in arrays.items():
                numpy.testing.assert_array_equal(loaded[name], values)
        one = subprocess.run([SERVER, "--export_model=" + out, "--checkpoint_dir=" + dirs[1]],
                             capture_output=True, text=True)
        self.assertNotEqual(one.returncode, 0)
        self.assertIn("all 2 shards", one.stderr)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
