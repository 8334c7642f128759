"""slowlink.torch against a real ps-server on loopback."""
import threading

import numpy
import pytest
import torch
from torch import nn

import slowlink
import slowlink.torch

EXACT = ("--update_encoding=fp32", "--pull_encoding=fp32")


def data(seed=0, n=64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def train(model, optimizer, steps, after_step=None, seed=0):
    x, y = data(seed)
    for i in range(steps):
        batch = slice(8 * (i % 8), 8 * (i % 8) + 8)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        loss.backward()
        optimizer.step()
        if after_step:
            after_step(loss.item())


def plain_sgd(steps):
    """The reference: mlp() trained by torch SGD (lr 0.1) alone."""
    model = mlp()
    train(model, torch.optim.SGD(model.parameters(), lr=0.1), steps)
    return model


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_same(a, b):
    """Equal up to float rounding: the server adds fl(y - x) to x, which is y within one ulp."""
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


def test_one_worker_and_h_1_reproduce_plain_torch_sgd(server):
    plain = plain_sgd(24)
    address = server("--mode=sync", "--num_workers=1", "--local_steps=1", *EXACT)
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with slowlink.torch.DiLoCo(model, slowlink.Session([address]), optimizer) as diloco:
        train(model, optimizer, 24, lambda loss: diloco.step(loss=loss, samples=8))
        assert diloco.rounds == 24 and diloco.local_steps == 1
    assert_same(params(model), params(plain))


def test_overlap_with_one_worker_is_still_plain_sgd(server):
    """With K = 1 the global model is the one sent, so x <- global + (x - sent) is x."""
    plain = plain_sgd(24)
    address = server("--mode=sync", "--num_workers=1", "--local_steps=4", *EXACT)
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    session = slowlink.Session([address])
    diloco = slowlink.torch.DiLoCo(model, session, optimizer, overlap=True)
    train(model, optimizer, 24, lambda loss: diloco.step(loss=loss, samples=8))
    diloco.close()
    assert diloco.rounds == 6 and session.counters()["updates"] == 6
    assert_same(params(model), params(plain))


def reference_outer_sgd(overlap, steps, h, eta):
    """DiLoCo as docs/python.md states it, in plain torch, for one worker and an outer SGD
    step g <- g + eta (sent - g): without overlap x <- g at every sync; with overlap the result
    of the sync in flight arrives H steps later, and x <- g + (x - sent)."""
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    vec = lambda: nn.utils.parameters_to_vector(model.parameters()).detach().clone()  # noqa
    put = lambda v: nn.utils.vector_to_parameters(v, model.parameters())  # noqa: E731
    state = {"g": vec(), "sent": None, "steps": 0}

    def arrive():
        state["g"] = state["g"] + eta * (state["sent"] - state["g"])
        put(state["g"] + (vec() - state["sent"]))

    def after_step(_):
        state["steps"] += 1
        if state["steps"] % h:
            return
        if not overlap:
            state["sent"] = vec()
            arrive()
            return
        if state["sent"] is not None:
            arrive()
        state["sent"] = vec()

    train(model, optimizer, steps, after_step)
    if overlap:
        with torch.no_grad():
            arrive()
    return params(model)


@pytest.mark.parametrize("overlap", [False, True])
def test_the_wrapper_applies_the_servers_outer_step_as_documented(server, overlap):
    address = server("--mode=sync", "--num_workers=1", "--local_steps=4", "--outer_optimizer=sgd",
                     "--outer_lr=0.5", "--outer_momentum=0", *EXACT)
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    diloco = slowlink.torch.DiLoCo(model, slowlink.Session([address]), optimizer, overlap=overlap)
    train(model, optimizer, 24, lambda loss: diloco.step(loss=loss, samples=8))
    diloco.close()
    expected = reference_outer_sgd(overlap, 24, 4, 0.5)
    for x, y in zip(params(model), expected):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    plain = plain_sgd(24)
    assert (params(model)[0] - params(plain)[0]).abs().max() > 1e-3  # the outer step mattered


def test_after_a_sync_every_worker_holds_the_same_parameters(server):
    address = server("--mode=sync", "--num_workers=2", "--local_steps=3",
                     "--outer_optimizer=nesterov")
    models = [mlp(seed) for seed in (1, 2)]  # different inits: the first joiner's wins
    after, errors = [None, None], []

    def worker(k):
        try:
            run_worker(k)
        except BaseException as e:  # reported by the test thread
            errors.append(e)

    def run_worker(k):
        model = models[k]
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        with slowlink.torch.DiLoCo(model, slowlink.Session([address], name=f"w{k}"),
                                   optimizer) as diloco:
            train(model, optimizer, 9, lambda loss: diloco.step(loss=loss, samples=8), seed=k)
            after[k] = (diloco.rounds, params(model), diloco.session.version)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads), errors
    assert after[0][0] == after[1][0] == 3
    assert after[0][2] == after[1][2] == 4  # version 1 + 3 rounds
    for a, b in zip(after[0][1], after[1][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_parameters_of_any_dtype_and_memory_layout_are_written_in_place(server):
    address = server("--mode=sync", "--num_workers=1", "--local_steps=1", *EXACT)
    model = nn.Linear(4, 3).double()
    model.weight = nn.Parameter(torch.randn(4, 3, dtype=torch.float64).t())  # not contiguous
    assert not model.weight.is_contiguous()
    storage = model.weight.data_ptr()
    session = slowlink.Session([address])
    diloco = slowlink.torch.DiLoCo(model, session, torch.optim.SGD(model.parameters(), lr=0.1))
    assert [n for n, _ in model.named_parameters()] == ["weight", "bias"]
    assert "weight [3, 4]" in repr(diloco.layout)
    with torch.no_grad():
        model.weight += 1.0
    diloco.step()
    assert model.weight.dtype == torch.float64 and model.weight.data_ptr() == storage
    global_model = torch.from_numpy(session.model())
    torch.testing.assert_close(model.weight.float().reshape(-1), global_model[:12])
    diloco.close()


def test_buffers_are_local_unless_asked(server):
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4))
    # 36 parameters; with buffers also running_mean and running_var (num_batches_tracked is
    # an integer, and stays local).
    assert slowlink.torch.layout_of(model).size == 36
    assert slowlink.torch.layout_of(model, sync_buffers=True).size == 44
    address = server("--mode=sync", "--num_workers=1", "--local_steps=2", *EXACT)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with slowlink.torch.DiLoCo(model, slowlink.Session([address]), optimizer,
                               sync_buffers=True) as diloco:
        train(model, optimizer, 4, lambda loss: diloco.step(loss=loss, samples=8))
        flat = diloco.session.model()
    mean = model[1].running_mean
    numpy.testing.assert_array_equal(flat[36:40], mean.numpy())  # after the parameters


def test_gradient_mode_is_server_side_sgd(server):
    plain = plain_sgd(16)
    address = server("--mode=sync", "--num_workers=1", "--update=gradient",
                     "--server_learning_rate=0.1", "--lr_schedule=constant", *EXACT)
    model = mlp()
    x, y = data()
    with slowlink.torch.GradientSync(model, slowlink.Session([address])) as sync:
        for i in range(16):
            batch = slice(8 * (i % 8), 8 * (i % 8) + 8)
            model.zero_grad()
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            sync.step(loss=loss.item(), samples=8)
    assert_same(params(model), params(plain))


def test_the_wrong_wrapper_for_the_run_is_refused(server):
    address = server("--mode=sync", "--num_workers=1", "--update=gradient",
                     "--lr_schedule=constant")
    with pytest.raises(ValueError, match="GradientSync"):
        slowlink.torch.DiLoCo(mlp(), slowlink.Session([address]))
    status = slowlink.Session([address]).server_status()
    assert status["members"] == [] and not status["has_model"]  # refused before joining
