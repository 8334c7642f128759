"""The PyTorch CNN of examples/torch_cnn.py as an experiment's job: 4 torch worker processes
(slowlink.torch.DiLoCo with inner Adam, or GradientSync with the server's SGD step) and a real
ps-server, started by the example's own launcher with the experiment's server flags (later flags
win). The learning curve is worker 0's progress lines: test accuracy on the first TEST_LIMIT
test images every few rounds."""
import json
import os
import re
import subprocess
import tempfile

import runner

K, BATCH, TEST_LIMIT = 4, 64, 2000
STEPS_PER_EPOCH = 60000 // K // BATCH  # of each worker's shard, as the example counts them
LINE = re.compile(r"round\s+(\d+)/(\d+)\s+loss \S+\s+test accuracy ([0-9.]+)\s+sent ([0-9.]+) MB")


def run(local_steps, steps, server_flags, evals=16, gradient_lr=None):
    """`steps` local steps per worker, H = `local_steps`; returns (curve rows, summary). With
    `gradient_lr`, parallel SGD instead: a gradient push every step (H = 1), server step size
    gradient_lr."""
    work = tempfile.mkdtemp(prefix="ps-exp-cnn-")
    rounds = steps // local_steps
    argv = ["/usr/bin/python3", os.path.join(runner.ROOT, "examples", "torch_cnn.py"),
            "--launch", str(K), "--ps_server", runner.BINARIES["ps-server"], "--out", work,
            # Half a step more: the example truncates epochs * steps_per_epoch to whole steps.
            "--local_steps", str(local_steps), "--epochs", repr((steps + 0.5) / STEPS_PER_EPOCH),
            "--batch", str(BATCH), "--test_limit", str(TEST_LIMIT),
            "--eval_every", str(max(1, rounds // evals))]
    if gradient_lr is not None:
        argv += ["--gradient", "--server_lr", repr(gradient_lr)]
    # No round deadline (the example's is 20 s): a round of a loaded machine must not close
    # without a worker's update, or the comparison would not be of the same algorithm.
    argv += ["--server_flag=" + f for f in server_flags + ["--round_deadline=0"]]
    env = dict(os.environ, PYTHONPATH=os.path.join(runner.BUILD, "python"))
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError("torch_cnn.py failed:\n%s\n%s" % (done.stdout[-2000:],
                                                              done.stderr[-2000:]))
    curve = [{"round": int(m.group(1)), "test_accuracy": float(m.group(3)),
              "bytes_sent": float(m.group(4)) * 1e6} for m in LINE.finditer(done.stdout)]
    with open(os.path.join(work, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(work, "server.json")) as f:
        server = json.load(f)
    if int(server.get("rounds_closed_by_deadline", 0)):
        raise RuntimeError("rounds closed without every worker: %s" % work)
    return curve, summary
