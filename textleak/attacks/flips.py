"""First-order token flips on the Gaussian likelihood of a noisy gradient: candidates for the
`likelihood` search at positions whose embedding rows are buried in the noise.

HotFlip (Ebrahimi et al., ACL 2018) ranks token substitutions by the first-order change of an
objective along the embedding of each position; LAMP (Balunovic et al., NeurIPS 2022) and TAG
use the same linearisation for gradient matching. Here the objective is the likelihood term
J(x) = 2 <T, c g(x)> - ||c g(x)||^2 of `attacks.likelihood` (T the target a sentence's own
gradient should match, c Opacus' clip factor or 1), and the gain of putting token v at position
p is estimated as dJ/de_p . (E[v] - E[x_p]) with e_p the word-embedding output at p: one forward,
one backward with a graph, and one backward through it (double backprop) rank the whole
vocabulary at every position.

Why: a token whose own gradient is small (on MiniLM at variance 1e-6, e.g. the apostrophe of
"I don't want trouble.") leaves its word-embedding row and the position row under the noise, so
the row evidence and the embedding matched filter rank it past 100; but the whole gradient
still moves by ~1e5 noise variances when it is wrong, and the flip ranking sees that through
every layer.

`neighbour_candidates` adds the tokens nearest the current one in the input embedding space;
`screened` keeps those of a long candidate list that the first-order gain ranks highest, so that
only they cost a full evaluation of J (a forward and backward pass each).

Shapes: seq a list of L token ids (one sentence, no padding), target name -> tensor (shared
parameters), banned [V] bool; returns, per position, up to k token ids, best first.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from ..text.layouts import Layout


def _objective(grads: Sequence[torch.Tensor | None], target: Sequence[torch.Tensor], clip: float | None,
               weights: Sequence[float]) -> torch.Tensor:
    dot = sum(w * (t * g).sum() for t, g, w in zip(target, grads, weights) if g is not None)
    norm2 = sum(w * g.pow(2).sum() for g, w in zip(grads, weights) if g is not None)
    if clip is None:
        return 2 * dot - norm2
    plain = sum(g.pow(2).sum() for g in grads if g is not None)
    c = torch.clamp(clip / (plain.sqrt() + 1e-6), max=1.0)
    return 2 * c * dot - c * c * norm2


def flip_gains(layout: Layout, target: Mapping[str, torch.Tensor], seq: Sequence[int], label: int,
               clip: float | None = None, weights: Mapping[str, float] | None = None) -> torch.Tensor:
    """[L, V]: the first-order change of J when token v replaces seq[p] (0 for the current token);
    of J_w with `weights` per parameter name (`attacks.layer_weights`, absent names 1)."""
    model, device = layout.model, layout.device
    params = dict(model.named_parameters())
    names = [n for n in target if n in params]
    kept: list[torch.Tensor] = []
    hook = layout.word_embeddings.register_forward_hook(lambda _m, _a, out: kept.append(out))
    ids = torch.tensor([list(seq)], device=device)
    try:
        with torch.enable_grad():
            loss = model(**layout.inputs(ids), labels=torch.tensor([int(label)], device=device)).loss
            grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True, allow_unused=True)
            J = _objective(grads, [target[n].to(device, torch.float32) for n in names], clip,
                           [1.0 if weights is None else weights.get(n, 1.0) for n in names])
            (slope,) = torch.autograd.grad(J, kept[0])
    finally:
        hook.remove()
    E = layout.word_embeddings.weight.detach()
    slope = slope[0].detach()  # [L, H]
    return slope @ E.T - (slope * E[ids[0]]).sum(-1, keepdim=True)


def top_flips(gain: torch.Tensor, seq: Sequence[int], k: int, banned: torch.Tensor) -> list[list[int]]:
    """Per position of `seq`, the k tokens (other than the current one) with the largest gain in
    `gain` [L, V] (from `flip_gains`), best first; [] at every position when k < 1."""
    if k < 1:
        return [[] for _ in seq]
    gain = gain.clone()
    gain[:, banned.to(gain.device)] = -math.inf
    gain[torch.arange(len(seq), device=gain.device), torch.tensor(list(seq), device=gain.device)] = -math.inf
    return torch.topk(gain, min(k, gain.shape[1]), dim=1).indices.tolist()


def flip_candidates(layout: Layout, target: Mapping[str, torch.Tensor], seq: Sequence[int], label: int, k: int,
                    banned: torch.Tensor, clip: float | None = None) -> list[list[int]]:
    """Per position of `seq`, the k tokens (other than the current one) with the largest
    first-order gain of J, best first; [] at every position when k < 1."""
    if k < 1:
        return [[] for _ in seq]
    return top_flips(flip_gains(layout, target, seq, label, clip), seq, k, banned)


def screened(gain: torch.Tensor, pool: Sequence[int], keep: int) -> list[int]:
    """The `keep` tokens of `pool` with the largest first-order gain (`gain` [V], one position's
    row of `flip_gains`), best first: which of many candidates get a full evaluation of J."""
    pool = list(dict.fromkeys(pool))
    if len(pool) <= keep:
        return pool
    g = gain[torch.tensor(pool, device=gain.device)]
    return [pool[j] for j in torch.topk(g, keep).indices.tolist()]


def neighbour_candidates(layout: Layout, seq: Sequence[int], k: int, banned: torch.Tensor) -> list[list[int]]:
    """Per position of `seq`, the k tokens whose input embeddings are closest in angle to the
    current token's, nearest first; [] at every position when k < 1. A settled guess often holds
    a near neighbour of the true token where neither the rows nor the flips single it out
    (CoLA at variance 1e-6: "far much" for "far more"; "more" is the third neighbour of "much")."""
    if k < 1:
        return [[] for _ in seq]
    E = layout.word_embeddings.weight.detach()
    E = E / E.norm(dim=1, keepdim=True).clamp_min(1e-12)
    ids = torch.tensor(list(seq), device=E.device)
    cos = E[ids] @ E.T  # [L, V]
    cos[:, banned.to(E.device)] = -math.inf
    cos[torch.arange(len(seq), device=E.device), ids] = -math.inf
    return torch.topk(cos, min(k, cos.shape[1]), dim=1).indices.tolist()
