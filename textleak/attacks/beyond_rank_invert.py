"""Far past the rank limit, short sentences inverted from their own last-layer [CLS] states (`leaks.pooled`)
with a certificate of their own: a sentence whose state lands on a pooled state (relative distance under
EXACT; true sentences ~1e-6 off the truth's state, the pooled states within 2.7e-4 of it, one token wrong
~0.25) is that sentence.

`beyond_rank_targets` descends the finish's assembled tracks onto the states, but a track keeps the
assembly's length and a state matched to a track of another length cannot be reached (CoLA batch 64: no
track reached its state, recipes/measured/large_batch_cls_s22/). Here each state is tried at the missing
lengths themselves (the shortest first, up to `longest` tokens), from scratch: a continuous relaxation (per
position a softmax over the leaked column's candidates mixes their word embeddings; Adam on the distance
to the state, the temperature lowered in the second half), rounded to each position's likeliest token, then
a gradient-guided descent (`GuidedDescent`). Which states to try at a length first: a linear discriminant of
the length fitted on the [CLS] states of random sentences drawn from the columns (the disaggregation's own
starts).

Measured (ground truth, MiniLM, CoLA dev batch 0 of 64, the first of every 8 sentences,
recipes/measured/large_batch_inv_s23/): at the right length, 4 restarts of 200 relaxation steps then the
descent brought back 3 of 8 exactly (lengths 9, 7, 8; the 9-, 16-, 17-, 19- and 24-token ones not), end
distance 6e-7 for those and 0.10-0.19 for the rest; one token longer none, ends 0.04-0.16. The guided descent
alone from one random draw: 0 of 8 (ends 0.16-0.51; one shorter / longer ends as near, 0.04-0.67), from the
truth with 4 tokens wrong 3 of 8. The length discriminant puts the true length first for 15 of 64 states and
in its best 3 for 38.

In the attack (`beyond_rank --option targets=true --option finish=0.5 --option invert=9`, CoLA dev batch 0 of
64, budget 600 CPU s, both arms side by side, recipes/measured/large_batch_inv_s23/): exact = certified 8 ->
10 of 64, ROUGE-2 26.5 -> 27.9, but ROUGE-1 55.3 -> 53.0 (the inversion's time is the descent's); SST-2 at
450 CPU s: exact 9 -> 11, certified 9 -> 12, ROUGE-1/2 47.7/26.5 -> 48.8/30.5. Off by default. (The twelfth
certified sentence was true: the scorer's ROUGE matching tied it with a near copy differing in punctuation, a
finish track, and gave it another reference; rerun with the same options, 13 certified, all in the batch, 12
exact under the old matching, 13 under the id-first one: recipes/measured/large_batch_s24/.)
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from typing import Sequence

import torch

from ..core import budget
from ..text.layouts import Layout

log = logging.getLogger(__name__)

#: relative distance to a pooled state under which an inverted sentence is certain (module doc)
EXACT = 1e-3


class GuidedDescent:
    """Sentences of one length descended onto their own [CLS] targets, all at once: each step one
    forward/backward scores every (position, column candidate) change to first order; each sentence's `top`
    best per position are evaluated exactly and the best kept, until none improves."""

    def __init__(self, layout: Layout, options: Sequence[Sequence[int]], top: int = 8, chain: int = 0):
        self.layout, self.options, self.top = layout, options, top
        self.chain = chain  # improving changes tried together per step, up to this many (`step`; 0: one a step)
        self.W = layout.word_embeddings.weight.detach()
        self.cols = [torch.tensor(list(o), dtype=torch.long, device=self.W.device) for o in options]

    def dist(self, seqs: Sequence[Sequence[int]], T: torch.Tensor, chunk: int = 512) -> torch.Tensor:
        out = []
        for i in range(0, len(seqs), chunk):
            with torch.no_grad():
                h = _cls_state(self.layout, torch.tensor(seqs[i:i + chunk], device=self.W.device)).cpu()
            out.append((h - T[i:i + chunk]).norm(dim=1) / T[i:i + chunk].norm(dim=1))
        return torch.cat(out)

    def run(self, seqs: list[list[int]], T: torch.Tensor, steps: int = 60) -> tuple[list[list[int]], torch.Tensor]:
        seqs = [list(s) for s in seqs]
        best, live = self.dist(seqs, T), list(range(len(seqs)))
        for _ in range(steps):
            if not live or budget.expired():
                break
            live = self.step(seqs, T, best, live)
        return seqs, best

    def step(self, seqs: list[list[int]], T: torch.Tensor, best: torch.Tensor, live: list[int]) -> list[int]:
        """One step for the sentences `live` (seqs and best changed in place): those it improved. With `chain`,
        each sentence's best single changes at distinct positions are also tried together, the nearest first
        (1, 2, 3, ... of them: several right tokens a step where the first-order ranking holds)."""
        E = self.W[torch.tensor([seqs[i] for i in live], device=self.W.device)].clone().requires_grad_(True)
        with torch.enable_grad():
            h = _cls_state(self.layout, embeds=E).cpu()
            G, = torch.autograd.grad((((h - T[live]) ** 2).sum(1) / (T[live] ** 2).sum(1)).sum(), E)
        trial, owner = [], []
        for j, i in enumerate(live):
            for p in range(1, len(seqs[i]) - 1):
                if p >= len(self.cols) or not len(self.cols[p]):
                    continue
                score = (self.W[self.cols[p]] - self.W[seqs[i][p]]) @ G[j, p]
                for k in torch.argsort(score)[:self.top].tolist():
                    if self.options[p][k] != seqs[i][p]:
                        trial.append(seqs[i][:p] + [self.options[p][k]] + seqs[i][p + 1:])
                        owner.append(i)
        if not trial:
            return []
        d = self.dist(trial, T[owner])
        if self.chain:
            trial, owner, d = self._chained(seqs, T, best, trial, owner, d)
        nxt = []
        for i in live:
            ks = [k for k, o in enumerate(owner) if o == i]
            k = min(ks, key=lambda k: float(d[k])) if ks else None
            if k is not None and float(d[k]) < float(best[i]):
                seqs[i], best[i] = trial[k], d[k]
                nxt.append(i)
        return nxt

    def _chained(self, seqs: list[list[int]], T: torch.Tensor, best: torch.Tensor, trial: list[list[int]],
                 owner: list[int], d: torch.Tensor) -> tuple[list[list[int]], list[int], torch.Tensor]:
        """The single changes plus, per sentence, its improving changes at distinct positions applied together,
        the nearest first, up to `chain` of them."""
        per: dict[int, dict[int, tuple[float, int]]] = {}
        for k, i in enumerate(owner):
            if float(d[k]) < float(best[i]):
                p = next(q for q, (a, b) in enumerate(zip(trial[k], seqs[i])) if a != b)
                if p not in per.setdefault(i, {}) or float(d[k]) < per[i][p][0]:
                    per[i][p] = (float(d[k]), trial[k][p])
        more, who = [], []
        for i, changes in per.items():
            seq = list(seqs[i])
            for m, (p, (_, t)) in enumerate(sorted(changes.items(), key=lambda c: c[1][0])[:self.chain]):
                seq[p] = t
                if m > 0:
                    more.append(list(seq))
                    who.append(i)
        if not more:
            return trial, owner, d
        return trial + more, owner + who, torch.cat([d, self.dist(more, T[who])])


class StateInversion:
    """Inverts pooled states at the missing short lengths (module doc).

    run(states, missing, options, seen) -> [(state index, sentence)] for each state certified;
    seen: (sentences, their [CLS] states) drawn from the columns, to fit the length discriminant."""

    def __init__(self, layout: Layout, cls: int, sep: int, longest: int = 9, restarts: int = 3, steps: int = 120,
                 tries: int = 2, seed: int = 0):
        self.layout, self.cls, self.sep = layout, cls, sep
        self.longest, self.restarts, self.steps, self.tries = longest, restarts, steps, tries
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = random.Random(seed)
        self.report = {"tried": 0, "found": 0}

    def run(self, states: torch.Tensor, missing: Sequence[int], options: Sequence[Sequence[int]],
            seen: tuple[list[list[int]], torch.Tensor]) -> list[tuple[int, list[int]]]:
        counts = Counter(n for n in missing if 3 <= n <= self.longest)
        if not counts or not len(states):
            return []
        prior = length_prior(seen, states, sorted(set(missing)))
        descent = GuidedDescent(self.layout, options)
        out: list[tuple[int, list[int]]] = []
        taken: set[int] = set()
        for n in sorted(counts):  # the shortest first: cheapest, and most often brought back
            if budget.expired():
                break
            order = [j for j in torch.argsort(-prior.get(n, torch.zeros(len(states)))).tolist()
                     if j not in taken][:self.tries * counts[n]]
            for j, seq in self._invert(n, states[order], options, descent, order) if order else ():
                if counts[n] > 0 and j not in taken:
                    out.append((j, seq))
                    taken.add(j)
                    counts[n] -= 1
        self.report = {**self.report, "found": len(out)}
        log.debug("state inversion: %s", self.report)
        return out

    def _invert(self, n: int, T: torch.Tensor, options: Sequence[Sequence[int]], descent: GuidedDescent,
                which: list[int]) -> list[tuple[int, list[int]]]:
        """The states T at length n: relaxed, rounded and descended, `restarts` each; the certain ones."""
        R = self.restarts
        self.report["tried"] += len(which)
        TT = T.repeat_interleave(R, 0)
        seqs = self._relax(n, TT, options)
        seqs, d = descent.run(seqs, TT)
        out = []
        for a, j in enumerate(which):
            k = int(d[a * R:(a + 1) * R].argmin()) + a * R
            if float(d[k]) < EXACT:
                out.append((j, seqs[k]))
        return out

    def _relax(self, n: int, T: torch.Tensor, options: Sequence[Sequence[int]]) -> list[list[int]]:
        cols = columns(options, n, self.sep, self.layout.word_embeddings.weight.device)
        Z = [(0.1 * torch.randn(len(T), len(c), generator=self.gen)).to(c.device).requires_grad_(True) for c in cols]
        return relax(self.layout, Z, cols, self.cls, self.sep, T, self.steps)[0]


def columns(options: Sequence[Sequence[int]], n: int, sep: int, device: torch.device) -> list[torch.Tensor]:
    """Each inner position's candidate tokens of an n-token sentence ([SEP] alone where `options` has none)."""
    return [torch.tensor(list(options[p]) if p < len(options) and options[p] else [sep], device=device)
            for p in range(1, n - 1)]


def relax(layout: Layout, Z: list[torch.Tensor], cols: list[torch.Tensor], cls: int, sep: int, T: torch.Tensor,
          steps: int, lengths: Sequence[int] | None = None, half: bool = False) -> tuple[list[list[int]], int]:
    """Adam (lr 0.1) on per-position logits Z (each [rows, len(its column)]): a position's embedding is the softmax
    mixture of its column's word embeddings, the temperature lowered 1 -> 0.1 over the second half of `steps`, on
    the relative squared distance of `[CLS] mixtures [SEP]`'s last-layer [CLS] state to T's row; then rounded.
    lengths: each row's sentence length, up to len(cols) + 2 (None: all that): a shorter row has its [SEP] at its
    own end and the positions past it masked out (right padding; its logits there unused). half: the model's forward
    pass under bfloat16 autocast, one region for all steps so each weight is cast once (the logits and Adam stay
    float32; `beyond_rank_drafts`' `bfloat16`). Only the logits get gradients (the model's weights none: 1.5x
    faster a step than a full backward, MiniLM, session 37). Returns (the sentences, the steps taken: the budget
    may end it early)."""
    W = layout.word_embeddings.weight.detach()
    ends, Td, rows, taken = W[torch.tensor([cls, sep], device=W.device)], T.to(W.device), len(T), 0
    N = len(cols) + 2
    n = torch.tensor(list(lengths) if lengths is not None else [N] * rows, device=W.device)
    at = torch.arange(N, device=W.device)[None]
    sep_at, mask = (at == n[:, None] - 1)[..., None], (at < n[:, None]).long()
    opt = torch.optim.Adam(Z, lr=0.1)
    with torch.autocast(W.device.type, dtype=torch.bfloat16, enabled=half):  # one region: weights cast once
        for it in range(steps):
            if budget.expired():
                break
            tau = 1.0 - 0.9 * max(0, it - steps // 2) / max(1, steps - steps // 2)
            with torch.enable_grad():
                mids = torch.stack([torch.softmax(z / tau, 1) @ W[c] for z, c in zip(Z, cols)], 1)
                E = torch.cat([ends[0].expand(rows, 1, -1), mids, ends[1].expand(rows, 1, -1)], 1)
                h = _cls_state(layout, embeds=torch.where(sep_at, ends[1], E) if lengths is not None else E,
                               mask=mask)
                loss = (((h - Td) ** 2).sum(1) / (Td ** 2).sum(1)).sum()
                opt.zero_grad()
                loss.backward(inputs=Z)  # the logits' gradients alone: none for the model's weights
                opt.step()
            taken += 1
    return [[cls] + [int(c[int(z[r].argmax())]) for z, c in zip(Z[:int(n[r]) - 2], cols)] + [sep]
            for r in range(rows)], taken


def _cls_state(layout: Layout, ids: torch.Tensor | None = None, embeds: torch.Tensor | None = None,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """The last layer's [CLS] states [B, H] (float64) from token ids or input embeddings; mask: the attention mask
    [B, L] of right-padded rows (None: unpadded)."""
    x = ids if ids is not None else embeds
    mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device) if mask is None else mask
    return layout.base(input_ids=ids, inputs_embeds=embeds, attention_mask=mask).last_hidden_state[:, 0].double()


def length_prior(seen: tuple[list[list[int]], torch.Tensor], states: torch.Tensor, lengths: list[int]
                 ) -> dict[int, torch.Tensor]:
    """Per length, each state's linear-discriminant score (shared covariance) from the seen sentences."""
    seqs, X = seen
    if not seqs:
        return {}
    y = torch.tensor([len(s) for s in seqs])
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Xn, Sn = (X - mu) / sd, (states - mu) / sd
    have = [n for n in lengths if int((y == n).sum()) > 1]
    if not have:
        return {}
    means = torch.stack([Xn[y == n].mean(0) for n in have])
    keep = torch.isin(y, torch.tensor(have))
    R = Xn[keep] - means[torch.tensor([have.index(int(v)) for v in y[keep]])]
    C = R.T @ R / max(1, len(R)) + 0.1 * torch.eye(X.shape[1], dtype=X.dtype)
    D = Sn[:, None] - means[None]
    score = -0.5 * torch.einsum("skh,hg,skg->sk", D, torch.linalg.inv(C), D)
    return {n: score[:, k] for k, n in enumerate(have)}


def length_logp(drawn: tuple[list[list[int]], torch.Tensor], states: torch.Tensor, lengths: Sequence[int]
                ) -> torch.Tensor:
    """[len(states), len(lengths)]: each state's log-probability of each length, over the distinct lengths, from
    a linear discriminant on sentences of known lengths and their states (`beyond_rank_invert.length_prior`),
    each state's scores scaled to unit spread; a length the discriminant has no class for gets the lowest."""
    prior = length_prior(drawn, states, sorted(set(lengths)))
    if not prior:
        return torch.zeros(len(states), len(lengths), dtype=states.dtype)
    score = torch.stack([prior[n] for n in sorted(prior)], 1)
    score = (score - score.mean(1, keepdim=True)) / score.std(1, keepdim=True).clamp_min(1e-12) if score.shape[1] > 1 \
        else score * 0
    logp = torch.log_softmax(score, 1)
    low = logp.min(1).values
    col = {n: k for k, n in enumerate(sorted(prior))}
    return torch.stack([logp[:, col[n]] if n in col else low for n in lengths], 1)
