"""PyTorch integration: Local SGD / DiLoCo and gradient messages for a torch training loop.

Plain Python over the binding (slowlink._native): the protocol, the codecs and the recovery
from stale refusals and restarted servers are the C++ client library's. See docs/python.md.

    session = slowlink.Session(["127.0.0.1:50051"])
    with slowlink.torch.DiLoCo(model, session) as diloco:
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            diloco.step(loss=loss.item(), samples=len(x))   # every H steps: a sync
"""
import threading

import numpy
import torch

from slowlink._native import Layout


def _tensors(module, sync_buffers):
    """(name, tensor) in layout order: the parameters, then the floating buffers if asked."""
    named = list(module.named_parameters())
    if sync_buffers:
        named += [(name, b) for name, b in module.named_buffers() if b.is_floating_point()]
    return named


def layout_of(module, sync_buffers=False):
    """The Layout of a module: its named parameters (and floating buffers), in module order."""
    return _layout(_tensors(module, sync_buffers))


def _layout(named):
    return Layout([(name, tuple(t.shape)) for name, t in named])


class _FlatModel:
    """The module's tensors gathered into one float32 numpy array and scattered back, in place,
    whatever each tensor's dtype, device and memory layout."""

    def __init__(self, tensors):
        self.tensors = [t for _, t in tensors]
        sizes = [t.numel() for t in self.tensors]
        self.offsets = numpy.cumsum([0] + sizes)
        self.size = int(self.offsets[-1])

    def gather(self, out, tensors=None):
        """Copies the tensors (or others of the same shapes, e.g. their gradients) into out."""
        flat = torch.from_numpy(out)  # shares out's memory
        with torch.no_grad():
            for t, a, b in zip(tensors or self.tensors, self.offsets[:-1], self.offsets[1:]):
                flat[a:b].copy_(t.detach().reshape(-1))
        return out

    def scatter(self, values):
        flat = torch.from_numpy(values)
        with torch.no_grad():
            for t, a, b in zip(self.tensors, self.offsets[:-1], self.offsets[1:]):
                t.copy_(flat[a:b].view(t.shape))


class _Wrapper:
    """What DiLoCo and GradientSync share: the join, the statistics of the steps since the last
    message, and leaving."""

    def __init__(self, module, session, optimizer, sync_buffers, total_rounds, gradient):
        # Checked before joining: a process that joined the wrong kind of run would hold a
        # member's place (and a sync round open) until its lease ran out.
        kind = session.server_status()["config"]["update_kind"]
        if (kind == "UPDATE_KIND_GRADIENT") != gradient:
            raise ValueError("the server expects gradients (--update=gradient): use GradientSync"
                             if not gradient else
                             "the server expects model changes (--update=delta): use DiLoCo")
        self.module = module
        self.session = session
        self.optimizer = optimizer
        self.total_rounds = total_rounds
        named = _tensors(module, sync_buffers)
        self._flat = _FlatModel(named)
        self.layout = _layout(named)
        self._params = self._flat.gather(numpy.empty(self._flat.size, dtype=numpy.float32))
        # A server without a model takes ours; every process then starts from the global one.
        self.run = session.join(self.layout, self._params)
        self._params[:] = session.model()
        self._flat.scatter(self._params)
        self.rounds = 0
        self.last_round = None
        self._loss_sum = 0.0
        self._samples = 0

    def _note(self, loss, samples):
        self._loss_sum += float(loss if loss is not None else 0.0) * samples
        self._samples += samples

    def _info(self):
        """sample_count, train_loss, learning_rate of the steps since the last message."""
        samples = max(self._samples, 1)
        lr = self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else 0.0
        info = dict(sample_count=samples, train_loss=self._loss_sum / samples,
                    learning_rate=float(lr), round=self.rounds + 1,
                    total_rounds=self.total_rounds)
        self._loss_sum, self._samples = 0.0, 0
        return info

    def counters(self):
        return self.session.counters()

    def close(self):
        """Leaves the run (every shard)."""
        self.session.leave()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class DiLoCo(_Wrapper):
    """Local SGD / DiLoCo: every `local_steps` (H) calls of step(), the change of the module's
    parameters since the last sync is pushed (compressed as the server asks) and the new global
    parameters are written back into the module, in place. The outer optimizer (plain
    averaging, Nesterov, SlowMo...) is the server's (`ps-server --outer_optimizer`).

    local_steps: H; None = the server's --local_steps.
    sync_buffers: False (default) keeps buffers such as BatchNorm's running statistics local to
        each process; True puts the floating buffers into the layout, averaged like parameters
        (and moved by the server's outer optimizer like them).
    overlap: False (default) blocks in step() for the whole sync. True runs the sync on a
        background thread while the next H steps run: the global model that comes back is
        applied one round late, with the steps taken meanwhile added on top (x <- global +
        (x - x_sent)), so each pushed change was computed from a model one round behind the
        global one. This hides the network time at the price of that one round of staleness.
        An error of a background sync is raised by the step() that next syncs (or by close()).
    optimizer: the inner optimizer, read for its learning rate (sent with each update, which
        SlowMo needs); its state (momentum) stays local and is kept across syncs.
    total_rounds: the run's number of syncs, if known (DQ-SGD's bit schedule uses it).
    """

    def __init__(self, module, session, optimizer=None, local_steps=None, sync_buffers=False,
                 overlap=False, total_rounds=0):
        super().__init__(module, session, optimizer, sync_buffers, total_rounds, gradient=False)
        self.local_steps = int(local_steps or self.run["local_steps"] or 1)
        self.overlap = overlap
        self._steps = 0
        # overlap: the parameters as sent (kept), the array the session syncs in the background
        # (its result), both reused every round; and (thread, result holder) while in flight.
        self._sent = numpy.empty_like(self._params) if overlap else None
        self._in_flight_buffer = numpy.empty_like(self._params) if overlap else None
        self._inflight = None

    def step(self, loss=None, samples=1):
        """Call once after each optimizer.step(). Syncs every local_steps calls; returns the
        sync's result (a dict, see Session.sync) when one completed, else None."""
        self._note(loss, samples)
        self._steps += 1
        if self._steps % self.local_steps:
            return None
        return self._overlapped_sync() if self.overlap else self.sync()

    def sync(self):
        """Synchronises now (blocking): push the change, write the global parameters back."""
        self._wait_inflight()
        self._flat.gather(self._params)
        self.last_round = self.session.sync(self._params, **self._info())
        self._flat.scatter(self._params)
        self.rounds += 1
        return self.last_round

    def _overlapped_sync(self):
        done = self._wait_inflight()
        if done is None:  # else _wait_inflight left the module's parameters in _params
            self._flat.gather(self._params)
        buffer = self._in_flight_buffer
        numpy.copyto(buffer, self._params)
        numpy.copyto(self._sent, self._params)
        info = self._info()
        holder = {}

        def run():
            try:
                holder["result"] = self.session.sync(buffer, **info)
            except BaseException as e:  # re-raised on the training thread
                holder["error"] = e

        thread = threading.Thread(target=run, name="slowlink-sync", daemon=True)
        thread.start()
        self._inflight = (thread, holder)
        return done

    def _wait_inflight(self):
        """Waits for the sync in flight and applies its global model under the steps taken
        since it was sent. Returns its result, or None if none was in flight."""
        if self._inflight is None:
            return None
        thread, holder = self._inflight
        thread.join()
        self._inflight = None
        if "error" in holder:
            raise holder["error"]
        self._flat.gather(self._params)
        step = numpy.subtract(self._in_flight_buffer, self._sent, out=self._sent)
        self._params += step  # global + (x - x_sent)
        self._flat.scatter(self._params)
        self.rounds += 1
        self.last_round = holder["result"]
        return self.last_round

    def close(self):
        """Waits for a sync in flight, applies it, and leaves the run (also when that sync
        failed: its error is raised after leaving). Steps taken since the last sync are not
        pushed: call sync() first to include them."""
        try:
            self._wait_inflight()
        finally:
            super().close()


class GradientSync(_Wrapper):
    """Gradient messages every step (for comparison with DiLoCo; like a DDP communication hook
    that quantizes): call step() after loss.backward() instead of optimizer.step(). The
    gradient is pushed (compressed as the server asks), the server averages and applies it
    with its own step size (ps-server --update=gradient --server_learning_rate), and the new
    global parameters are written into the module. Parameters without a gradient push zeros.
    """

    def __init__(self, module, session, total_rounds=0):
        # Buffers have no gradients: they stay local (syncing them would reset them each step).
        super().__init__(module, session, None, False, total_rounds, gradient=True)
        self._grad = numpy.zeros(self._flat.size, dtype=numpy.float32)

    def step(self, loss=None, samples=1):
        """Pushes the gradients of the last backward(), applies the new global model. Returns
        the push's result (a dict, see Session.push)."""
        self._note(loss, samples)
        grads = [t.grad if t.grad is not None else torch.zeros_like(t)
                 for t in self._flat.tensors]
        self._flat.gather(self._grad, grads)
        self.last_round = self.session.push(self._grad, **self._info())
        self._params[:] = self.session.model()
        self._flat.scatter(self._params)
        self.rounds += 1
        return self.last_round

