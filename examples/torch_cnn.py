#!/usr/bin/python3
"""A small CNN on Fashion-MNIST, trained by K PyTorch processes through a ps-server with
DiLoCo: H local Adam steps per round, outer Nesterov on the server, 4-bit QSGD both ways.

  examples/torch_cnn.py --launch 4 --ps_server build/server/ps-server   # the whole job
  examples/torch_cnn.py --servers 127.0.0.1:50051                      # one worker

With --gradient it is parallel SGD instead: every step's gradient is pushed (GradientSync) and
the server takes the SGD step (--server_lr), for comparison with DiLoCo.

The data are Debian's dataset-fashion-mnist files (/usr/share/datasets/fashion-mnist); nothing is
downloaded. `make demo-torch` runs the first line. See docs/python.md.
"""
import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy
import torch
from torch import nn

import slowlink
import slowlink.torch

DATA = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530  # of the training images' pixels in [0, 1]


def load(data_dir, split, limit=0):
    """(images [N, 1, 28, 28] float32 standardised, labels [N] int64) from the idx.gz files."""
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz")) as f:
        images = numpy.frombuffer(f.read(), numpy.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz")) as f:
        labels = numpy.frombuffer(f.read(), numpy.uint8, offset=8)
    if limit:
        images, labels = images[:limit], labels[:limit]
    x = (torch.from_numpy(images.astype(numpy.float32)) / 255.0 - MEAN) / STD
    return x, torch.from_numpy(labels.astype(numpy.int64))


def cnn():
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def evaluate(model, x, y, batch=1000):
    """(mean loss, accuracy) on (x, y)."""
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = model(x[i:i + batch])
            loss += nn.functional.cross_entropy(out, y[i:i + batch], reduction="sum").item()
            correct += (out.argmax(1) == y[i:i + batch]).sum().item()
    model.train()
    return loss / len(x), correct / len(x)


def shard(x, y, rank, workers, seed):
    """This worker's part of an IID split, the same permutation on every worker."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    mine = order[rank::workers]
    return x[mine], y[mine]


def train(args):
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    session = slowlink.Session(args.servers.split(","), name=args.name, rank=args.rank)
    model = cnn()
    x, y = load(args.data_dir, "train", args.train_limit)
    test_x, test_y = load(args.data_dir, "test", args.test_limit)
    if args.gradient:  # the server steps; a round is one step
        optimizer, diloco = None, slowlink.torch.GradientSync(model, session)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        diloco = slowlink.torch.DiLoCo(model, session, optimizer, overlap=args.overlap)
    rank, workers = diloco.run["rank"], diloco.run["num_workers"] or 1
    # The same number of steps on every worker (sync rounds need it), even if shards differ by one.
    steps_per_epoch = len(x) // workers // args.batch
    x, y = shard(x, y, rank, workers, args.seed)
    rounds = int(args.epochs * steps_per_epoch) // getattr(diloco, "local_steps", 1)
    diloco.total_rounds = rounds
    progress = Progress(rank == 0 and not args.quiet, rounds, session)
    generator = torch.Generator().manual_seed(args.seed + rank)
    while diloco.rounds < rounds:
        order = torch.randperm(len(x), generator=generator)
        for i in range(steps_per_epoch):
            batch = order[i * args.batch:(i + 1) * args.batch]
            model.zero_grad()
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            if optimizer is not None:
                optimizer.step()
            if diloco.step(loss=loss.item(), samples=len(batch)) is not None:
                progress.round(diloco, loss.item(), model, test_x, test_y, args.eval_every)
            if diloco.rounds >= rounds:
                break
    diloco.close()  # waits for an overlapped sync: the model is the global one
    test_loss, accuracy = evaluate(model, test_x, test_y)
    summary = dict(rank=rank, rounds=diloco.rounds, test_images=len(test_x), test_loss=test_loss,
                   test_accuracy=accuracy, **session.counters())
    progress.done(summary)
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary, f, indent=1)


class Progress:
    """Worker 0's progress lines: round, loss, test accuracy now and then, bytes sent."""

    def __init__(self, show, rounds, session):
        self.show, self.rounds, self.session = show, rounds, session
        self.start = time.time()

    def round(self, diloco, loss, model, test_x, test_y, every):
        r = diloco.rounds
        if not self.show or (r % every and r != self.rounds):
            return
        _, accuracy = evaluate(model, test_x, test_y)
        self.session.report(self.session.version, 0.0, accuracy)
        c = self.session.counters()
        print(f"round {r:4d}/{self.rounds}  loss {loss:.3f}  test accuracy {accuracy:.4f}  "
              f"sent {c['bytes_sent'] / 1e6:.2f} MB ({c['raw_bytes_sent'] / max(1, c['bytes_sent']):.1f}x "
              f"less than fp32)  {time.time() - self.start:.0f} s", flush=True)

    def done(self, summary):
        if self.show:
            print(f"worker 0 done: test accuracy {summary['test_accuracy']:.4f} after "
                  f"{summary['rounds']} rounds", flush=True)


def server_flags(args, work):
    """The ps-server of the job: sync DiLoCo with outer Nesterov (or, with --gradient, the
    server's SGD step on the averaged gradient), 4-bit QSGD both ways, leases and a round
    deadline so that a worker that dies does not stop the others."""
    if args.gradient:  # the server's step-size schedule runs over the workers' rounds
        steps_per_epoch = (args.train_limit or 60000) // args.launch // args.batch
        update = ["--update=gradient", f"--server_learning_rate={args.server_lr}",
                  f"--rounds={int(args.epochs * steps_per_epoch)}"]
    else:
        update = ["--update=delta", f"--local_steps={args.local_steps}",
                  "--outer_optimizer=nesterov", f"--outer_lr={args.outer_lr}",
                  "--outer_momentum=0.9"]
    return [args.ps_server, "--listen=127.0.0.1:0", f"--port_file={work}/port",
            "--mode=sync", f"--num_workers={args.launch}"] + update + [
            "--update_encoding=qsgd", f"--bits={args.bits}", "--error_feedback",
            "--pull_encoding=qsgd", f"--pull_bits={args.bits}",
            "--lease=10s", "--round_deadline=20s", "--min_quorum=1",
            f"--summary_json={work}/server.json"] + args.server_flag


def launch(args):
    """Starts a ps-server and K workers of this script on loopback; prints the summary."""
    work = args.out or tempfile.mkdtemp(prefix="torch_cnn.")
    os.makedirs(work, exist_ok=True)
    for old in os.listdir(work):  # a port file or summary of an earlier run would mislead
        if old.endswith((".json", ".log")) or old == "port":
            os.remove(os.path.join(work, old))
    start = time.time()
    server = subprocess.Popen(server_flags(args, work), stdout=subprocess.DEVNULL,
                              stderr=open(f"{work}/server.log", "w"))
    try:
        address = wait_for_port(f"{work}/port", server, work)
        print(f"demo-torch: ps-server on {address}; {args.launch} workers, logs in {work}",
              flush=True)
        workers = [start_worker(args, address, k, work) for k in range(args.launch)]
        failed = [k for k, w in enumerate(workers) if w.wait() != 0]
    finally:
        server.terminate()
        server.wait(timeout=60)
    if failed:
        sys.exit(f"demo-torch: worker(s) {failed} failed; see {work}/worker-*.log")
    print_summary(work, args.launch, time.time() - start)


def wait_for_port(port_file, server, work):
    for _ in range(600):
        if os.path.exists(port_file) and open(port_file).read().strip():
            return "127.0.0.1:" + open(port_file).read().strip()
        if server.poll() is not None:
            sys.exit(open(f"{work}/server.log").read())
        time.sleep(0.05)
    sys.exit("demo-torch: the ps-server did not start")


def start_worker(args, address, k, work):
    command = [sys.executable, os.path.abspath(__file__), "--servers", address, "--rank", str(k),
               "--name", f"torch-{k}", "--summary_json", f"{work}/worker-{k}.json",
               "--epochs", str(args.epochs), "--batch", str(args.batch), "--lr", str(args.lr),
               "--data_dir", args.data_dir, "--train_limit", str(args.train_limit),
               "--test_limit", str(args.test_limit), "--eval_every", str(args.eval_every)]
    command += ["--overlap"] * args.overlap + ["--gradient"] * args.gradient
    log = open(f"{work}/worker-{k}.log", "w")
    if k == 0:  # worker 0's progress goes to the terminal too
        return subprocess.Popen(command, stdout=None, stderr=log)
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def print_summary(work, workers, seconds):
    server = json.load(open(f"{work}/server.json"))
    finals = [json.load(open(f"{work}/worker-{k}.json")) for k in range(workers)
              if os.path.exists(f"{work}/worker-{k}.json")]
    up, up_raw = server["bytes_received"], server["raw_bytes_received"]
    down, down_raw = server["bytes_sent"], server["raw_bytes_sent"]
    accuracy = finals[0]["test_accuracy"]
    algorithm = ("parallel SGD with gradient pushes" if server["update"] == "gradient" else
                 f"DiLoCo with outer {server['outer_optimizer']}")
    print(f"\ndemo-torch summary ({workers} workers, {algorithm}, "
          f"{json.load(open(f'{work}/worker-0.json'))['rounds']} rounds)")
    print(f"  test accuracy      {accuracy:.4f} on {finals[0]['test_images']:,} test images")
    print(f"  bytes up (pushes)  {up / 1e6:8.2f} MB  vs fp32 {up_raw / 1e6:8.2f} MB  "
          f"({up_raw / max(up, 1):.1f}x less)")
    print(f"  bytes down (pulls) {down / 1e6:8.2f} MB  vs fp32 {down_raw / 1e6:8.2f} MB  "
          f"({down_raw / max(down, 1):.1f}x less)")
    print(f"  wall time          {seconds:.0f} s")
    with open(f"{work}/summary.json", "w") as f:
        json.dump(dict(test_accuracy=accuracy, bytes_up=up, bytes_up_fp32=up_raw,
                       bytes_down=down, bytes_down_fp32=down_raw, wall_seconds=seconds,
                       workers=finals), f, indent=1)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--launch", type=int, default=0, help="start a ps-server and K workers")
    p.add_argument("--ps_server", default="build/server/ps-server")
    p.add_argument("--server_flag", action="append", default=[],
                   help="one more ps-server flag (repeat), after the job's own")
    p.add_argument("--out", default="", help="--launch: folder for logs and summaries")
    p.add_argument("--servers", default="127.0.0.1:50051", help="shard addresses, comma-separated")
    p.add_argument("--rank", type=int, default=-1)
    p.add_argument("--name", default="torch")
    p.add_argument("--data_dir", default=DATA)
    p.add_argument("--train_limit", type=int, default=0, help="first N training images (0 = all)")
    p.add_argument("--test_limit", type=int, default=0)
    p.add_argument("--epochs", type=float, default=6.0, help="passes over each worker's shard")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="inner Adam step size")
    p.add_argument("--local_steps", type=int, default=16, help="--launch: H")
    p.add_argument("--outer_lr", type=float, default=0.7, help="--launch: outer Nesterov step")
    p.add_argument("--bits", type=int, default=4, help="--launch: QSGD bits both ways")
    p.add_argument("--eval_every", type=int, default=20, help="rounds between worker 0's evals")
    p.add_argument("--overlap", action="store_true", help="sync behind the next H steps")
    p.add_argument("--gradient", action="store_true",
                   help="push every step's gradient; the server takes the SGD step")
    p.add_argument("--server_lr", type=float, default=0.1, help="--launch --gradient: its step")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--seed", type=int, default=1, help="model init, data split and order")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--summary_json", default="")
    args = p.parse_args()
    if args.launch:
        launch(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
