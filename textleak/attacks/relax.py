"""A continuous relaxation of a few positions of a guess on the likelihood term J (DLG/TAG-style
gradient matching, local): candidates for the `likelihood` search's stretch rebuild
(`attacks.likelihood_moves.StretchRebuild`) where no gradient-based ranking of single tokens
reaches the true ones.

The word-embedding outputs at `positions` are freed (the other positions keep their tokens),
started from the tokens there, and moved by Adam ascent on J(x) = 2 <T, c g(x)> - ||c g(x)||^2
(`attacks.flips._objective`; double backprop, as the first-order flips); each freed position's
candidates are then the tokens whose input embeddings are closest in angle to where it ended.

Why: a stretch of several wrong tokens holds itself (each wrong token is held by its wrong
neighbours), so single-token rankings from the settled guess (the matched filter, the first-order
gain) put the true tokens 21st to 29,000th (RT dev sentence 0 at variance 1e-6, MiniLM, batch 1,
session 13). Diagnosis against ground truth (session 14, that sentence's settled guess, 0.27 CPU s
a step at 22 tokens, Adam lr 0.03): positions 4-7 freed from the guess's tokens, 60 steps take
"character" from 23,948th nearest to 7th (1st after 100) and "in" from 14,121st to 1,143rd,
while "##izing" (191st to 271st) and "how" (111th to 13,504th) drift off; freed from a filler
instead, "in" ranks 1st and "character" 237th. In the stretch rebuild, six calls from that guess
raised J twice with the relaxation from the guess, once in eight from the filler, never in five
without it. It is a source of
candidates, never a guess: every rebuilt hypothesis is scored on the discrete J.

End to end it is opt-in (`likelihood.relaxed`, off by default): `fl_defences --noise 1e-6
--budget 600` at batch 1 read RT 0.797 (0.778 / 1.00 / 0.612, load 4.6-6.1) and SST-2 0.935
(0.806 / 1.00 / 1.00, load 2.6-2.9) with 6 candidates per slot, against session 13's 0.731 and
0.917 at load 4-6; but RT sentence 0 without it, at load 2.7, read the same 0.778 (J 5.6289
against 5.6252 with it), so the gain is not shown to be the relaxation's (single runs each).

Shapes: seq a list of L token ids, positions a list of P of them; returns P lists of k token ids.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from ..core.budget import current
from ..text.layouts import Layout
from .flips import _objective


def relaxed_candidates(layout: Layout, target: Mapping[str, torch.Tensor], seq: Sequence[int], label: int,
                       positions: Sequence[int], k: int, banned: torch.Tensor, steps: int = 60, lr: float = 0.03,
                       clip: float | None = None, weights: Mapping[str, float] | None = None) -> list[list[int]]:
    """Per position of `positions`, the k tokens nearest in angle to its embedding after `steps` of
    Adam ascent on J with the other positions of `seq` fixed (fewer past the time budget,
    `core.budget`); [] per position when k < 1 or nothing is freed."""
    if k < 1 or not positions:
        return [[] for _ in positions]
    model, device = layout.model, layout.device
    params = dict(model.named_parameters())
    names = [n for n in target if n in params]
    tgt = [target[n].to(device, torch.float32) for n in names]
    w = [1.0 if weights is None else weights.get(n, 1.0) for n in names]
    E = layout.word_embeddings.weight.detach()
    ids = torch.tensor([list(seq)], device=device)
    where = torch.tensor(list(positions), device=device)
    z = E[ids[0, where]].clone().requires_grad_(True)

    def free(_m, _a, out):
        out = out.clone()
        out[0, where] = z
        return out

    hook = layout.word_embeddings.register_forward_hook(free)
    opt = torch.optim.Adam([z], lr=lr)
    y = torch.tensor([int(label)], device=device)
    try:
        for _ in range(steps):
            with torch.enable_grad():
                loss = model(**layout.inputs(ids), labels=y).loss
                grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True, allow_unused=True)
                (slope,) = torch.autograd.grad(_objective(grads, tgt, clip, w), z)
            opt.zero_grad()
            z.grad = -slope  # ascent
            opt.step()
            if current().expired():
                break
    finally:
        hook.remove()
    zn = z.detach() / z.detach().norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = zn @ (E / E.norm(dim=1, keepdim=True).clamp_min(1e-12)).T  # [P, V]
    cos[:, banned.to(device)] = -math.inf
    return torch.topk(cos, min(k, cos.shape[1]), dim=1).indices.tolist()
