#!/usr/bin/python3
"""A plain PyTorch training loop made distributed with slowlink: the lines marked `# slowlink`
are all it takes (README, "PyTorch"). Any model, any inner optimizer; here a small MLP on
Fashion-MNIST from Debian's dataset-fashion-mnist files.

  PYTHONPATH=build/python /usr/bin/python3 examples/torch_quickstart.py --servers 127.0.0.1:50051
"""
import argparse
import gzip

import numpy
import torch
from torch import nn

import slowlink  # slowlink
import slowlink.torch  # slowlink


def fashion_mnist(split, data="/usr/share/datasets/fashion-mnist"):
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(f"{data}/{prefix}-images-idx3-ubyte.gz") as f:
        x = numpy.frombuffer(f.read(), numpy.uint8, offset=16).reshape(-1, 784)
    with gzip.open(f"{data}/{prefix}-labels-idx1-ubyte.gz") as f:
        y = numpy.frombuffer(f.read(), numpy.uint8, offset=8)
    return torch.from_numpy(x / numpy.float32(255)), torch.from_numpy(y.astype(numpy.int64))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--servers", default="127.0.0.1:50051")
    p.add_argument("--steps", type=int, default=800)
    args = p.parse_args()
    torch.manual_seed(0)
    x, y = fashion_mnist("train")
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    session = slowlink.Session(args.servers.split(","))  # slowlink
    diloco = slowlink.torch.DiLoCo(model, session, optimizer)  # slowlink: joins, H from server
    rank, k = diloco.run["rank"], diloco.run["num_workers"]  # slowlink: this process's shard
    x, y = x[rank::k], y[rank::k]  # slowlink

    for step in range(args.steps):
        batch = torch.randint(0, len(x), (64,))
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        loss.backward()
        optimizer.step()
        diloco.step(loss=loss.item(), samples=64)  # slowlink: every H steps, a sync
    diloco.close()  # slowlink: leave the run

    test_x, test_y = fashion_mnist("test")
    with torch.no_grad():
        accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    print(f"worker {rank}: test accuracy {accuracy:.4f}, sent {session.counters()['bytes_sent']:,}"
          f" bytes after {diloco.rounds} syncs")


if __name__ == "__main__":
    main()
