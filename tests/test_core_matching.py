"""The modality-free loop on a small problem whose answer is known: a linear layer's input."""

from __future__ import annotations

import pytest
import torch

from textleak.core import DISTANCES, MatchConfig, match
from textleak.core.seeding import model_mode, preserved_rng, seeded
from textleak.errors import InputError, Interrupted


class LinearInversion:
    """Recover x from the gradient of 0.5*||W x - y||^2 w.r.t. W (= (Wx - y) x^T)."""

    def __init__(self, x_true: torch.Tensor, W: torch.Tensor, y: torch.Tensor, interrupt_at: int | None = None):
        self.W, self.y = W.requires_grad_(), y
        self.names = ["W"]
        self.observed = {"W": self._grad(x_true).detach()}
        self.calls, self.interrupt_at = 0, interrupt_at

    def _grad(self, x):
        loss = 0.5 * ((self.W @ x - self.y) ** 2).sum()
        return torch.autograd.grad(loss, self.W, create_graph=True)[0]

    def init(self, gen):
        return {"x": torch.randn(self.W.shape[1], generator=gen).requires_grad_()}

    def gradients(self, v):
        self.calls += 1
        if self.interrupt_at is not None and self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return [self._grad(v["x"])]

    def regulariser(self, v):
        return 0.0

    def project(self, v):
        pass

    def decode(self, v):
        return {"x": v["x"].detach().tolist()}


def _problem(**kw):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, generator=g)
    return x, LinearInversion(x, torch.randn(3, 4, generator=g), torch.randn(3, generator=g), **kw)


@pytest.mark.parametrize("optimizer,distance", [("lbfgs", "l2"), ("adam", "l2"), ("lbfgs", "l2-layer")])
def test_match_recovers_the_input(optimizer, distance):
    x, p = _problem()
    cfg = MatchConfig(optimizer=optimizer, distance=distance, steps=2000 if optimizer == "adam" else 30, lr_decay=True,
                      lr=0.05 if optimizer == "adam" else None, line_search="strong_wolfe", snapshot_at=(0, 10))
    out = match(p, p.observed, cfg, progress=False)
    assert torch.allclose(out.variables["x"], x, atol=1e-2)
    assert [s["step"] for s in out.snapshots[0]][:2] == [0, 10]
    assert out.history[0][-1] < out.history[0][0]


def test_restarts_keep_the_lowest_distance_and_seed_repeats():
    x, p = _problem()
    cfg = MatchConfig(steps=3, restarts=3, line_search="strong_wolfe", seed=5)
    a = match(p, p.observed, cfg, progress=False)
    finals = [h[-1] for h in a.history]
    assert len(a.history) == 3 and a.distance <= min(finals) + 1e-6
    b = match(p, p.observed, cfg, progress=False)
    assert torch.equal(a.variables["x"], b.variables["x"])


def test_interrupt_saves_checkpoint_and_resume_finishes_identically(tmp_path):
    cfg = MatchConfig(optimizer="adam", lr=0.05, steps=40, restarts=2, checkpoint_every=5)
    x, full = _problem()
    reference = match(full, full.observed, cfg, progress=False)

    _, p = _problem(interrupt_at=57)  # inside the second restart
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(Interrupted, match="--resume"):
        match(p, p.observed, cfg, checkpoint=ckpt, progress=False)
    assert ckpt.exists()
    p.interrupt_at = None
    resumed = match(p, p.observed, cfg, checkpoint=ckpt, resume=True, progress=False)
    assert resumed.resumed
    assert torch.allclose(resumed.variables["x"], reference.variables["x"], atol=1e-6)
    assert len(resumed.history[1]) == 40


def test_checkpoint_of_another_run_is_refused(tmp_path):
    _, p = _problem(interrupt_at=4)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(Interrupted):
        match(p, p.observed, MatchConfig(optimizer="adam", steps=5, checkpoint_every=1), checkpoint=ckpt,
              progress=False)
    p.interrupt_at = None
    with pytest.raises(InputError, match="another run"):
        match(p, p.observed, MatchConfig(optimizer="adam", steps=6), checkpoint=ckpt, resume=True, progress=False)


def test_bad_config_is_a_one_line_error():
    with pytest.raises(InputError, match="unknown optimizer"):
        MatchConfig(optimizer="sgd")
    with pytest.raises(InputError, match="unknown gradient distance"):
        MatchConfig(distance="manhattan")


def test_distances_are_zero_at_a_match_and_positive_elsewhere():
    a = [torch.randn(3, 3), torch.randn(2)]
    b = [t + 0.1 for t in a]
    for name in DISTANCES.names():
        d = DISTANCES.get(name)
        assert float(d(a, a)) == pytest.approx(0, abs=1e-6)
        assert float(d(a, b)) > 0


def test_seeding_helpers_restore_state():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout())
    model.train()
    model[1].eval()
    with model_mode(model, train=False):
        assert not model.training
    assert model.training and not model[1].training
    before = torch.get_rng_state()
    with seeded(3):
        torch.rand(5)
    with preserved_rng():
        torch.rand(5)
    assert torch.equal(before, torch.get_rng_state())
