"""Whole jobs: the CNN example through its launcher, a worker killed mid-run, and a torch worker
beside a C++ ps-worker in one run. Real processes, a real ps-server, Debian's Fashion-MNIST."""
import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest
import torch
from torch import nn

import slowlink
import slowlink.torch
from harness.procs import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "torch_cnn.py")
sys.path.insert(0, os.path.join(ROOT, "examples"))
import torch_quickstart  # noqa: E402  (its Fashion-MNIST loader)


# Overlap with plain averaging: with outer Nesterov (momentum 0.9) the one round of staleness
# made this short run fall back to 0.41 (docs/python.md).
OVERLAP = ["--overlap", "--server_flag=--outer_optimizer=average"]


@pytest.mark.parametrize("overlap", [[], OVERLAP], ids=["blocking", "overlap"])
def test_a_short_cnn_run_through_the_launcher_learns(request, tmp_path, overlap):
    """With --overlap, worker 0's reports run while a sync is in flight (they wait for it)."""
    out = tmp_path / "job"
    subprocess.run([sys.executable, EXAMPLE, "--launch", "2",
                    "--ps_server", request.config.getoption("--server"), "--out", str(out),
                    "--train_limit", "4000", "--test_limit", "1000", "--epochs", "2",
                    "--local_steps", "8", "--eval_every", "2", *overlap], check=True,
                   timeout=300)
    summary = json.load(open(out / "summary.json"))
    assert summary["test_accuracy"] > 0.6  # from 0.1 at the start
    # 4-bit QSGD both ways (8x less per message; the first model goes up and down in fp32,
    # which in a run of 7 rounds is a good part of the bytes)
    assert summary["bytes_up_fp32"] > 2.5 * summary["bytes_up"]
    assert summary["bytes_down_fp32"] > 2.5 * summary["bytes_down"]
    # 2 x (2000 // 64) // 8 rounds; with overlap one more sync, sent as the last round ends
    assert [w["rounds"] for w in summary["workers"]] == ([8, 8] if overlap else [7, 7])


def test_the_launcher_with_gradient_runs_parallel_sgd(request, tmp_path):
    """--gradient: GradientSync pushes a gradient every step and the server takes the step."""
    out = tmp_path / "job"
    subprocess.run([sys.executable, EXAMPLE, "--launch", "2", "--gradient", "--server_lr", "0.3",
                    "--ps_server", request.config.getoption("--server"), "--out", str(out),
                    "--train_limit", "4000", "--test_limit", "1000", "--epochs", "2",
                    "--eval_every", "20"], check=True, timeout=300)
    summary = json.load(open(out / "summary.json"))
    server = json.load(open(out / "server.json"))
    assert server["update"] == "gradient"
    # a round per step: 2 x (4000 // 2 // 64), and the server's version moved once per round
    assert [w["rounds"] for w in summary["workers"]] == [62, 62]
    assert server["rounds"] == 62
    assert summary["test_accuracy"] > 0.6  # from 0.1 at the start


def worker(address, rank, out, *flags):
    return subprocess.Popen(
        [sys.executable, EXAMPLE, "--servers", address, "--rank", str(rank), "--quiet",
         "--train_limit", "3000", "--test_limit", "500", "--epochs", "6",
         "--summary_json", str(out / f"worker-{rank}.json"), *flags],
        stdout=subprocess.DEVNULL, stderr=open(out / f"worker-{rank}.log", "w"))


def test_a_worker_killed_mid_run_does_not_stop_the_others(server, tmp_path):
    address = server("--mode=sync", "--num_workers=3", "--local_steps=4", "--lease=2s",
                     "--outer_optimizer=nesterov", "--update_encoding=qsgd", "--bits=4")
    procs = [worker(address, k, tmp_path) for k in range(3)]
    watcher = slowlink.Session([address])
    deadline = time.time() + 120
    while int(watcher.server_status()["version"]) < 6 and time.time() < deadline:
        time.sleep(0.1)
    assert int(watcher.server_status()["version"]) >= 6, "the run did not start"
    procs[2].kill()  # SIGKILL: no Leave; the server finds out when its lease runs out
    assert [p.wait(timeout=240) for p in procs[:2]] == [0, 0]
    for k in range(2):
        summary = json.load(open(tmp_path / f"worker-{k}.json"))
        assert summary["rounds"] == 22 and summary["test_accuracy"] > 0.5
    status = watcher.server_status()
    assert len(status["members"]) == 0 and int(status["version"]) == 23


class Softmax(nn.Module):
    """The built-in softmax model's layout ("weights" [10, 784], "bias" [10]), in torch."""

    def __init__(self):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(10, 784))
        self.bias = nn.Parameter(torch.zeros(10))

    def forward(self, x):
        return x @ self.weights.t() + self.bias


def pixels(split, limit):
    """The first `limit` images as the built-in model sees them (pixels / 255), and labels."""
    x, y = torch_quickstart.fashion_mnist(split)
    return x[:limit], y[:limit]


def torch_softmax_worker(address, result):
    """A torch process with the server's own settings (step size, batch, H, rounds)."""
    try:
        train_torch_softmax(address, result)
    except BaseException as e:  # reported by the test thread
        result["error"] = e


def train_torch_softmax(address, result):
    model = Softmax()
    session = slowlink.Session([address], name="torch", rank=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    diloco = slowlink.torch.DiLoCo(model, session, optimizer)
    config = diloco.run["config"]
    for group in optimizer.param_groups:
        group["lr"] = config["learning_rate"]
    x, y = pixels("train", 6000)
    x, y = x[1::2], y[1::2]
    batch, rounds = config["batch_size"], int(config["rounds"])
    step = 0
    while diloco.rounds < rounds:
        i = (step * batch) % (len(x) - batch)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x[i:i + batch]), y[i:i + batch])
        loss.backward()
        optimizer.step()
        diloco.step(loss=loss.item(), samples=batch)
        step += 1
    test_x, test_y = pixels("test", 2000)
    result["accuracy"] = (model(test_x).argmax(1) == test_y).float().mean().item()
    result["rounds"] = diloco.rounds
    diloco.close()


def test_a_torch_worker_and_a_cpp_worker_train_one_model(request, server, tmp_path):
    cpp_worker = request.config.getoption("--worker")
    if not cpp_worker:
        pytest.skip("--worker (the ps-worker binary) not given")
    address = server("--mode=sync", "--num_workers=2", "--model=softmax", "--input_dim=784",
                     "--num_classes=10", "--local_steps=8", "--learning_rate=0.2",
                     "--lr_schedule=constant", "--batch_size=32", "--rounds=20",
                     "--update_encoding=qsgd", "--bits=4", "--error_feedback")
    result = {}
    thread = threading.Thread(target=torch_softmax_worker, args=(address, result))
    thread.start()
    cpp = subprocess.run([cpp_worker, f"--servers={address}", "--rank=0", "--name=cpp",
                          "--train_limit=6000", "--test_limit=2000", "--quiet",
                          f"--summary_json={tmp_path}/cpp.json"],
                         capture_output=True, text=True, timeout=240)
    thread.join(timeout=240)
    assert not thread.is_alive() and "error" not in result, result.get("error")
    assert cpp.returncode == 0, cpp.stderr
    assert result["rounds"] == 20
    status = slowlink.Session([address]).server_status()
    assert int(status["version"]) == 21 and int(status["rounds_closed_complete"]) == 20
    cpp_summary = json.load(open(tmp_path / "cpp.json"))
    assert cpp_summary["test_accuracy"] > 0.7 and result["accuracy"] > 0.7
    # Both ended on the same global model, so they score it the same on the same images.
    assert abs(cpp_summary["test_accuracy"] - result["accuracy"]) < 1e-6


def test_the_readme_pytorch_commands_as_written(request, tmp_path):
    """The README's PyTorch block with this build and a free port: both workers finish and say
    what they reached."""
    build = os.path.dirname(os.path.dirname(os.path.abspath(request.config.getoption("--server"))))
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("## PyTorch"):]
    block = re.search(r"```\n(make python.*?)```", section, re.S).group(1)
    # `make python` is done already: ctest runs after the build
    block = block.split("\n", 1)[1]
    port = str(free_port())
    for old, new in [("build/", build + "/"), ("examples/", ROOT + "/examples/"),
                     ("50051", port)]:
        block = block.replace(old, new)
    p = subprocess.run(["bash", "-c", block], capture_output=True, text=True, timeout=600,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    reached = [float(a) for a in re.findall(r"test accuracy (\d\.\d+)", p.stdout)]
    assert len(reached) == 2 and min(reached) > 0.8, p.stdout
