#!/usr/bin/python3
"""Memory of a ps-server under the HTTP/2 and compression levers of a hostile client (issue 10,
item 9), measured as the server's resident set size (VmRSS) after each attack:

  reset streams   N Pull calls on one connection, each cancelled right after it starts (RST_STREAM)
  open streams    N Pull calls on one connection left open (long-polls), then cancelled together
  gzip bomb       Join requests of a few KB that inflate to 4 MiB each, sent gzip-compressed

Loopback only. Usage: hostile_clients.py BUILD_DIR [--streams N] [--json PATH]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from harness.procs import binaries  # noqa: E402

import grpc  # noqa: E402


def rss_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def start_server(server, work):
    port_file = os.path.join(work, "port")
    log = open(os.path.join(work, "server.log"), "wb")
    proc = subprocess.Popen([server, "--listen=127.0.0.1:0", "--port_file=" + port_file,
                             "--mode=async", "--num_workers=4", "--max_pull_wait=60s"],
                            stderr=log)
    for _ in range(200):
        if os.path.exists(port_file) and open(port_file).read().strip():
            break
        time.sleep(0.05)
    return proc, "127.0.0.1:" + open(port_file).read().strip()


def pull_request_bytes(max_wait_ms):
    # PullRequest{have_version: 1 (field 2), max_wait_ms (field 4)}: a long-poll for version 2.
    out = bytearray([0x10, 0x01, 0x20])
    v = max_wait_ms
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def reset_streams(address, n):
    refused = 0
    with grpc.insecure_channel(address) as channel:
        pull = channel.unary_stream("/ps.v1.ParameterServer/Pull")
        for i in range(n):
            call = pull(pull_request_bytes(30000), timeout=60)
            call.cancel()
            if i % 5000 == 4999:
                print("  reset %d streams" % (i + 1), flush=True)
    return refused


def open_streams(address, n):
    with grpc.insecure_channel(address) as channel:
        pull = channel.unary_stream("/ps.v1.ParameterServer/Pull")
        calls = [pull(pull_request_bytes(30000), timeout=60) for _ in range(n)]
        time.sleep(3)
        for c in calls:
            c.cancel()


def gzip_bombs(address, n):
    codes = {}
    join = b"\x0a\x80\x80\x80\x02" + b"x" * (4 << 20)  # JoinRequest{worker_name: 4 MiB of 'x'}
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/ps.v1.ParameterServer/Join")
        for _ in range(n):
            try:
                call(join, timeout=30, compression=grpc.Compression.Gzip)
                codes["OK"] = codes.get("OK", 0) + 1
            except grpc.RpcError as e:
                codes[e.code().name] = codes.get(e.code().name, 0) + 1
    return codes


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("build")
    parser.add_argument("--streams", type=int, default=20000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    server = binaries(os.path.abspath(args.build))["ps-server"]
    work = tempfile.mkdtemp(prefix="ps_hostile_")
    proc, address = start_server(server, work)
    rows = []
    try:
        time.sleep(1)
        rows.append(("idle, after start", rss_mb(proc.pid), ""))
        t = time.time()
        reset_streams(address, args.streams)
        time.sleep(2)
        rows.append(("%d reset streams" % args.streams, rss_mb(proc.pid),
                     "%.1f s" % (time.time() - t)))
        open_streams(address, args.streams // 10)
        time.sleep(2)
        rows.append(("%d open streams, then cancelled" % (args.streams // 10), rss_mb(proc.pid), ""))
        codes = gzip_bombs(address, 20)
        time.sleep(1)
        rows.append(("20 gzip requests inflating to 4 MiB", rss_mb(proc.pid), str(codes)))
        alive = proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print("ps-server memory under hostile clients (VmRSS), %s" % address)
    print("| after | RSS MB | note |")
    print("|---|---|---|")
    for what, mb, note in rows:
        print("| %s | %.0f | %s |" % (what, mb, note))
    print("server alive throughout: %s" % alive)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"after": w, "rss_mb": m, "note": n} for w, m, n in rows], f, indent=1)


if __name__ == "__main__":
    main()
