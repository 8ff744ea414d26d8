"""Peeling found sentences off a FedAvg update by re-simulating their share of it (`exact-update`).

A plain gradient is a sum of per-sentence gradients, so a found sentence's own gradient comes
out of it exactly (`exact.peeling.Peeler`). An update U = (1/K) sum_k g(w_k) is not: each term is
taken at a point of the client's trajectory, which every sentence of the batch moved. But the
server has the trajectory to first order, w_k ~ w0 - k lr U, and along it the found sentences'
share of U,

    S = (1/K) sum_k (1/B) sum_{found b} g_b(w0 - k lr U),

can be replayed. U - S leaves the missing sentences' share plus what the linear trajectory misses
(measured on MiniLM, RT dev batch 4, K = 4, lr 1e-2, three of four sentences subtracted: the
rest's layer-1 spectrum sits at 2e-3..5e-3 of its top past the missing sentence's 38 tokens, the
missing sentence's per-token squared residual against that span 7.9e-4, the found sentences'
0.47-0.60). That is no certificate (the subtraction is not exact, so no rank drops exactly: the
simulation of the whole batch, `update_sim.certify_batch`, remains the certificate), but it is a
narrowing: the search goes on against the layer-1 span of what is left, where the found sentences
no longer attract its seeds (a second sentence of a found one's length was otherwise never
found: every seed settled back into the found one).

Each sentence is subtracted under the label (class) that leaves the least behind past the rank of
what is missing (the energy outside the best approximation of that rank).

Where the float32 rounding is wide (the rounding fit engaged, `update_rounding`: lr <~ 1e-3 on
MiniLM) the whole-sentence layer-1 test is loose (the floor is ~10x lr 1e-2's) and a settled
longer sentence cut to a shorter missing length passes it: on SST-2 dev batch 4, K = 4, lr 1e-3,
"by every human ... too little time to [SEP]" (the 21-token sentence cut to 18) sat at 0.75
floors^2 per token and was taken for the 18-token one, which then could never be found. Its
defect sits at one or two tokens (the cut end: 8.8 floors^2 there), where true sentences' worst
token sits at 1.9 (batch 4) to 3.5 (batch 8) floors^2 against the fitted span. So with a `check`
span the peel refuses a sentence one of whose tokens lies more than `TOKEN_SLACK` floors^2 from it.

What a peel leaves, past the rank of what is still missing, is the update's rounding plateau as long as
every sentence peeled is true (the replay is that close at lr 1e-3), and a wrong sentence's difference
from the true one on top of it. So with `rise` set the peel also refuses a sentence whose removal raises
the plateau ratio of what is left (`plateau_ratio`: its energy past that rank over the plateau's in as
many directions) more than `rise` times (`RISE`): where the layered search (`update_layers`) offers a
near miss of a long sentence, its drop test cannot tell it from a true one (SST-2 dev batch 0 of 8, K 4,
lr 1e-3: 14 tokens off, drop 0.204, peeled, and then no true 26-token sentence could come out: its peel
would have left 41 x the plateau), where this ratio does (x 2.86 against at most x 1.06 for true peels).
With `tolerance0` set the peel takes each sentence's replayed share off layer 0's Q/K/V as well, and hands
the search the layer-0 span of what is left (`span0`), so that the per-position candidates of the sentences
still missing are read again against it (`exact.candidates.Candidates.narrow`) and no longer against the
whole update, where every leaked token stands at nearly every position; and, where layer 1's rounding is
fitted, the layer-1 span of what is left is read from the rank-(tokens missing) matrix closest to it inside
the update's rounding box (`span1`; the replay is exact to far within the box at lr 1e-3). Measured from the
ground truth (scratch, `recipes/measured/fedavg_b8_last_s20/`), MiniLM, dev batch 0 of 8, K 4, lr 1e-3, the
short sentences peeled: SST-2 (six peeled) 103 -> 50 candidates per position, every true token of the 44-
and 26-token sentences kept (their mean rank 41 / 29 -> 8.6 / 2.5); RT (five peeled) 136 -> 83, every true
token of the 38-, 38- and 32-token ones kept. Settling from the true 44-token sentence against the raw span
of what is left moves it 7 tokens off (the 26-token one 9); against the fitted span it stays, and settles
back from 4 random tokens swapped (6 of 6), 8 (4 of 6), 16 (3 of 6); with it peeled too, the 26-token one
settles back from 16 swapped (6 of 6; the raw span: 9 off from every seed). On RT the fit brings the true
38s' per-token residuals from 1.96 / 2.11 to 1.23 / 1.41 floors^2, but with three long sentences left they
still settle 5 / 16 tokens off (1 off once one 38 is peeled). On / off (`UpdateExact.rest_spans`; `fl_defences.py
--batch-size 8 --budget 600 --fedavg K,1e-3`, both arms at once, ~165-260 CPU s each at load 6-11): ROUGE-1 SST-2 K 4
0.987 / 0.979, 0.989 / 0.986 and 1.000 / 0.994 (that run the whole batch exact and certified, 8 of 8 against 7; at load
7.4, 197 CPU s), RT K 4 0.831 / 0.726, SST-2 K 8 0.985 / 0.979 (the 44-token sentence exact, 7 of 8 against 6); exact
sentences otherwise tied but once 6 against 7.
With `rows` as well (`UpdateExact.rest_rows`) the peel takes the shares off the word and position embedding rows, and
hands the search the tokens still standing in what is left and, with few sentences left, their ranked positions
(`update_rest_rows`, with its measured figures): on RT the three long sentences that the fitted span does not hold
then come out of at most 12 candidates per position.

Classification only; duck-typed as the `Peeler` the search and its peel certificate use (`working`,
`peel`, `labels`, `sentences`, `slots`, `fitted`).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

import torch

from ..text.layouts import Layout
from ..text.leaks import LayerSpan, padded
from ..text.leaks.noise import span_of
from ..text.leaks.residuals import position_residuals
from ..text.leaks.scale import stacked
from .exact.peeling import Rest
from .update_rest_rows import RestRows, row_names
from .update_rounding import RoundingFits, fit_in_box
from .update_sim import UpdateFacts

#: a peeled sentence's worst token may lie this many floors^2 (squared) from the check span
TOKEN_SLACK = 5.0
#: ... or, with `end_slack` set (`update_layers.LayeredSearch`), its last token this many: measured on
#: RT dev batch 0 of 8, K 4, lr 1e-3 (fitted layer-1 span), true sentences' last token ([SEP]) at
#: 1.9-3.2 floors^2 where their worst inner token reaches 20.5, every cut of one to a shorter batch
#: length at 16.1-24.7 there (SST-2 batch 4's cut above: 8.8)
END_SLACK = 6.0
#: with `rise` set (`update_layers.LayeredSearch`): a peel may raise the plateau ratio of what it leaves
#: (`UpdatePeeler.plateau_ratio`) at most this many times. Measured on SST-2 dev batch 0 of 8 (162 tokens),
#: K 4, lr 1e-3: from 1.00 (the whole update) true peels took it to 1.03, 1.05, 1.09, 1.12, 1.14, 1.17 (each
#: at most x 1.04; the true 44- or 26-token sentence next: x 1.06 / 1.05), the wrong 44-token sentence the
#: layered search took (14 tokens off, drop 0.204) to 3.34 (x 2.86), a 26-token one 9 tokens off to 1.45
#: (x 1.24); RT dev batch 0 of 8: true peels x 1.03-1.06
RISE = 1.15


class UpdatePeeler:
    """Subtracts each found sentence's replayed share of the update (see the module doc).

    layout: the model at w0 (the trajectory starts there); update: U keyed by parameter name;
    lengths: the batch's sentence lengths; check: (the model at the trajectory's midpoint, the
    whole layer-1 span read there) where each token of a peeled sentence must lie within
    `TOKEN_SLACK` floors^2 of that span (None: no per-token test); end_slack: or, where the worst
    token is further, its last token within this many floors^2 (None: no such allowance); tolerance0:
    where set, layer 0's Q/K/V are peeled too and each peel hands the search the layer-0 span of what is
    left, its candidates' residual bound `tolerance0(span)` (None: layer 1 only; see the module doc); fits:
    the run's `RoundingFits`: with `tolerance0`, where layer 1's rounding was fitted, the layer-1 span of what
    is left is fitted in the same box (`span1`); rows: with `tolerance0`, the word and position embedding rows are
    peeled too and each peel hands the search the tokens still standing in what is left and, with few sentences
    left, their ranked positions (`update_rest_rows.RestRows`)."""

    working = True

    def __init__(self, layout: Layout, update: Mapping[str, torch.Tensor], lengths: Sequence[int],
                 facts: UpdateFacts, check: tuple[Layout, Any] | None = None, end_slack: float | None = None,
                 rise: float | None = None, tolerance0: Callable[[LayerSpan], float] | None = None,
                 fits: RoundingFits | None = None, rows: RestRows | None = None):
        self.facts, self.update, self.lengths, self.layout = facts, update, list(lengths), layout
        self.check, self.end_slack, self.rise, self.tolerance0 = check, end_slack, rise, tolerance0
        self.refused: list[list[int]] = []
        self.risen: list[tuple[list[int], float]] = []  # refused by `rise`: (sentence, the ratio it would leave)
        self.names = layout.shared(update, layout.qkv_names(1))
        self.names0 = layout.shared(update, layout.qkv_names(0))
        self.classes = int(layout.model.config.num_labels)
        self.model = copy.deepcopy(layout.model).eval()
        self.params = dict(self.model.named_parameters())
        self.start = {n: p.detach().clone() for n, p in self.params.items()}
        self.device = next(self.model.parameters()).device
        # with `tolerance0`, where layer 1's rounding was fitted: the box it fits what is left in (`span1`)
        fitted = tolerance0 is not None and fits is not None and fits.fits.get(1) is not None
        self.box = fits.matrices(1)[1].to(self.device) if fitted else None
        # what is peeled: layer 1's Q/K/V (the tests read them), and layer 0's where `tolerance0` is set
        self.peeled = self.names + ([n for n in self.names0 if n not in self.names] if tolerance0 else [])
        # with `rows`: the embedding rows too (`update_rest_rows`)
        self.rows = rows if tolerance0 is not None and rows is not None and row_names(layout, update) else None
        self.row_names = row_names(layout, update) if self.rows is not None else []
        self.qkv = list(self.peeled)  # what each trial removal takes off (the rows only once a peel is taken)
        self.peeled += self.row_names
        self.rest = {n: update[n].to(self.device).double().clone() for n in self.peeled}
        self.labels: list[Any] = []
        self.sentences: list[list[int]] = []
        self.slots: list[int] = []
        self.fitted: list[float] = []  # no share is fitted: labels take the batch's mean-loss scale
        self.plateau, self.ratio = self._plateau() if rise is not None else (None, 1.0)

    def _plateau(self) -> tuple[float, float]:
        """The energy per direction of the update's layer-1 Q/K/V past the declared token count (its rounding
        plateau), and the plateau ratio of the whole update (1 by construction)."""
        energy = torch.linalg.svdvals(stacked(self.rest, self.names)).pow(2)
        self.dims, tokens = len(energy), min(sum(self.lengths), len(energy) - 1)
        return float(energy[tokens:].sum()) / (self.dims - tokens), 1.0

    def plateau_ratio(self, tail: float, bound: int) -> float:
        """What is left past its best rank-`bound` approximation (energy `tail`), over what the plateau puts in
        as many directions: ~1 while every peel was true (the replay leaves rounding), more for a wrong one."""
        return tail / max((self.dims - bound) * self.plateau, 1e-300)

    def share(self, seq: Sequence[int], label: int, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """(1/(B K)) sum_k g_seq(w0 - k lr U) on the peeled weights (layer 1's Q/K/V, and 0's with
        `tolerance0`, the embedding rows with `rows`), or on `names` of them, in double."""
        ids, mask = padded([list(seq)], self.device)
        y = torch.tensor([label], device=self.device)
        K, lr, B = self.facts.steps, self.facts.lr, len(self.lengths)
        names = list(self.peeled if names is None else names)
        out = {n: torch.zeros_like(self.rest[n]) for n in names}
        wanted = [self.params[n] for n in names]
        try:
            for k in range(K):
                with torch.no_grad():
                    for n, p in self.params.items():
                        p.copy_(self.start[n] - (k * lr) * self.update[n].to(p.device, p.dtype)
                                if n in self.update else self.start[n])
                with torch.enable_grad():  # the peeler's own copy of the model (its weights move along the steps)
                    loss = self.model(**self.layout.inputs(ids, mask), labels=y).loss
                    grads = torch.autograd.grad(loss, wanted)
                for n, g in zip(names, grads):
                    out[n] += g.double() / (B * K)
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(self.start[n])
        return out

    def _left(self, seq: Sequence[int]) -> list[int]:
        left = list(self.lengths)
        for s in [*self.sentences, seq]:
            if len(s) in left:
                left.remove(len(s))
        return left

    def admits(self, seq: Sequence[int]) -> bool:
        """Whether every token of `seq` lies within `TOKEN_SLACK` floors^2 of the check span (or, with
        `end_slack`, its last token within that many: a cut sentence's defect is its end)."""
        res = self._floors(seq)
        return res is None or float(res.max()) <= TOKEN_SLACK or \
            (self.end_slack is not None and float(res[-1]) <= self.end_slack)

    def strict(self, seq: Sequence[int]) -> bool:
        """Whether every token of `seq` lies within `TOKEN_SLACK` floors^2 of the check span (True without one)."""
        res = self._floors(seq)
        return res is None or float(res.max()) <= TOKEN_SLACK

    def _floors(self, seq: Sequence[int]) -> torch.Tensor | None:
        """Each token's squared residual off the check span, in floors^2 (None without a check span)."""
        if self.check is None:
            return None
        layout, span = self.check
        return position_residuals(layout, span, seq) / span.floor ** 2

    def drop(self, seq: Sequence[int]) -> float:
        """The share of the signal that `seq`'s removal takes out of what is left: with b the rank of what
        its removal leaves and n its length, (t_b(rest) - t_b(rest - share)) / (t_b(rest) - t_{b+n}(rest)),
        t_k the energy past the k-th singular value (least over the labels; see `update_layers.DROP`)."""
        bound = sum(self._left(seq))
        energy = torch.linalg.svdvals(stacked(self.rest, self.names)).pow(2)
        before, plateau = float(energy[bound:].sum()), float(energy[bound + len(seq):].sum())
        after = min(float(torch.linalg.svdvals(stacked({n: self.rest[n] - own[n] for n in self.names}, self.names))
                          [bound:].pow(2).sum()) for own in (self.share(seq, y) for y in range(self.classes)))
        return (before - after) / max(before - plateau, 1e-300)

    def _removal(self, seq: Sequence[int]) -> tuple[tuple[float, int, dict[str, torch.Tensor]], int]:
        """((what is left past its best rank-`bound` approximation, the label, what is left of the Q/K/V) under
        the label that leaves least, bound): `seq` taken out of what is left, nothing committed."""
        bound = sum(self._left(seq))
        best = None
        for label in range(self.classes):
            own = self.share(seq, label, self.qkv)
            trial = {n: self.rest[n] - own[n] for n in self.qkv}
            # what the best rank-`bound` approximation of what is left leaves out (all of it when nothing is left)
            tail = torch.linalg.svdvals(stacked(trial, self.names))[bound:]
            score = float(tail.pow(2).sum())
            if best is None or score < best[0]:
                best = (score, label, trial)
        return best, bound

    def leaves(self, seq: Sequence[int]) -> float:
        """The plateau ratio `seq`'s removal would leave (nothing committed; with `rise` set)."""
        (tail, _, _), bound = self._removal(seq)
        return self.plateau_ratio(tail, bound)

    def peel(self, seq: list[int], last: bool = False) -> Rest | None:
        """Take `seq` out under its likeliest label; the layer-1 span of what is left (None in it
        when nothing is). None: refused (a token off the check span, see `admits`; with `rise`, what its removal
        would leave over `rise` x the plateau ratio of what is left now, see `RISE`)."""
        if not self.admits(seq):
            self.refused.append(list(seq))
            return None
        best, bound = self._removal(seq)
        if self.rise is not None:  # a wrong sentence's removal leaves its difference from the true one
            ratio = self.plateau_ratio(best[0], bound)
            if ratio > self.rise * self.ratio:
                self.risen.append((list(seq), ratio))
                return None
            self.ratio = ratio
        _, label, trial = best
        if self.row_names:  # the embedding rows' share, under the label taken
            own = self.share(seq, label, self.row_names)
            trial.update({n: self.rest[n] - own[n] for n in self.row_names})
        self.rest = trial
        left = self._left(seq)
        span = None if last or not bound else self.span1(bound)
        self.labels.append(label)
        self.sentences.append(list(seq))
        if span is None:
            return Rest(span1=None)
        allowed, positions = self.rows.read(self.rest, left) if self.rows is not None else (None, None)
        return Rest(span1=span, span0=self.span0(bound), allowed=allowed, positions=positions)

    def span1(self, bound: int) -> LayerSpan:
        """The layer-1 span of what is left at rank `bound`; with `tolerance0`, where the rounding is fitted, its
        basis read from the rank-`bound` matrix closest to what is left inside the update's rounding box (moved
        with it: the replay is exact to far within it), its tolerances those of what is left (as
        `update_rounding.RoundingFits.span`)."""
        raw = span_of(stacked(self.rest, self.names), 1, rank_bound=bound, keep_bound=True)
        if self.box is None:
            return raw
        fitted = span_of(fit_in_box(stacked(self.rest, self.names), self.box, bound), 1, rank_bound=raw.rank,
                         keep_bound=True)
        return replace(raw, basis=fitted.basis, _basis32=None)

    def span0(self, bound: int) -> LayerSpan | None:
        """The layer-0 span of what is left at rank `bound` (the tokens still missing), its candidates'
        residual bound `tolerance0` of it (None without `tolerance0`: the search keeps its candidates)."""
        if self.tolerance0 is None or not self.names0:
            return None
        span = span_of(stacked(self.rest, self.names0), 0, rank_bound=bound, keep_bound=True)
        span.tol = self.tolerance0(span)
        return span
