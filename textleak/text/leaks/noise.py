"""Layer spans read through noise: the rank and the span test calibrated from the noise itself.

A linear layer's weight gradient is G = D X^T (rank r = the number of distinct inputs), and the
plain span test (`spans.rank_gap`) finds r at the drop of the singular values to float
rounding. Whatever the victim adds to what it shares lifts that floor to a plateau:

- additive noise (`noise:VAR`, DP-SGD) adds i.i.d. entries, whose singular values fill a
  Marchenko-Pastur bulk up to sigma (sqrt(m) + sqrt(n)) for an m x n matrix;
- a FedAvg update recorded in float32 carries the rounding of each local step's weight update,
  about ulp(w) / (lr K) per entry (measured on MiniLM, K = 4, lr 1e-2, batch 4: the relative
  spectrum is flat at 2.4e-4 past the rank, 1e-5 when the same steps run in float64), and the
  drift of the K steps adds a few weak directions.

So the spectrum is signal above a plateau. `noisy_layer_span` sets the plateau's level (`edge`)
from the noise (the singular values past a known upper bound on the rank, such as the declared
lengths' token count, or a given noise standard deviation through the Marchenko-Pastur edge),
keeps the directions that stand `margin` times above it, and certifies members relative to it:

- `NoisySpan.floor` is sqrt(edge / s_0): on MiniLM FedAvg updates (lr 1e-2..1e-1, K 1..8,
  batches 1..8, 11 batches) true layer-1 sentences have a per-token squared residual of at most
  2e-5 and sentences with one token wrong at least 3e-3, with the relative plateau at 1e-4..3e-4;
  at lr 1e-3 the plateau is ~2e-3, true tokens reach 1.3e-3 and one-token-wrong ones start at
  5.8e-3 (the weakest directions sink into the rounding); at lr 1e-4 no layer-1 test separates them;
- `exact` is True when some directions clear the plateau by `margin`.

Numbers are relative to the largest singular value, as in `spans.LayerSpan`. Registered span
test "plateau" (no rank bound, no known noise level: the plateau is twice the median singular
value); attacks that know more read spans with a `SpanReader` (declared lengths bound the rank; a
noise level read off the gradient sets the Marchenko-Pastur edge).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import torch

from ..layouts import Layout
from .found import FoundSpan
from .spans import SPAN_TESTS
from .memo import memo

#: a direction counts as signal when its singular value is this many times the noise plateau
MARGIN = 3.0
#: under additive noise a direction counts once it clears the Marchenko-Pastur edge by this factor
NOISE_MARGIN = 1.5
#: how many singular values past the rank bound estimate the plateau
TAIL = 20


@dataclass
class NoisySpan(FoundSpan):
    """A `LayerSpan` whose rank and tolerances come from the noise plateau `edge` (relative)."""

    edge: float = 0.0
    margin: float = MARGIN
    source: str = ""
    scale: float = 1.0  # the largest singular value, absolute (the spectrum is relative to it)
    signal: int = 0  # how many directions clear the plateau by `margin` (the rank may keep more)

    @property
    def floor(self) -> float:
        return math.sqrt(max(self.edge, 1e-300))

    @property
    def exact(self) -> bool:
        return 0 < self.rank < self.basis.shape[0] and self.gap >= self.margin

    def strict(self) -> "NoisySpan":
        """This span less the directions that do not clear the plateau (those a rank bound kept)."""
        if self.rank <= self.signal or self.signal < 1:
            return self
        return replace(self, basis=self.basis[:, :self.signal].contiguous(), rank=self.signal, _basis32=None,
                       found=None, found_basis=None)


def gradient_matrix(layout: Layout, gradients: Mapping[str, torch.Tensor], layer: int) -> torch.Tensor:
    """The stacked Q/K/V weight gradients of `layer` in double [3H, H], on the model's device;
    MissingKnowledgeError naming the parameters when the file shares none of them."""
    return layout.qkv_gradient(gradients, layer, "the span test")


def mp_edge(sigma: float, rows: int, cols: int) -> float:
    """Largest singular value an i.i.d. N(0, sigma^2) rows x cols matrix reaches (Marchenko-Pastur)."""
    return sigma * (math.sqrt(rows) + math.sqrt(cols))


def noisy_layer_span(layout: Layout, gradients: Mapping[str, torch.Tensor], layer: int, *, rank_bound: int | None = None,
                     sigma: float | None = None, margin: float = MARGIN, keep_bound: bool = False) -> NoisySpan:
    """The span of `layer`'s inputs read above the noise plateau.

    rank_bound: at most this many inputs (e.g. the declared lengths' token count): the singular
        values past it are noise, and their mean is the plateau. sigma: the noise's standard
        deviation per entry, if known (the plateau is then its Marchenko-Pastur edge). With
        neither, the plateau is twice the median singular value (the bulk of a noise-filled
        spectrum). The span keeps the directions above margin x plateau, or with `keep_bound`
        all `rank_bound` of them (weak inputs sit near the plateau: measured on FedAvg updates,
        true tokens' residuals are 2-5x lower with them, wrong ones' unchanged); `gap` is the
        weakest kept signal direction over the plateau either way.
    """
    return span_of(gradient_matrix(layout, gradients, layer), layer, rank_bound=rank_bound, sigma=sigma, margin=margin,
                   keep_bound=keep_bound)


def span_of(G: torch.Tensor, layer: int, *, rank_bound: int | None = None, sigma: float | None = None,
            margin: float = MARGIN, keep_bound: bool = False) -> NoisySpan:
    """`noisy_layer_span` of a stacked weight-gradient matrix G [m, H]."""
    _, s, vh = torch.linalg.svd(G, full_matrices=False)
    top = float(s[0]) if float(s[0]) > 0 else 1.0
    s = s / top
    H = G.shape[1]
    if sigma is not None:
        edge, source = mp_edge(sigma, *G.shape) / top, "Marchenko-Pastur edge of the given noise level"
        if rank_bound is not None and rank_bound < H - 1 and float(s[rank_bound]) > edge:
            # past the rank bound only noise is left: singular values above the edge there mean this
            # matrix is noisier than the level given (noise scaled per tensor), so its tail sets the plateau
            edge, source = float(s[rank_bound]), f"singular value past the rank bound {rank_bound} (above the " \
                "Marchenko-Pastur edge of the given noise level)"
    elif rank_bound is not None and rank_bound < H - 1:
        tail = s[rank_bound: rank_bound + TAIL]
        edge, source = float(tail.mean()), f"mean of the singular values past the rank bound {rank_bound}"
    else:
        edge, source = 2 * float(s.median()), "twice the median singular value"
    edge = max(edge, float(torch.finfo(torch.float64).eps))
    signal = int((s > margin * edge).sum())
    if rank_bound is not None:
        signal = min(signal, rank_bound)
    rank = rank_bound if keep_bound and rank_bound is not None else signal
    rank = max(1, min(rank, H - 1))
    gap = float(s[max(signal, 1) - 1]) / edge
    tol = min(0.1, math.sqrt(math.sqrt(edge)))
    return NoisySpan(layer, vh[:rank].T.contiguous(), s, rank, gap, tol, edge=edge, margin=margin, source=source,
                     scale=top, signal=signal)


@dataclass
class NoiseLevel:
    """The standard deviation of additive noise per shared entry, and where it was read."""

    sigma: float
    source: str
    entries: int


def noise_level(layout: Layout, gradients: Mapping[str, torch.Tensor], max_length: int | None = None
                ) -> NoiseLevel | None:
    """Additive noise read off the parts of the gradient that carry no signal, or None when they
    are exactly zero (no noise).

    Signal-free entries: the word-embedding rows of tokens outside the batch (an untied head's
    gradient is zero there; with a tied head they carry signal and are skipped), the position
    rows past the longest sentence (`max_length`, when known), and the second token-type row
    (single-segment inputs never use it). sigma = 1.4826 x the median absolute entry (a
    median is not moved by the few signal rows among thousands). Read once per set of tensors
    (`memo`: the preflights, the variant choice and the attack each ask)."""
    word, pos, types = layout.word_embedding_name, layout.position_embedding_name, layout.token_type_embeddings
    type_name = layout.name(types.weight) if types is not None else None
    used = [gradients[n] for n in (word, pos, type_name) if n is not None and n in gradients]
    if not used:
        return None
    key = f"noise_level|{type(layout).__name__}|{layout.tied}|{max_length}|{word in gradients}|{pos in gradients}"
    return memo(used[0], key, lambda: _noise_level(layout, gradients, max_length), also=used[1:])


def _noise_level(layout: Layout, gradients: Mapping[str, torch.Tensor], max_length: int | None) -> NoiseLevel | None:
    parts = []
    word = layout.word_embedding_name
    if word in gradients and not layout.tied:
        rows = gradients[word]
        norms = rows.double().norm(dim=1)
        if float(norms.median()) > 0 and float((norms > 3 * norms.median()).float().mean()) < 0.05:
            parts.append(rows[norms <= 3 * norms.median()].flatten())  # noise-like rows only
    pos = layout.position_embedding_name
    if pos in gradients and max_length is not None:
        start = int(layout.position_ids(max_length))
        if start < gradients[pos].shape[0]:
            parts.append(gradients[pos][start:].flatten())
    types = layout.token_type_embeddings
    if types is not None and types.weight.shape[0] > 1 and layout.name(types.weight) in gradients:
        parts.append(gradients[layout.name(types.weight)][1:].flatten())
    if not parts:
        return None
    entries = torch.cat([p.double().cpu() for p in parts])
    sigma = 1.4826 * float(entries.abs().median())
    if not sigma > 0:
        return None
    return NoiseLevel(sigma, "1.4826 x median |entry| of the signal-free word-embedding rows, position rows "
                             "past the longest sentence and the unused token-type row", len(entries))


@SPAN_TESTS.register("plateau")
def plateau(matrices: Sequence[torch.Tensor], layer: int) -> NoisySpan:
    """The span read above a noise plateau with nothing else known: twice the median singular
    value (the bulk of a noise-filled spectrum); `SpanReader` reads it with a rank bound or a
    noise level."""
    return span_of(torch.cat([m.double() for m in matrices], 0), layer)


class SpanReader:
    """Reads layer spans above a plateau, with the rank bounded by the declared lengths' tokens
    (layer 0 sees the B sentences' [CLS] inputs as one, at position 0) and, under additive noise,
    the plateau at the noise's Marchenko-Pastur edge (`sigma`, with `margin`). With a bound, the
    span keeps all of its directions, the weak ones near the plateau too (`NoisySpan.strict` drops
    them): under noise variance 1e-10, CoLA dev batch 4 (33 layer-0 inputs, 26 above the edge x 1.5),
    true tokens' squared layer-0 residuals fall from up to 0.31 to at most 0.063, and at layer 1 true
    sentences score 0.010-0.031 per token against 0.022-0.083 on the signal directions alone, with
    a token changed 0.025-0.062 (0.028-0.118)."""

    def __init__(self, lengths: Sequence[int] | None, special_tokens: bool = True, sigma: float | None = None,
                 margin: float | None = None):
        self.lengths = list(lengths) if lengths is not None else None
        self.special, self.sigma = special_tokens, sigma
        self.margin = margin if margin is not None else (NOISE_MARGIN if sigma is not None else MARGIN)

    def bound(self, layer: int) -> int | None:
        if not self.lengths:
            return None
        shared = len(self.lengths) - 1 if layer == 0 and self.special else 0
        return sum(self.lengths) - shared

    def __call__(self, layout: Layout, gradients: Mapping[str, torch.Tensor], layer: int) -> NoisySpan:
        G = gradient_matrix(layout, gradients, layer)
        return span_of(G, layer, rank_bound=self.bound(layer), sigma=self.sigma, margin=self.margin, keep_bound=True)
