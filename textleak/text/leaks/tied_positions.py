"""Where each input token stands under a tied masked-LM head: the head's part of every word row,
recovered and subtracted, leaves the input part that `token_positions` reads.

A tied head writes row v of the word-embedding gradient s * sum_m (p_m(v) - [y_m = v]) h_m, with
h_m the transformed hidden state at masked position m, p_m = softmax(E h_m + b) and y_m its target
(s the loss' scale, 1/M for a mean). The h_m span the output part's rank-M span (`tied_output_span`);
in its coordinates h_m = c_m. A row neither input nor target is head part only: a_v = s sum_m
p_m(v) c_m, so each c_m is a point where x(c) = [exp(E_v c + b_v)]_v lies in the column space of
those rows (M unknowns; Gauss-Newton on the projection residual). Started from a target's row
(-a_y / s, split over the target's count), each solve lands on one h_m (relative residual at the
capture's precision). A target counted several times pulls several solves onto the same h_m, so
the search runs in rounds: the h_m found are subtracted from the rows, and the rest lie in the row
space of what is left (rank = the number missing), where the next round searches. RT dev batch 16
index 1 (MiniLM, M = 64): the first round finds 53, three more rounds 5, 3 and 3 (22 CPU s in all);
every h_m within 4.9e-6 of the truth, 62 of 64 with their own target (two states of a repeated
target carry each other's: those rows stay unplaced) (scratch check against ground truth).

Then the head part of each input row is known up to the fit's precision, and the remainder is
placed as `token_positions` places an untied head's rows, at a threshold of that precision (the
relative residual left on the head-only rows, 2.2e-7 there): RT 16 index 1, 182 of its 211 tokens
placed, of the 183 that stand at one position, none wrongly (thresholds 3e-7 to 4e-6 alike; 1e-5
wrongly closed positions: 45 true pairs disallowed). `recipes/measured/mlm_tied_positions_s14.md`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from ..layouts import Layout
from .labels import mlm_label_counts
from .memo import as_double
from .positions import TokenPositions, _Placement, peel, token_positions
from .tokens import tied_output_span, tied_token_set

#: a solve counts when its projection residual is below this (float32 captures reach ~1e-6)
TIED_FIT = 1e-4
#: two solves are the same h_m within this relative distance
SAME = 1e-3
#: search rounds (each subtracts what the last found)
ROUNDS = 8


@dataclass
class HeadStates:
    """The tied head's hidden states: coordinates [M, k] in the output span `basis` [k, H], the
    target each came from, the loss scale, the relative residual left on the head-only rows, and
    the head's softmax p_m(v) at those states for every row v [V, M]."""

    coords: torch.Tensor
    basis: torch.Tensor
    targets: list[int]
    scale: float
    residual: float
    probs: torch.Tensor


class _HeadFit:
    """The rows that carry the head part only, and one Gauss-Newton solve against a column space."""

    def __init__(self, layout: Layout, W: torch.Tensor, basis: torch.Tensor, skip: torch.Tensor):
        head = layout.mlm_head()
        with torch.no_grad():
            self.e = as_double(layout.word_embeddings.weight) @ basis.T
            self.b = head.decoder.bias.double() if head.decoder.bias is not None else torch.zeros(len(W), dtype=torch.double)
        self.A = W @ basis.T
        keep = torch.ones(len(W), dtype=torch.bool)
        keep[skip] = False
        self.keep = keep
        self.Af, self.ef, self.bf = self.A[keep], self.e[keep], self.b[keep]

    def probs(self, C: torch.Tensor) -> torch.Tensor:
        """p_m(v) for every row v, [V, M]."""
        return (self.e @ C.T + self.b[:, None]).softmax(0)

    def solve(self, c: torch.Tensor, Q: torch.Tensor, B: torch.Tensor, steps: int = 40) -> tuple[torch.Tensor, float]:
        """c (in the row space B [k, M]) with x(c) in the column space Q; the relative residual."""
        rel, best = 1.0, float("inf")
        for _ in range(steps):
            logit = self.ef @ c + self.bf
            x = (logit - logit.max()).exp()
            r = x - Q @ (Q.T @ x)
            rel = float(r.norm() / x.norm())
            if rel < 1e-12 or (rel < TIED_FIT * 1e-1 and rel > 0.9 * best):
                break  # converged, or stalled at the capture's precision
            best = rel
            J = x[:, None] * self.ef
            J = (J - Q @ (Q.T @ J)) @ B.T
            c = c + torch.linalg.lstsq(J, -r[:, None]).solution[:, 0] @ B
        return c, rel


def _round(fit: _HeadFit, counts: dict[int, int], found: list[torch.Tensor], owner: list[int], M: int) -> int:
    """One round: search the row space of what the found states leave; how many it added."""
    k = M - len(found)
    scale = 1.0 / M
    if found:
        C = torch.stack(found)
        P = fit.probs(C)
        R = fit.Af - P[fit.keep] @ C * scale
    else:
        C, P, R = None, None, fit.Af
    U, _, Vh = torch.linalg.svd(R, full_matrices=False)
    Q, B = U[:, :k], Vh[:k]
    added = 0
    for y, n in sorted(counts.items(), key=lambda kv: kv[1]):
        miss = n - owner.count(y)
        row = -fit.A[y] / scale
        if C is not None:
            row = row + P[y] @ C - sum((c for c, o in zip(found, owner) if o == y), torch.zeros_like(row))
        for j in range(miss):
            c, rel = fit.solve((row / (miss - j)) @ B.T @ B, Q, B)
            if rel > TIED_FIT or any(float((c - o).norm()) <= SAME * float(o.norm()) for o in found):
                break
            found.append(c)
            owner.append(y)
            row = row - c
            added += 1
    return added


def tied_head_states(layout: Layout, gradients: Mapping[str, torch.Tensor], n_masked: int) -> HeadStates | None:
    """The M hidden states a tied head wrote into the word rows (module doc), or None where the
    rows do not show a tied head's span, the targets cannot be counted, or not all M are found."""
    tokens = tied_token_set(layout, gradients)
    if tokens is None:
        return None
    W = as_double(gradients[layout.word_embedding_name])
    basis = tied_output_span(gradients[layout.word_embedding_name])
    counts = mlm_label_counts(layout, gradients, n_masked)
    if basis is None or len(basis) != n_masked or sum(counts.values()) != n_masked:
        return None
    fit = _HeadFit(layout, W, basis, torch.cat([tokens, torch.tensor(sorted(counts), dtype=torch.long)]))
    found: list[torch.Tensor] = []
    owner: list[int] = []
    for _ in range(ROUNDS):
        if len(found) >= n_masked or _round(fit, counts, found, owner, n_masked) == 0:
            break
    if len(found) != n_masked:
        return None
    C = torch.stack(found)
    probs = fit.probs(C)
    model = probs[fit.keep] @ C
    scale = float((model * fit.Af).sum() / model.pow(2).sum())  # the loss' scale (1/M for a mean)
    residual = float((fit.Af - scale * model).norm() / fit.Af.norm())
    return HeadStates(C, basis, owner, scale, residual, probs)


def tied_token_positions(layout: Layout, gradients: Mapping[str, torch.Tensor], tokens: Sequence[int], length: int,
                         n_masked: int, occupants: Sequence[int] | None = None) -> TokenPositions | None:
    """`token_positions` for a tied masked-LM head (module doc), or None where the head's states
    are not all found or the position-embedding gradient is missing."""
    if layout.position_embedding_name not in gradients:
        return None
    states = tied_head_states(layout, gradients, n_masked)
    if states is None:
        return None
    tokens = [int(t) for t in tokens]
    W = gradients[layout.word_embedding_name]
    idx = torch.tensor(tokens, dtype=torch.long)
    P = states.probs[idx]
    for m, y in enumerate(states.targets):
        P[idx == y, m] -= 1.0
    head_part = states.scale * (P @ (states.coords @ states.basis))
    rows = as_double(W)[idx] - head_part
    return peel(_Placement(layout, gradients, tokens, length, occupants, rows=rows, threshold=states.residual))


def placements(layout: Layout, gradients: Mapping[str, torch.Tensor], tokens: Sequence[int], length: int,
               n_masked: int = 0, occupants: Sequence[int] | None = None) -> TokenPositions | None:
    """`token_positions`; where it places nothing (a tied head's dense rows) and `n_masked` positions
    were declared masked, `tied_token_positions` (0: not tried)."""
    found = token_positions(layout, gradients, tokens, length, occupants)
    if found is None and n_masked > 0:
        found = tied_token_positions(layout, gradients, tokens, length, n_masked, occupants)
    return found
