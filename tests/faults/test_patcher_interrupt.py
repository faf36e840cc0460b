"""Patcher under KeyboardInterrupt/SystemExit at random points of apply(): restore() is always bit-exact.

The injector is a sys.settrace hook that raises at the N-th traced Python event inside apply() (N drawn
uniformly over the events of an uninterrupted run of the same apply), so the interrupt lands anywhere:
while planning, cloning a backup, computing a delta, writing a layer for the first time, rewriting or
restoring one.
"""

from __future__ import annotations

import random
import sys

import pytest
import torch

from lib_lora.host import Host
from lib_lora.patcher import ActiveLora, Patcher
from tests.engine_helpers import SD15_LAYERS, make_net, reference_weights, snapshot, tol
from tests.models import build_model, model_state, same_state

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              # an interrupt that lands in a generator being finalised is reported by Python as ignored
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]

# Small layers only (many traced trials): attention, a 1×1 and a small 3×3 conv, norms, a TE layer.
LAYERS = tuple(l for l in SD15_LAYERS if not l.endswith(("in_layers.2", "time_embed.0", "ff.net.2")))
SPECS = [("lora", dict(algo="lora", rank=4)), ("locon", dict(algo="locon", rank=4, family="lycoris")),
         ("loha", dict(algo="loha", rank=4, family="lycoris")), ("lokr", dict(algo="lokr", rank=4, family="lycoris")),
         ("dora", dict(algo="dora", rank=4, family="lycoris")), ("oft", dict(algo="oft", rank=8, family="lycoris"))]


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inets")
    keep = set(LAYERS)
    return {name: make_net(tmp, name, layers=lambda layer: layer in keep, seed=i, **kw)
            for i, (name, kw) in enumerate(SPECS)}


class _Interrupt:
    """Raise `exc` at the `at`-th trace event (call/line/return) of any Python frame; count when at is None."""

    def __init__(self, at=None, exc=KeyboardInterrupt):
        self.at, self.exc, self.n, self.fired = at, exc, 0, False

    def _tick(self):
        self.n += 1
        if self.at is not None and self.n >= self.at and not self.fired:
            self.fired = True
            raise self.exc()

    def __call__(self, frame, event, arg):
        # only the project's own frames: an interrupt inside torch's no_grad.__exit__ would leave grad mode off
        # for the rest of the process (a torch property, not the patcher's)
        if "lib_lora" not in frame.f_code.co_filename:
            return None
        self._tick()
        return self._local

    def _local(self, frame, event, arg):
        self._tick()
        return self._local

    def run(self, fn, *args, **kw):
        sys.settrace(self)
        try:
            return fn(*args, **kw)
        finally:
            sys.settrace(None)


def _random_actives(rng, nets):
    out = []
    for name in rng.sample(sorted(nets), rng.randint(1, 3)):
        blocks = None if rng.random() < 0.5 else [rng.choice([0.0, 1.0, 0.5, -0.7]) for _ in range(26)]
        out.append(ActiveLora(nets[name], te=rng.choice([1.0, 0.4]), unet=rng.choice([1.0, 0.3, 0.6, 0.9, -1.2]),
                              blocks=blocks))
    return out


def _count_events(nets, dtype, prior, actives, cache_bytes):
    root = build_model("sd15", include=LAYERS, dtype=dtype, seed=1)
    p = Patcher(Host.from_named_modules(root.named_modules()), cache_bytes=cache_bytes)
    if prior:
        p.apply(prior)
    counter = _Interrupt()
    counter.run(p.apply, actives)
    return counter.n


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_random_interrupts_during_apply_restore_bit_exact(nets, dtype):
    grad = torch.is_grad_enabled()
    try:
        _trials(nets, dtype)
    finally:
        torch.set_grad_enabled(grad)


def _trials(nets, dtype):
    root = build_model("sd15", include=LAYERS, dtype=dtype, seed=1)
    host = Host.from_named_modules(root.named_modules())
    original = model_state(root)
    originals = snapshot(host)
    rng = random.Random(11 if dtype == torch.float32 else 13)
    fired = 0
    for trial in range(200):
        prior = _random_actives(rng, nets) if rng.random() < 0.5 else []
        actives = _random_actives(rng, nets)
        cache_bytes = rng.choice([0, 64 << 10, 1 << 30])  # nothing, some, everything cached
        total = _count_events(nets, dtype, prior, actives, cache_bytes)
        p = Patcher(host, cache_bytes=cache_bytes)
        if prior:
            p.apply(prior)
        inj = _Interrupt(at=rng.randint(1, total), exc=rng.choice([KeyboardInterrupt, SystemExit]))
        try:
            inj.run(p.apply, actives)
        except (KeyboardInterrupt, SystemExit):
            pass
        fired += inj.fired
        if rng.random() < 0.3:
            # the next apply after an interrupt must not trust a half-written layer
            p.apply(actives)
            ref = reference_weights(originals, actives)
            for layer, (w0, _) in originals.items():
                want = ref.get(layer, (w0, None))[0]
                torch.testing.assert_close(host[layer].weight.float(), want.float(), **tol(dtype),
                                           msg=f"trial {trial}: {layer}")
        p.restore()
        assert same_state(model_state(root), original), f"trial {trial}: restore not bit-exact after an interrupt"
    assert fired > 150  # the injector really interrupted
