"""One span per sentence at the last encoder layer of a [CLS] classifier, or one per declared
masked position of a masked-LM step: a leak, and a certificate, that hold past the rank limit
(B x L >= H).

A classifier's loss reads only the first position of the last layer ([CLS]: BERT's pooler,
RoBERTa's and ELECTRA's heads, DistilBERT's pre-classifier all take position 0). So the last
layer's query, attention-output and feed-forward weight gradients each sum one rank-one term per
*sentence*, not per token: the row space of each is spanned by the B vectors entering that map at
[CLS]. These spans have rank B whatever the number of tokens (MiniLM, RT batch 64, 1689 tokens:
query, attention output, both feed-forward maps all of rank 64 of 384; key and value, which see
every position, 368 and 371). A masked-LM head reads the last layer at the masked positions only
(the others carry no label), so there the same maps have rank M, the batch's masked positions
(MiniLM, RT batch 16: 392 tokens, M = 64 at all four sites), and a sentence is read at its
slot's declared masked positions (`reads`).

Certificate: a whole guessed sentence is one of the batch's exactly when its [CLS] vectors lie in
these spans; measured (MiniLM, RT batch 64) the true sentences' relative residuals are below 1e-6
at every site, a sentence with one token wrong at least 1.2e-3 (query) and 1.4e-2
(feed-forward). The vectors depend on the whole sentence through every layer, so a guess is
certified whole or not at all; the residual grows with the number of wrong tokens, which ranks
whole guesses but does not single out one position's token while several others are wrong.

Rank: at the *first* clear singular-value drop onto the rounding plateau (the plateau can hold
further drops; taking the last, as `spans.rank_gap` does for layer inputs, failed on CoLA batch
128), and at most the batch size (masked-LM: the masked positions declared). None where the leak
does not hold: masked-LM without declared masked positions, layers that share their weights
(ALBERT), a gradient without the last layer, no clear drop (noise, a defence).

Which maps a family has is the layout's answer (`Layout.linears`); the query is always there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from ..layouts import Layout
from .residuals import padded
from .spans import MIN_GAP

#: a true sentence passes a site while its residual is within this many floors. The floor
#: (first discarded / last kept singular value) reads the batch's own rounding; a sentence
#: recomputed alone rounds differently from the padded batch that was captured (MiniLM, RT batch
#: 16 index 1: "a true pleasure ." alone 1.11 floors at the attention output, 0.18 padded; worst
#: true sentence of RT 16 / SST-2 32, indices 0-1: 1.11), while one token wrong puts a sentence at
#: 77 floors or more at the query and 19766 at the attention output (3 random substitutions per
#: sentence; recipes/measured/beyond_rank_s10.md)
SLACK = 10.0


@dataclass
class SentenceSpans:
    """Row spaces of the last layer's per-sentence (masked-LM: per masked position) weight gradients.

    layer: the last layer's index; bases: site -> [H_in, r] orthonormal (float64); rank: r (the
    sentences with a nonzero loss gradient; masked-LM: the masked positions); floors: site -> the
    relative residual of the batch's own rounding (first discarded / last kept singular value; a
    true sentence shows at most SLACK of them); reads: where a sentence is read, length -> the
    position sets of the batch's slots of that length (masked-LM: each slot's declared masked
    positions; a sentence is read at the set that fits it best), None: position 0 ([CLS]). lean: `certifies` keeps each
    sentence's verdict (for one model: the spans, floors and weights do not change within an attack), reads only
    the sentences it has not judged, shortest first (less padding), and the other sites only for those that pass the
    query (`_passes`); off: every call reads every sentence at every site afresh."""

    layer: int
    bases: dict[str, torch.Tensor]
    rank: int
    floors: dict[str, float]
    reads: dict[int, list[tuple[int, ...]]] | None = None
    lean: bool = False
    _verdicts: dict[tuple[int, ...], bool] = field(default_factory=dict, repr=False, compare=False)
    _model: Any = field(default=None, repr=False, compare=False)

    def residuals(self, layout: Layout, sequences: Sequence[Sequence[int]], *, chunk: int = 64,
                  sites: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Relative residual of each sentence's vectors at every site (its worst position): site -> [S]; `sites`: at
        those only (the forward stops once they are seen: the query alone skips the last layer)."""
        sites = tuple(self.bases) if sites is None else tuple(sites)
        out: dict[str, list[torch.Tensor]] = {k: [] for k in sites}
        for i in range(0, len(sequences), chunk):
            part = sequences[i:i + chunk]
            for k, h in site_inputs(layout, part, self.layer, sites).items():
                h, V = (h if self.reads is not None else h[:, :1]).double(), self.bases[k].to(h.device)
                r = (h - (h @ V) @ V.T).norm(dim=-1) / h.norm(dim=-1).clamp_min(1e-30)  # [S, L]
                out[k].append(self._read(r, part))
        return {k: torch.cat(v).cpu() for k, v in out.items()}

    def _read(self, r: torch.Tensor, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """Per sentence, from the residual at every position [S, L]: at [CLS], or the least over its
        length's position sets of the worst position in the set (inf: no set, no masked position)."""
        if self.reads is None:
            return r[:, 0]
        out = torch.full((len(sequences),), float("inf"), dtype=r.dtype, device=r.device)
        for s, seq in enumerate(sequences):
            for pos in self.reads.get(len(seq), ()):
                if pos:
                    out[s] = torch.minimum(out[s], r[s, list(pos)].max())
        return out

    def score(self, layout: Layout, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """One number per sentence to rank guesses: the mean over sites of log10(residual / floor)
        (0 or below: at the rounding of a true sentence)."""
        res = self.residuals(layout, sequences)
        return torch.stack([torch.log10(r.clamp_min(1e-30) / self.floors[k]) for k, r in res.items()]).mean(0)

    def certifies(self, layout: Layout, sequences: Sequence[Sequence[int]]) -> list[bool]:
        """Whether each sentence's [CLS] vectors lie in every span, to the gradient's rounding (`lean`: a sentence
        judged before keeps its verdict; the rest are read once each, shortest first, the query site first)."""
        if not self.lean:
            return self._passes(layout, sequences)
        if self._model is not layout.model:
            self._verdicts, self._model = {}, layout.model
        new = sorted({tuple(s) for s in sequences} - self._verdicts.keys(), key=len)
        if new:
            self._verdicts.update(zip(new, self._passes(layout, new)))
        return [self._verdicts[tuple(s)] for s in sequences]

    def _passes(self, layout: Layout, sequences: Sequence[Sequence[int]]) -> list[bool]:
        """`certifies` read afresh for every sentence. `lean`: the query site first, at the last layer's input (the
        last layer not run), and every site, as without it, only for the sentences that pass there (one token off
        fails there already: the module doc); the same test, each site held to the same bound."""
        ok = torch.ones(len(sequences), dtype=torch.bool)
        idx = list(range(len(sequences)))
        if self.lean and len(self.bases) > 1:
            ok = self.residuals(layout, sequences, sites=("query",))["query"] <= SLACK * self.floors["query"]
            idx = ok.nonzero().flatten().tolist()
        if idx:
            for k, r in self.residuals(layout, [sequences[i] for i in idx]).items():
                ok[idx] &= r <= SLACK * self.floors[k]
        return ok.tolist()


def first_gap(matrix: torch.Tensor, most: int) -> tuple[int, torch.Tensor, torch.Tensor] | None:
    """(rank, singular values relative to the largest, right singular vectors) where the spectrum
    drops clearly (MIN_GAP) onto the rounding plateau at or below `most` directions, else None."""
    _, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    if float(s[0]) == 0.0:
        return None
    s = s / s[0]
    floor = math.sqrt(torch.finfo(matrix.dtype).eps if matrix.dtype.is_floating_point else torch.finfo().eps)
    ratios = s[:-1] / s[1:].clamp_min(1e-300)
    ratios = torch.where(s[1:] < floor, ratios, torch.zeros_like(ratios))
    clear = (ratios >= MIN_GAP).nonzero().flatten()
    if len(clear) == 0 or int(clear[0]) + 1 > most:
        return None
    return int(clear[0]) + 1, s, vh


def sentence_spans(layout: Layout, gradients: Mapping[str, torch.Tensor], batch_size: int | None,
                   task: str, masks: Mapping[int, Sequence[Sequence[int]]] | None = None) -> SentenceSpans | None:
    """The last layer's per-sentence spans, or None where they do not hold (module doc). Masked-LM
    needs `masks`: length -> each slot's declared masked positions (`exact.candidates.declared_masks`)."""
    last = layout.num_layers - 1
    if task not in ("classify", "mlm") or last < 1 or layout.qkv_sharing(last) != 1:
        return None
    reads = None
    if task == "mlm":
        if not masks:
            return None
        reads = {int(n): [tuple(sorted(int(p) for p in pos)) for pos in slots] for n, slots in masks.items()}
        batch_size = sum(len(pos) for slots in reads.values() for pos in slots)  # M: one term per masked position
    sites = {k: layout.name(m.weight) for k, m in layout.linears(last).items()}
    if sites["query"] not in gradients:
        return None
    most = batch_size if batch_size is not None else min(gradients[sites["query"]].shape)
    bases, floors, rank = {}, {}, None
    for site, name in sites.items():
        got = first_gap(gradients[name], most) if name in gradients else None
        if got is None or (rank is not None and got[0] != rank):
            continue  # a site that disagrees with the query on the rank is left out
        rank, (r, s, vh) = got[0], got
        bases[site] = vh[:r].T.contiguous().to(layout.device)
        floors[site] = float(s[r] / s[r - 1]) if r < len(s) else 1.0
    if "query" not in bases:
        return None
    return SentenceSpans(last, bases, rank, floors, reads)


def site_inputs(layout: Layout, sequences: Sequence[Sequence[int]], layer: int, sites: Sequence[str]
                ) -> dict[str, torch.Tensor]:
    """What enters each site of layer `layer` at every position, per sentence: site -> [S, L, H_in]
    (one padded forward, stopped once every site is seen)."""
    ids, mask = padded(sequences, layout.device)
    modules = layout.linears(layer)
    with torch.no_grad():
        seen = layout.module_inputs(ids, mask, {s: (modules[s], 0) for s in sites})
    return {s: h.detach() for s, h in seen.items()}
