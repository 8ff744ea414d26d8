"""One span per sentence: the last encoder layer of a [CLS]-pooling classifier (a leak that
holds past the rank limit).

A classifier's loss reads only the first position of the last layer ([CLS]: BERT's pooler, or
a head on position 0). So the last layer's query, attention-output, and feed-forward weight
gradients each sum one rank-one term per *sentence*, not per token: the row space of the
query weight gradient is spanned by the B vectors entering the last layer at [CLS], that of the
feed-forward input weight by the B vectors entering the feed-forward block at [CLS]. These
spans have rank B whatever the number of tokens, so they hold far past the rank limit of the
first layers (B x L > H; MiniLM: RT batch 64, 1689 tokens, every span of rank 64 of 384).

Certificate: a whole guessed sentence is a batch sentence exactly when its vectors at [CLS]
lie in these spans (relative residual at the gradient's rounding: measured below 1e-7 on RT
batch 64, against at least 1e-3 with one token wrong). The vectors depend on the whole sentence
(every layer), so a guess is certified whole or not at all; the residual grows with the number of
wrong tokens (RT batch 64, median relative residual at the query input: 0.0039 with one token
wrong, 0.0067 with four, 0.0128 for random tokens at the right positions), which ranks guesses
but, measured, does not single out one position's token while several others are wrong.

Sites: `query` (input of the last layer's attention query), `context` (input of its attention
output projection), `ffn` (input of its feed-forward block), `ffn_hidden` (the feed-forward
block's hidden activations, 4H wide: its span has rank B in 4H dimensions). Masked-LM heads read every masked
position, and the span there has one direction per masked token (not handled here).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

#: module under the last encoder layer whose *input* at position 0 spans each weight gradient
SITES = {
    "query": ("attention.self.query", r"attention\.self\.query\.weight$"),
    "context": ("attention.output.dense", r"attention\.output\.dense\.weight$"),
    "ffn": ("intermediate.dense", r"intermediate\.dense\.weight$"),
    "ffn_hidden": ("output.dense", r"output\.dense\.weight$"),
}
#: a clear drop between consecutive singular values (as `leakage.MIN_GAP`)
MIN_GAP = 10.0


class _Stop(Exception):
    pass


@dataclass
class SentenceSpans:
    """Row spaces of the last layer's per-sentence weight gradients.

    bases: site -> [H, r] orthonormal (float64); rank: r (the sentences with a nonzero loss
    gradient); floors: site -> the largest relative residual a true sentence can show (the
    gradient's rounding over its weakest direction: next / last kept singular value)."""

    layer: int
    bases: dict[str, torch.Tensor]
    rank: int
    floors: dict[str, float]
    _bases32: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def residuals(self, model: torch.nn.Module, sequences: Sequence[Sequence[int]],
                  *, chunk: int = 64) -> dict[str, torch.Tensor]:
        """Relative residual of each sentence's [CLS] vectors at every site: site -> [S]."""
        out: dict[str, list[torch.Tensor]] = {k: [] for k in self.bases}
        for i in range(0, len(sequences), chunk):
            vecs = sentence_vectors(model, sequences[i:i + chunk], self.layer, tuple(self.bases))
            for k, h in vecs.items():
                h = h.double()
                V = self.bases[k]
                out[k].append((h - (h @ V) @ V.T).norm(dim=1) / h.norm(dim=1).clamp_min(1e-30))
        return {k: torch.cat(v) if v else torch.empty(0, dtype=torch.double) for k, v in out.items()}

    def score(self, model: torch.nn.Module, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """One number per sentence to rank guesses: the mean over sites of the residual relative
        to that site's floor, in log scale (0 or below: at the rounding of a true sentence)."""
        res = self.residuals(model, sequences)
        logs = [torch.log10(r.clamp_min(1e-30) / self.floors[k]) for k, r in res.items()]
        return torch.stack(logs).mean(0)

    def certifies(self, model: torch.nn.Module, sequences: Sequence[Sequence[int]]) -> list[bool]:
        """Whether each sentence's [CLS] vectors lie in every span, to the gradient's rounding."""
        res = self.residuals(model, sequences)
        ok = torch.ones(len(sequences), dtype=torch.bool)
        for k, r in res.items():
            ok &= r <= self.floors[k]
        return ok.tolist()


def _last_layer_names(gradients: Mapping[str, torch.Tensor], layers: int) -> dict[str, str]:
    names = {}
    for site, (_, suffix) in SITES.items():
        rx = re.compile(rf"encoder\.layer\.{layers - 1}\.{suffix}")
        hits = [n for n in gradients if rx.search(n)]
        if hits:
            names[site] = hits[0]
    return names


def _rank_at_gap(M: torch.Tensor, dtype: torch.dtype, most: int) -> tuple[int, torch.Tensor, torch.Tensor] | None:
    """(rank, singular values relative to the largest, right singular vectors) when the spectrum
    drops clearly onto the rounding plateau at or below `most` directions, else None."""
    _, s, vh = torch.linalg.svd(M.double(), full_matrices=False)
    if float(s[0]) == 0.0:
        return None
    s = s / s[0]
    floor = math.sqrt(torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float32).eps)
    ratios = s[:-1] / s[1:].clamp_min(1e-300)
    ratios = torch.where(s[1:] < floor, ratios, torch.zeros_like(ratios))
    clear = (ratios >= MIN_GAP).nonzero().flatten()
    if len(clear) == 0:
        return None
    # the first clear drop onto the rounding plateau (the plateau itself may hold further drops)
    r = int(clear[0]) + 1
    if r > most:
        return None
    return r, s, vh


def sentence_spans(model: torch.nn.Module, gradients: Mapping[str, torch.Tensor], batch_size: int | None,
                   task: str) -> SentenceSpans | None:
    """The last layer's per-sentence spans, or None where they do not exist: not a classifier,
    a gradient without the last layer, no clear rank gap (noise or a defence), or a rank above
    the batch size (the loss reads more than one position per sentence)."""
    if task != "classify":
        return None
    layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    if layers < 2:
        return None  # the last layer is the first: the token-level spans already apply there
    names = _last_layer_names(gradients, layers)
    if "query" not in names:
        return None
    most = batch_size if batch_size is not None else min(gradients[names["query"]].shape)
    bases, floors, rank = {}, {}, None
    for site, name in names.items():
        got = _rank_at_gap(gradients[name], gradients[name].dtype, most)
        if got is None:
            continue
        r, s, vh = got
        if rank is not None and r != rank:
            continue  # a site that disagrees on the rank is left out
        rank = r
        bases[site] = vh[:r].T.contiguous()
        floors[site] = float(s[r] / s[r - 1]) if r < len(s) else 1.0
    if "query" not in bases:
        return None
    return SentenceSpans(layers - 1, bases, rank, floors)


def sentence_vectors(model: torch.nn.Module, sequences: Sequence[Sequence[int]], layer: int,
                     sites: Sequence[str] = tuple(SITES)) -> dict[str, torch.Tensor]:
    """What enters each site of encoder layer `layer` at position 0, per sentence: site -> [S, H]
    (padded batch; the forward stops once every site is seen)."""
    L = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), L, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, s in enumerate(sequences):
        ids[b, :len(s)] = torch.as_tensor(list(s))
        mask[b, :len(s)] = 1
    block = model.base_model.encoder.layer[layer]
    seen: dict[str, torch.Tensor] = {}
    wanted = set(sites)

    def grab(site):
        def hook(module, args):
            seen[site] = args[0][:, 0].detach()
            if wanted <= set(seen):
                raise _Stop
        return hook

    handles = [block.get_submodule(SITES[s][0]).register_forward_pre_hook(grab(s)) for s in sites]
    try:
        with torch.no_grad():
            model.base_model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return seen
