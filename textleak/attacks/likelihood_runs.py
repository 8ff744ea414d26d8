"""Whole-run proposals of the `likelihood` search (`likelihood.runs`, also `likelihood_batch.runs`): a run of k
consecutive tokens of a guess replaced at once by sequences a language prior writes between the run's fixed
neighbours, each scored by the search's own objective (J_w or J against the sentence's target), the best kept only
where it raises it (`RunMove`).

Why: at batch 4 and variance 1e-6 (SST-2 dev batch 0, sessions 34-36, recipes/measured/noise_b4_s36) the end state's
wrong positions hold tokens no single-token move replaces with the truth: 63 of 85 true tokens lower J_w put in
alone, true neighbouring pairs pay where neither single does at 4 of 79, while whole true runs and slots pay
(+66k to +432k nats of J_w); the first-order gain that screens the sweeps ranks none of them in its top 16, the bigram
between the neighbours and the masked LM 15-17. A single-token climb cannot reach what only pays as a whole run.

Proposals for a run [a, a + k) of `seq` (its neighbours seq[a - 1] and seq[a + k] fixed):
- `bigram_runs`: a left-to-right beam over the bigram (`evidence.PriorCandidates`), each step's `expand` likeliest
  successors of each beam's last token, the right neighbour's p(right | last) added at the last step; the `beam`
  likeliest runs by summed log-probability;
- `masked_runs`: a left-to-right beam over the masked LM (`text.masked_prior.ContextHead`), each slot read with it
  and the rest of the run masked in the beam's sequence, its score `evidence.context_candidates`' (log p + z of the
  matched filter at the guess + half the z of the slot's row score), the `beam` best by summed score.
Which runs (`RunMove.windows`): for each width of `widths` (capped at the inner length; the whole inner sentence
too) the window whose positions the objective supports least (`StretchRebuild.support`: J(guess) - J(guess with a
filler there), summed over the window, over sqrt(width)), not tried before from the same guess.

Cost: per window 2 x `beam` hypotheses scored (one forward and backward pass each, `_Guess.best_of`: 0.065 CPU s at
44 tokens) and k encoder passes of `beam` rows for the masked LM. Shapes: sequences are token-id lists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.budget import current
from .evidence import zscores


def bigram_runs(prior: Any, left: int, right: int | None, k: int, beam: int, expand: int) -> list[list[int]]:
    """The `beam` likeliest k-token runs after `left` (and before `right`, None: none) under the bigram of `prior`
    (`evidence.PriorCandidates`), by a left-to-right beam taking each beam's `expand` likeliest successors."""
    nexts: dict[int, torch.Tensor] = {}

    def log_next(v: int) -> torch.Tensor:
        if v not in nexts:
            nexts[v] = prior._log_next(v).masked_fill(prior.banned, -math.inf)
        return nexts[v]

    tail = prior._log_prev(right) if right is not None else None
    beams: list[tuple[float, list[int]]] = [(0.0, [])]
    for step in range(k):
        options = []
        for score, run in beams:
            s = log_next(run[-1] if run else left)
            if step == k - 1 and tail is not None:
                s = s + tail
            top = torch.topk(s, expand)
            options += [(score + float(v), run + [int(t)]) for v, t in zip(top.values, top.indices)]
        beams = sorted(options, key=lambda o: -o[0])[:beam]
    return [run for _, run in beams]


def masked_runs(head: Any, seq: list[int], a: int, k: int, beam: int, evidence: list[torch.Tensor], banned,
                expand: int = 8) -> list[list[int]]:
    """The `beam` best k-token runs at [a, a + k) of `seq` by a left-to-right beam over the masked LM `head`, each
    slot scored with it and the rest of the run masked in the beam's own sequence; `evidence[t]` [V] is slot a + t's
    gradient score added to log p (`context_candidates`: z of the matched filter plus half z of the row score)."""
    mask, beams = head.mask_id, [(0.0, list(seq))]
    for t in range(k):
        p = a + t
        x = torch.tensor([s for _, s in beams])
        x[:, p:a + k] = mask
        h = head.states(x)
        with torch.no_grad():
            logp = torch.log_softmax(head.logits(h[:, p]), -1).double()
        score = (logp + evidence[t]).masked_fill(banned.cpu(), -math.inf)
        options = []
        for (total, s), row in zip(beams, score):
            top = torch.topk(row, expand)
            options += [(total + float(v), s[:p] + [int(u)] + s[p + 1:]) for v, u in zip(top.values, top.indices)]
        beams = sorted(options, key=lambda o: -o[0])[:beam]
    return [s[a:a + k] for _, s in beams]


def slot_evidence(context: Any, guess: Any, where: range, word: str) -> list[torch.Tensor]:
    """Per slot of `where`, the gradient's score of every token there (`context_candidates`' terms beside log p):
    z of the matched filter at the guess plus half the z of the slot's row score; [V] each."""
    T, banned = guess.T[word], context.banned
    out = []
    for p in where:
        z = zscores((T @ guess.e[p]).cpu(), banned)
        out.append(z + 0.5 * zscores(context.rows[:, p].cpu(), banned))
    return out


@dataclass
class RunMove:
    """Whole-run replacements from the bigram and the masked LM (module doc); remembers the windows tried."""

    #: run widths tried (capped at the inner length); the whole inner sentence is always one
    widths: tuple[int, ...] = (4, 8, 16)
    #: proposals per source and window
    beam: int = 16
    expand: int = 8
    tried: set = field(default_factory=set)
    #: what the last call did: windows tried, hypotheses scored, the window and source taken (None: none)
    last: dict = field(default_factory=dict)

    def windows(self, guess: Any, inner: range, support: list[float]) -> list[tuple[int, int]]:
        """(start, width) per width: the least supported window not tried from this guess (module doc)."""
        n, out = len(inner), []
        for w in sorted({min(w, n) for w in self.widths if w >= 2} | {n}):
            options = [(sum(support[a:a + w]) / math.sqrt(w), a) for a in range(inner.start, inner.stop - w + 1)
                       if (tuple(guess.x), a, w) not in self.tried]
            if options:
                a = min(options)[1]
                self.tried.add((tuple(guess.x), a, w))
                out.append((a, w))
        return out

    def proposals(self, guess: Any, a: int, k: int, prior: Any, context: Any, word: str) -> list[tuple[str, list]]:
        """(source, the guess with [a, a + k) replaced) for each source's runs there."""
        x, out = guess.x, []
        right = x[a + k] if a + k < len(x) else None
        if prior is not None:
            left = x[a - 1] if a > 0 else None
            if left is not None:
                out += [("bigram", x[:a] + r + x[a + k:]) for r in bigram_runs(prior, left, right, k, self.beam,
                                                                                self.expand)]
        if context is not None:
            ev = slot_evidence(context, guess, range(a, a + k), word)
            out += [("masked", x[:a] + r + x[a + k:]) for r in masked_runs(context.head, x, a, k, self.beam, ev,
                                                                           context.banned, self.expand)]
        return [(s, t) for s, t in out if t != x]

    def __call__(self, guess: Any, inner: range, support: list[float], prior: Any, context: Any, word: str):
        """The best proposal over the windows (sequence, objective, e) if it beats `guess.best`, else None."""
        best, self.last = None, {"windows": [], "scored": 0, "taken": None}
        for a, k in self.windows(guess, inner, support):
            trials = self.proposals(guess, a, k, prior, context, word)
            if not trials:
                continue
            moved = guess.best_of([t for _, t in trials])
            self.last["windows"].append([a, k])
            self.last["scored"] += len(trials)
            if moved is not None and (best is None or moved[1] > best[1]):
                source = next(s for s, t in trials if t == moved[0])
                best, self.last["taken"] = moved, [a, k, source]
            if current().expired():
                break
        return best
