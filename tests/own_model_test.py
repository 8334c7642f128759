#!/usr/bin/python3
"""Bring your own model, end to end: a stock ps-server told nothing but a layout file
(examples/own_model.layout: 5 tensors, 3,000,017 floats) is trained by three processes of the
example program examples/own_model.cc, once in sync mode and once in async mode (two shards, so a
shard boundary falls inside a tensor). The held-out loss falls; the servers' Status and the
exported .npz show the tensors by name. Then the README's commands for it, as written.

Usage: own_model_test.py BUILD_DIR SOURCE_DIR
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy

BUILD, SOURCE = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness.procs import Proc, fail, free_port, read_port_file  # noqa: E402

LAYOUT = os.path.join(SOURCE, "examples", "own_model.layout")
EXAMPLE = os.path.join(BUILD, "examples", "own_model")
SERVER = os.path.join(BUILD, "server", "ps-server")
TENSORS = {"hidden.weight": (1533, 453), "hidden.bias": (1533,), "out.weight": (1501, 1533),
           "out.bias": (1501,), "out.scale": (1501,)}
WORKERS, ROUNDS = 3, 8


def status(port, work):
    """Status of the server at `port`, from messages generated from the proto by protoc."""
    stubs = os.path.join(work, "stubs")
    if not os.path.isdir(stubs):
        os.makedirs(stubs)
        subprocess.run(["protoc", "--proto_path=" + os.path.join(SOURCE, "proto"),
                        "--python_out=" + stubs,
                        os.path.join(SOURCE, "proto", "ps", "v1", "ps.proto")], check=True)
    sys.path.insert(0, stubs)
    import grpc
    from ps.v1 import ps_pb2 as pb
    with grpc.insecure_channel("127.0.0.1:%d" % port) as channel:
        call = channel.unary_unary("/ps.v1.ParameterServer/Status",
                                   request_serializer=pb.StatusRequest.SerializeToString,
                                   response_deserializer=pb.StatusResponse.FromString)
        return call(pb.StatusRequest(), timeout=30)


def run(mode, work):
    ckpt = [os.path.join(work, "%s-ckpt-%d" % (mode, i)) for i in range(2)]
    servers, ports = [], []
    for i in range(2):
        port_file = os.path.join(work, "%s-port-%d" % (mode, i))
        servers.append(Proc([SERVER, "--listen=127.0.0.1:0", "--port_file=" + port_file,
                             "--layout=" + LAYOUT, "--mode=" + mode,
                             "--num_workers=%d" % WORKERS, "--shard_index=%d" % i,
                             "--shard_count=2", "--checkpoint_dir=" + ckpt[i],
                             "--checkpoint_every_versions=1"],
                            os.path.join(work, "%s-server-%d.log" % (mode, i))))
        ports.append(read_port_file(port_file, servers[-1]))
    addresses = ",".join("127.0.0.1:%d" % p for p in ports)
    workers = [Proc([EXAMPLE, "--servers=" + addresses, "--name=%s-%d" % (mode, k),
                     "--seed=%d" % (k + 1), "--rounds=%d" % ROUNDS, "--local_steps=4"],
                    os.path.join(work, "%s-worker-%d.log" % (mode, k)))
               for k in range(WORKERS)]
    summaries = []
    for k, w in enumerate(workers):
        if w.wait(600, "%s worker %d" % (mode, k)) != 0:
            fail("%s worker %d failed:\n%s" % (mode, k, w.text()[-3000:]))
        line = [l for l in w.text().splitlines() if l.startswith("summary ")][-1]
        summaries.append(json.loads(line[len("summary "):]))
    print(mode, json.dumps(summaries))
    for s in summaries:
        if not s["final_loss"] < 0.9 * s["initial_loss"]:
            fail("%s: the held-out loss did not fall by 10%%: %s" % (mode, s))
    if mode == "sync":  # one version per round, the same on every worker
        if {s["version"] for s in summaries} != {ROUNDS + 1}:
            fail("sync versions %s, expected %d" % ([s["version"] for s in summaries], ROUNDS + 1))
    check_status(ports, work)
    for s in servers:
        s.stop()
    check_export(ckpt, work, mode)


def check_status(ports, work):
    for i, port in enumerate(ports):
        st = status(port, work)
        names = [t.name for t in st.layout.tensors]
        shapes = [tuple(t.shape) for t in st.layout.tensors]
        if names != list(TENSORS) or shapes != list(TENSORS.values()):
            fail("shard %d Status layout %s %s" % (i, names, shapes))
        if not st.has_model or st.version < 2:
            fail("shard %d Status: has_model %s version %d" % (i, st.has_model, st.version))


def check_export(ckpt, work, mode):
    out = os.path.join(work, mode + ".npz")
    p = subprocess.run([SERVER, "--export_model=" + out, "--checkpoint_dir=" + ",".join(ckpt)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        fail("export failed: %s%s" % (p.stdout, p.stderr))
    arrays = numpy.load(out)
    if list(arrays.keys()) != list(TENSORS):
        fail("exported arrays %s" % list(arrays.keys()))
    for name, shape in TENSORS.items():
        if arrays[name].shape != shape or arrays[name].dtype != numpy.float32:
            fail("%s: %s %s" % (name, arrays[name].shape, arrays[name].dtype))
        if not numpy.isfinite(arrays[name]).all():
            fail(name + " has non-finite values")


def readme_commands(work):
    """The README's "Use it with your own training code" block as written, with this build, free
    ports and the test's folders: the three workers finish and numpy shows the five tensors."""
    text = open(os.path.join(SOURCE, "README.md")).read()
    section = text[text.index("## Use it with your own training code"):]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    for old, new in [("examples/own_model.layout", os.path.join(SOURCE, "examples", "own_model.layout")),
                     ("build/", BUILD + "/"),
                     ("50051", str(free_port())), ("50052", str(free_port())),
                     ("/tmp/own", os.path.join(work, "readme-own")),
                     ("own.npz", os.path.join(work, "readme-own.npz"))]:
        block = block.replace(old, new)
    p = subprocess.run(["bash", "-c", block], capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        fail("the README's commands failed (%d):\n%s\n%s" % (p.returncode, p.stdout[-3000:],
                                                              p.stderr[-3000:]))
    shapes = "{'hidden.weight': (1533, 453), 'hidden.bias': (1533,), 'out.weight': (1501, 1533), " \
             "'out.bias': (1501,), 'out.scale': (1501,)}"
    if shapes not in p.stdout or p.stdout.count("summary {") != 3:
        fail("the README's commands printed:\n" + p.stdout[-3000:])


def main():
    work = tempfile.mkdtemp(prefix="ps_own_model_")
    try:
        for mode in ("sync", "async"):
            run(mode, work)
        readme_commands(work)
    finally:
        if not os.environ.get("KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    print("own_model_test: OK")


if __name__ == "__main__":
    main()
