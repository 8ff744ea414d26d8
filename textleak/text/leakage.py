"""Analytic leaks from a BERT-style text gradient: labels, token sets, lengths, layer input spans.

Nothing here optimises; each function reads facts straight off the shared gradient.

Labels (classification): the classifier bias gradient is mean_i (p_i - y_i), so for one example
its only negative entry is the label (iDLG, Zhao et al. 2020); for B examples the label counts are
round(sum_i p_i - B * grad), estimated before the inputs are known with p_i = 1/C, and exact
afterwards from the classifier weight gradient (`assign_class_labels`).
Labels (masked-LM): the output bias gradient is mean over masked positions of (p - y); its
negative entries are the masked tokens, -M * grad their counts (`mlm_label_counts`).
Token set: for heads that do not reuse the word embeddings, the nonzero rows of the word-embedding
gradient are exactly the input tokens (`embedding_token_set`); under additive noise, the rows whose
norm stands out of the noise rows' distribution (`noisy_token_set`).
Positions (untied heads): each occurrence's share of the word- and position-embedding gradient
rows is orthogonal to its own LayerNorm input, which places most tokens (`token_positions`).
Length: rows of the position-embedding gradient are nonzero for positions < the longest sequence.
Spans: the weight gradient of a linear map W x is sum_i delta_i x_i^T, so its row space is spanned
by the inputs x_i of that layer when fewer than its width (`LayerSpan`; DAGER, Petrov et al. 2024).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from ..errors import MissingKnowledgeError

#: below this ratio between consecutive singular values there is no usable rank gap
MIN_GAP = 10.0
#: the masked-LM output bias, whose gradient counts the masked tokens
MLM_OUTPUT_BIAS = r"(cls\.predictions\.bias|predictions\.decoder\.bias|lm_head\.bias)$"


def _find(gradients: Mapping[str, torch.Tensor], pattern: str) -> str | None:
    rx = re.compile(pattern)
    hits = [n for n in gradients if rx.search(n)]
    return hits[0] if hits else None


def _need(gradients: Mapping[str, torch.Tensor], pattern: str, what: str) -> str:
    name = _find(gradients, pattern)
    if name is None:
        raise MissingKnowledgeError(f"{what} needs the gradient of {pattern.strip('^$')} , which the file does not share")
    return name


# -- labels ------------------------------------------------------------------------------
def class_label_counts(gradients: Mapping[str, torch.Tensor], batch_size: int) -> list[int]:
    """How many examples of each class, from the classifier bias gradient (iDLG when B=1)."""
    g = gradients[_need(gradients, r"(^|\.)classifier(\.out_proj)?\.bias$", "label recovery")].double()
    C = g.numel()
    if batch_size == 1:
        counts = [0] * C
        counts[int(g.argmin())] = 1
        return counts
    est = torch.clamp(torch.round(batch_size / C - batch_size * g), min=0).long().tolist()
    # the counts must add up to B: fix rounding on the classes with the most negative gradient
    order = torch.argsort(g).tolist()
    while sum(est) > batch_size:
        c = next(c for c in reversed(order) if est[c] > 0)
        est[c] -= 1
    i = 0
    while sum(est) < batch_size:
        est[order[i % C]] += 1
        i += 1
    return est


def assign_class_labels(gradients: Mapping[str, torch.Tensor], pooled: torch.Tensor,
                        probs: torch.Tensor) -> list[int]:
    """Each example's class once its pooled features [B, H] and probabilities [B, C] are known.

    The classifier weight gradient is (P - Y)^T pooled / B, so Y^T = (P^T pooled - B G) pooled^+.
    """
    name = _need(gradients, r"(^|\.)classifier(\.out_proj)?\.weight$", "per-example label recovery")
    G = gradients[name].double()
    B = pooled.shape[0]
    pooled, probs = pooled.double(), probs.double()
    yt = (probs.T @ pooled - B * G) @ torch.linalg.pinv(pooled)
    return yt.argmax(0).tolist()


def mlm_label_counts(gradients: Mapping[str, torch.Tensor], n_masked: int | None) -> dict[int, int]:
    """Masked tokens and their counts from the output-bias gradient (negative entries)."""
    name = _need(gradients, MLM_OUTPUT_BIAS, "masked-token recovery")
    g = gradients[name].double()
    neg = (g < 0).nonzero().flatten()
    if n_masked is None:
        return {int(t): 1 for t in neg.tolist()}
    counts = {int(t): max(1, int(round(-n_masked * float(g[t])))) for t in neg.tolist()}
    return counts


# -- tokens and lengths ------------------------------------------------------------------------
def word_embedding_name(gradients: Mapping[str, torch.Tensor]) -> str | None:
    return _find(gradients, r"embeddings\.word_embeddings\.weight$")


def embedding_token_set(gradients: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """The input token ids when the word-embedding gradient is sparse, else None (tied heads)."""
    name = word_embedding_name(gradients)
    if name is None:
        return None
    nonzero = (gradients[name].abs().sum(1) > 0).nonzero().flatten()
    if len(nonzero) > 0.5 * gradients[name].shape[0]:
        return None  # dense: a tied output layer writes to every row
    return nonzero


def noisy_token_set(gradients: Mapping[str, torch.Tensor], *, z: float = 8.0) -> torch.Tensor | None:
    """Input token ids read off a word-embedding gradient that noise has made dense, or None.

    Only for untied heads (classification), where a row is signal only if its token was in the
    batch: every other row is pure noise, so the noise-row norm distribution is estimated from
    the rows themselves (median and MAD: the few signal rows cannot move them) and the rows
    more than `z` robust standard deviations above it are kept, largest first. With 30k noise
    rows, z = 8 admits a false token with probability far below 1e-6 for Gaussian noise.
    """
    name = word_embedding_name(gradients)
    if name is None:
        return None
    norms = gradients[name].double().norm(dim=1)
    median = norms.median()
    spread = 1.4826 * (norms - median).abs().median()
    if float(spread) <= 0:
        return None
    hits = (norms > median + z * spread).nonzero().flatten()
    if len(hits) == 0 or len(hits) > 0.01 * len(norms):
        return None  # nothing stands out, or the rows are not noise-like (e.g. a tied head)
    return hits[torch.argsort(norms[hits], descending=True)]


def max_length(gradients: Mapping[str, torch.Tensor]) -> int | None:
    """The longest sequence of the batch: padded positions get no gradient."""
    name = position_embedding_name(gradients)
    if name is None:
        return None
    rows = (gradients[name].abs().sum(1) > 0).nonzero().flatten()
    return int(rows.max()) + 1 if len(rows) else None


def position_embedding_name(gradients: Mapping[str, torch.Tensor]) -> str | None:
    return _find(gradients, r"embeddings\.position_embeddings\.weight$")


@dataclass
class TokenPositions:
    """Where each input token stands, read off the embedding gradients (`token_positions`).

    allowed: per position, the tokens that may stand there (those placed there, and, unless the
    position is closed, every token not placed everywhere it occurs); placed: token -> the
    positions found for it; complete: tokens placed at every position they occur; closed:
    positions whose every occupant is placed; threshold: the relative residual below which a
    share counts as orthogonal (the gradient dtype's precision)."""

    allowed: list[set[int]]
    placed: dict[int, set[int]]
    complete: set[int]
    closed: set[int]
    threshold: float


def token_positions(model: torch.nn.Module, gradients: Mapping[str, torch.Tensor], tokens: Sequence[int],
                    length: int, occupants: Sequence[int] | None = None) -> TokenPositions | None:
    """Positions of the input tokens from the word- and position-embedding gradients, or None
    when the gradient lacks them (tied heads make the word-embedding gradient dense).

    The gradient reaching a LayerNorm's input is orthogonal to that input once centred (and to
    the ones vector): LayerNorm is invariant to shifting and scaling its input. Each occurrence
    of token t at position i adds such a share u to row t of the word-embedding gradient and to
    row i of the position-embedding gradient, with u orthogonal to E[t] + P[i] + T[0]. So a row
    t whose token stands at one position only (most content words) is orthogonal to exactly
    that position's input, and to no other (relative residuals ~1e-8 against ~1e-2 in float32):
    the token is placed. Placed shares are subtracted from their position rows; a position row
    left with one unplaced occupant is orthogonal to that occupant's input alone, which places
    it too, and its share comes off that token's row, which may leave the token one position to
    find; repeated until nothing changes (a peeling decoder). Tokens at several positions that
    this cannot separate (frequent words) stay allowed everywhere but at closed positions.
    `occupants` (tokens per position, from declared lengths) closes a position once as many
    tokens are placed there. The threshold is the capture's precision (its dtype's eps): under
    noise or a defence nothing is that orthogonal, nothing is placed, and layer 0's candidates
    stand as they are.
    """
    word, pos = word_embedding_name(gradients), position_embedding_name(gradients)
    if word is None or pos is None or embedding_token_set(gradients) is None:
        return None
    emb = model.base_model.embeddings
    dtype = gradients[word].dtype
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float32).eps
    with torch.no_grad():
        E = emb.word_embeddings.weight.double()
        P = emb.position_embeddings.weight.double()[:length]
        T = emb.token_type_embeddings.weight.double()[0] if getattr(emb, "token_type_embeddings", None) is not None \
            else torch.zeros(E.shape[1], dtype=torch.double)
    tokens = [int(t) for t in tokens]
    rows = {t: gradients[word][t].double().clone() for t in tokens}
    scale = {t: float(rows[t].norm()) for t in tokens}
    pos_rows = gradients[pos][:length].double().clone()
    pos_scale = pos_rows.norm(dim=1).clone()  # grows by each share subtracted (rounding scales with it)

    def inputs(t: int, at) -> torch.Tensor:
        z = E[t] + P[at] + T
        return z - z.mean(-1, keepdim=True)

    def orthogonality(v: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return (z @ v).abs() / (z.norm(dim=-1) * v.norm()).clamp_min(1e-300)

    # a true share is orthogonal up to the capture's rounding (float32: below half its precision
    # in every batch measured), others near 1/sqrt(H). A looser threshold (at a gap among the
    # residuals, tried first) let a chance near-orthogonality of a token standing at two
    # positions pass: once in 138 measured batches (recipes/token_positions.py)
    threshold = eps
    placed: dict[int, set[int]] = {t: set() for t in tokens}
    complete: set[int] = set()
    closed: set[int] = set()

    def place(t: int, i: int, share: torch.Tensor) -> None:
        placed[t].add(i)
        rows[t] -= share
        pos_rows[i] -= share
        pos_scale[i] += float(share.norm())

    changed = True
    while changed:
        changed = False
        for t in tokens:
            if t in complete:
                continue
            if float(rows[t].norm()) <= threshold * scale[t]:
                complete.add(t)
                changed = True
                continue
            hits = (orthogonality(rows[t], inputs(t, slice(None))) < threshold).nonzero().flatten().tolist()
            if len(hits) == 1 and hits[0] not in closed:
                place(t, hits[0], rows[t].clone())
                complete.add(t)
                changed = True
        for i in range(length):
            if i in closed:
                continue
            here = [t for t in tokens if i in placed[t]]
            if float(pos_rows[i].norm()) <= threshold * float(pos_scale[i]) or \
                    (occupants is not None and len(here) >= occupants[i]):
                closed.add(i)
                changed = True
                continue
            open_ = [t for t in tokens if t not in complete]
            hits = [t for t in open_ if float(orthogonality(pos_rows[i], inputs(t, i))) < threshold]
            if len(hits) == 1:  # one occupant left unplaced: the whole rest of the row is its share
                place(hits[0], i, pos_rows[i].clone())
                closed.add(i)
                changed = True
    loose = {t for t in tokens if t not in complete}
    allowed = [{t for t in tokens if i in placed[t]} | (set() if i in closed else loose) for i in range(length)]
    return TokenPositions(allowed, {t: p for t, p in placed.items() if p}, complete, closed, threshold)


# -- layer input spans ---------------------------------------------------------------------------
@dataclass
class LayerSpan:
    """The row space of one attention layer's Q/K/V weight gradients.

    basis: [H, r] orthonormal; rank r at the last clear singular-value drop (onto the noise
    plateau); tol: residual below which a vector counts as inside (the geometric mean of the gap's two edges, so it comes
    from the gradient itself); exact: whether a clear gap exists (r < H).
    """

    layer: int
    basis: torch.Tensor
    singular_values: torch.Tensor
    rank: int
    gap: float
    tol: float
    _basis32: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def floor(self) -> float:
        """Largest residual a true member can show: first discarded / last kept singular value."""
        r = self.rank
        return float(self.singular_values[r] / self.singular_values[r - 1]) if r < len(self.singular_values) else 1.0

    def certifies(self, residual: float, tokens: int) -> bool:
        """Whether a whole sentence's summed squared residual is what `tokens` true members can
        show (each at most `floor`): the layer-1 certificate."""
        return residual <= self.floor ** 2 * tokens

    @property
    def exact(self) -> bool:
        return self.gap >= MIN_GAP and self.rank < self.basis.shape[0]

    def residual(self, h: torch.Tensor, *, precise: bool = True) -> torch.Tensor:
        """Relative distance of each row of h [N, H] from the span; `precise=False` projects
        in float32 (a fifth of a search step's cost in double; enough to rank candidates, not to
        certify: certificates use the default)."""
        basis = self.basis
        if precise:
            h = h.double()
        else:
            if self._basis32 is None:
                self._basis32 = self.basis.float()
            h, basis = h.float(), self._basis32
        proj = (h @ basis) @ basis.T
        return (h - proj).norm(dim=-1) / h.norm(dim=-1).clamp_min(1e-30)


def qkv_names(gradients: Mapping[str, torch.Tensor], layer: int) -> list[str]:
    names = []
    for part in ("query", "key", "value"):
        n = _find(gradients, rf"encoder\.layer\.{layer}\.attention\.self\.{part}\.weight$")
        if n is not None:
            names.append(n)
    return names


_SPAN_READER: contextvars.ContextVar = contextvars.ContextVar("span_reader", default=None)


@contextlib.contextmanager
def span_reader(reader):
    """Within this block `layer_span(gradients, layer)` is `reader(gradients, layer)`: a span
    read another way, e.g. calibrated on the noise of a defended gradient or an update
    (`textleak.text.noisy_span`)."""
    token = _SPAN_READER.set(reader)
    try:
        yield reader
    finally:
        _SPAN_READER.reset(token)


def layer_span(gradients: Mapping[str, torch.Tensor], layer: int) -> LayerSpan:
    reader = _SPAN_READER.get()
    if reader is not None:
        return reader(gradients, layer)
    names = qkv_names(gradients, layer)
    if not names:
        raise MissingKnowledgeError(
            f"exact recovery needs the gradients of encoder.layer.{layer}.attention.self."
            "{query,key,value}.weight, which the file does not share")
    G = torch.cat([gradients[n].double() for n in names], 0)
    _, s, vh = torch.linalg.svd(G, full_matrices=False)
    H = G.shape[1]
    s = s / s[0].clamp_min(1e-300)
    ratios = s[:-1] / s[1:].clamp_min(1e-300)
    # the gap sought is the drop to rounding noise, so only drops whose lower edge lies below the
    # square root of the gradient dtype's precision are considered (a dominant first direction
    # in a random model must not pass for the rank)
    floor = math.sqrt(torch.finfo(gradients[names[0]].dtype).eps)
    ratios = torch.where(s[1:] < floor, ratios, torch.zeros_like(ratios))
    # the rank is where the spectrum meets the noise plateau: the last clear drop, not the
    # largest one (a weakly weighted input, e.g. a token far from the loss, sits just above it)
    clear = (ratios >= MIN_GAP).nonzero().flatten()
    r = int(clear[-1]) + 1 if len(clear) else int(torch.argmax(ratios)) + 1
    gap = float(ratios[r - 1])
    if gap < MIN_GAP:  # no clear gap: the inputs fill the whole space (or noise hides them)
        r = H
    tol = math.sqrt(float(s[r]) / float(s[r - 1])) if r < H else 1.0
    return LayerSpan(layer, vh[:r].T.contiguous(), s, r, gap, min(tol, 0.1))


def embedding_outputs(model: torch.nn.Module, token_ids: torch.Tensor, position: int | torch.Tensor) -> torch.Tensor:
    """LayerNorm(E[t] + P[position] + T[0]): what layer 0 receives. One position for every token
    ([N] -> [N, H]), or one per token along the last axis ([..., m] with positions [m] -> [..., m, H])."""
    emb = model.base_model.embeddings
    x = emb.word_embeddings.weight[token_ids] + emb.position_embeddings.weight[position]
    if getattr(emb, "token_type_embeddings", None) is not None:
        x = x + emb.token_type_embeddings.weight[0]
    return emb.LayerNorm(x)


def position_candidates(model: torch.nn.Module, span: LayerSpan, vocab: torch.Tensor, length: int,
                        chunk: int = 8192) -> tuple[list[list[tuple[int, float]]], float]:
    """For each position < length, the (token, residual) pairs of `vocab` inside the layer-0 span,
    best first, and the threshold used.

    The threshold is calibrated on the residuals themselves: members sit at the noise floor of the
    gradient, non-members orders of magnitude above, so it is set in the middle (log scale) of the
    widest gap among the residuals below the spectral bound `span.tol`. A position with no member
    keeps its single best token (its residual then exceeds the threshold, which callers can see).
    """
    per_position: list[tuple[torch.Tensor, torch.Tensor]] = []
    with torch.no_grad():
        for p in range(length):
            # a float32 screen (||h||^2 - ||proj h||^2) keeps every plausible member; survivors
            # are measured again in float64, where member residuals (~1e-7) are resolved
            basis32 = span.basis.float()
            rough = []
            for i in range(0, len(vocab), chunk):
                h = embedding_outputs(model, vocab[i:i + chunk], p)
                rough.append(1 - (h @ basis32).pow(2).sum(-1) / h.pow(2).sum(-1).clamp_min(1e-30))
            rough_res = torch.cat(rough)
            keep = (rough_res < span.tol ** 2 + 1e-4).nonzero().flatten()
            if len(keep) == 0:
                keep = rough_res.argmin().reshape(1)
            res = span.residual(embedding_outputs(model, vocab[keep], p))
            inside = (res < span.tol).nonzero().flatten()
            keep, res = (keep[inside], res[inside]) if len(inside) else (keep[res.argmin()].reshape(1), res.min().reshape(1))
            per_position.append((vocab[keep], res))
    # members may sit as high as noise / weakest signal (span.floor), so never cut below it
    threshold = max(calibrate_threshold(torch.cat([r for _, r in per_position]), span.tol), span.floor)
    out = []
    for ids, res in per_position:
        inside = (res <= threshold).nonzero().flatten()
        if len(inside) == 0:
            inside = res.argmin().reshape(1)
        order = inside[torch.argsort(res[inside])]
        out.append([(int(ids[i]), float(res[i])) for i in order])
    return out, threshold


def calibrate_threshold(residuals: torch.Tensor, bound: float) -> float:
    """Middle (in log scale) of the widest gap in sorted residuals below `bound`."""
    vals = torch.sort(torch.cat([residuals.double().clamp_min(1e-30), torch.tensor([bound], dtype=torch.double)])).values
    vals = vals[vals <= bound]
    if len(vals) < 2:
        return bound
    logs = vals.log()
    gaps = logs[1:] - logs[:-1]
    k = int(torch.argmax(gaps))
    if float(gaps[k]) < math.log(10.0):  # no separation: everything below the bound counts
        return bound
    return float(((logs[k] + logs[k + 1]) / 2).exp())


class _Stop(Exception):
    pass


def layer_inputs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 layer: int) -> torch.Tensor:
    """Hidden states entering encoder layer `layer` [B, L, H], running only the layers below it."""
    captured: dict[str, torch.Tensor] = {}

    def grab(module, args, kwargs):
        captured["h"] = args[0] if args else kwargs["hidden_states"]
        raise _Stop

    handle = model.base_model.encoder.layer[layer].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=torch.zeros_like(input_ids))
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["h"]


def partial_residuals(model: torch.nn.Module, span: LayerSpan, token_ids: torch.Tensor,
                      position_ids: torch.Tensor) -> torch.Tensor:
    """Squared layer-`span.layer` residual of each token [N, m] of partial sentences: tokens
    placed at explicit positions (a prefix and the final [SEP]), the unknown rest left out of
    attention. Summed over tokens it ranks prefixes; it is ~0 only once the sentence is whole."""
    captured: dict[str, torch.Tensor] = {}

    def grab(module, args, kwargs):
        captured["h"] = args[0] if args else kwargs["hidden_states"]
        raise _Stop

    handle = model.base_model.encoder.layer[span.layer].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model.base_model(input_ids=token_ids, attention_mask=torch.ones_like(token_ids),
                             token_type_ids=torch.zeros_like(token_ids), position_ids=position_ids)
    except _Stop:
        pass
    finally:
        handle.remove()
    h = captured["h"]
    return span.residual(h.reshape(-1, h.shape[-1])).reshape(token_ids.shape) ** 2


def position_residuals(model: torch.nn.Module, span: LayerSpan, sequence: Sequence[int]) -> torch.Tensor:
    """Squared layer-`span.layer` residual at each position of one whole sequence [L]."""
    ids = torch.tensor([list(sequence)])
    with torch.no_grad():
        h = layer_inputs(model, ids, torch.ones_like(ids), span.layer)
    return span.residual(h[0]) ** 2


def sequence_residuals(model: torch.nn.Module, span: LayerSpan, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
    """Sum over positions of squared layer-`span.layer` residuals, one value per sequence."""
    L = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), L, dtype=torch.long)
    mask = torch.zeros(len(sequences), L, dtype=torch.long)
    for b, s in enumerate(sequences):
        ids[b, :len(s)] = torch.tensor(list(s))
        mask[b, :len(s)] = 1
    with torch.no_grad():
        h = layer_inputs(model, ids, mask, span.layer)
    res = span.residual(h.reshape(-1, h.shape[-1])).reshape(len(sequences), L) ** 2
    return (res * mask).sum(1)


class _Layer0Table:
    """Layer 0's view of each (token, position): its input x and the attention's q, k, v
    [..., 4, H]. They do not depend on context, and a search asks for the same few hundred
    tokens at the same positions thousands of times; a token's rows are computed on first use,
    for every position below `length` (grown as needed)."""

    def __init__(self, model: torch.nn.Module, length: int = 1):
        self.model = model
        self.lookup = torch.full((model.get_input_embeddings().num_embeddings,), -1, dtype=torch.long)
        self.store = torch.empty(0, length, 4, model.config.hidden_size)
        self.tokens = torch.empty(0, dtype=torch.long)

    def _compute(self, tokens: torch.Tensor, length: int) -> torch.Tensor:
        attn = self.model.base_model.encoder.layer[0].attention.self
        with torch.no_grad():
            x = embedding_outputs(self.model, tokens[:, None].expand(-1, length), torch.arange(length))
            return torch.stack([x, attn.query(x), attn.key(x), attn.value(x)], 2)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rows for tokens [...] at positions (broadcast against them): [..., 4, H]."""
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        positions = torch.as_tensor(positions, dtype=torch.long)
        length = self.store.shape[1]
        if positions.numel() and int(positions.max()) >= length:
            length = max(int(positions.max()) + 1, 2 * length)
            self.store = self._compute(self.tokens, length)
        new = torch.unique(tokens[self.lookup[tokens] < 0])
        if len(new):
            self.lookup[new] = torch.arange(len(self.tokens), len(self.tokens) + len(new))
            self.tokens = torch.cat([self.tokens, new])
            self.store = torch.cat([self.store, self._compute(new, length)])
        return self.store[self.lookup[tokens], positions]


_TABLE: contextvars.ContextVar[_Layer0Table | None] = contextvars.ContextVar("layer0_table", default=None)


@contextlib.contextmanager
def layer0_table(model: torch.nn.Module, length: int = 1):
    """Within this block, `slot_residuals` reads layer 0's per-(token, position) rows from a
    table kept for `model` (whose weights must not change inside the block), for positions
    below `length` to begin with."""
    token = _TABLE.set(_Layer0Table(model, length))
    try:
        yield
    finally:
        _TABLE.reset(token)


def slot_residuals(model: torch.nn.Module, span: LayerSpan, prefixes: torch.Tensor, candidates: torch.Tensor,
                   suffix: Sequence[int] | torch.Tensor = (), suffix_at: int | None = None) -> torch.Tensor:
    """Squared layer-1 residual of each candidate token [c] placed at position p after each
    prefix [W, p], followed by `suffix` (the tokens at positions p+1..., or from `suffix_at` on:
    one list for every prefix, or one row [W, m] each), attending to those tokens only (an
    unknown rest, or gap, is left out): [W, c].

    With no suffix it equals `partial_residuals(...)[:, -1]` for every (prefix, candidate); with
    the rest of a sentence as suffix, it is that position's share of `sequence_residuals`. It costs
    one token per pair instead of a whole sentence: layer 0 sees the embeddings, which do not
    depend on context, so the keys and values of the other tokens are computed once and only the
    candidate's query, attention and feed-forward run per pair (BERT-style post-LayerNorm layer);
    inside `layer0_table` even those inputs and projections are looked up, not recomputed."""
    if span.layer != 1:
        raise ValueError("slot_residuals scores layer-1 inputs (layer 0 run for the slot only)")
    layer = model.base_model.encoder.layer[0]
    attn = layer.attention.self
    heads = model.config.num_attention_heads
    W, p = prefixes.shape
    table = _TABLE.get()
    if table is not None and table.model is not model:
        table = None
    rows = suffix if isinstance(suffix, torch.Tensor) and suffix.dim() == 2 else \
        torch.as_tensor(list(suffix), dtype=torch.long).reshape(1, -1)
    first = p + 1 if suffix_at is None else suffix_at
    with torch.no_grad():
        if table is not None:  # [..., 4, H]: x, q, k, v
            new = table(candidates, torch.tensor(p))
            ctx_rows = table(prefixes, torch.arange(p))
            if rows.shape[1]:
                after = table(rows, torch.arange(first, first + rows.shape[1]))
                ctx_rows = torch.cat([ctx_rows, after.expand(W, -1, -1, -1)], 1)
            x_new, q, k_new, v_new = new.unbind(-2)
            k_ctx, v_ctx = ctx_rows[..., 2, :], ctx_rows[..., 3, :]
        else:
            x_new = embedding_outputs(model, candidates, p)  # [c, H]
            x_ctx = embedding_outputs(model, prefixes, torch.arange(p))  # [W, p, H]
            if rows.shape[1]:
                after = embedding_outputs(model, rows, torch.arange(first, first + rows.shape[1]))
                x_ctx = torch.cat([x_ctx, after.expand(W, -1, -1)], 1)
            k_ctx, v_ctx = attn.key(x_ctx), attn.value(x_ctx)
            q, k_new, v_new = attn.query(x_new), attn.key(x_new), attn.value(x_new)
        c, H = x_new.shape
        d = H // heads
        m = k_ctx.shape[1]

        def split(t):  # [..., H] -> [..., heads, d]
            return t.reshape(*t.shape[:-1], heads, d)

        k_ctx, v_ctx = split(k_ctx), split(v_ctx)  # [W, m, h, d]
        q, k_new, v_new = split(q), split(k_new), split(v_new)  # [c, h, d]
        scale = d ** -0.5
        logits_ctx = torch.einsum("chd,wmhd->wchm", q, k_ctx) * scale  # [W, c, h, m]
        logit_self = (q * k_new).sum(-1).mul(scale).expand(W, c, heads).unsqueeze(-1)  # [W, c, h, 1]
        weights = torch.softmax(torch.cat([logits_ctx, logit_self], -1), -1)
        ctx = torch.einsum("wchm,wmhd->wchd", weights[..., :m], v_ctx) + weights[..., m:] * v_new
        x = x_new.expand(W, c, H).reshape(W * c, H)
        a = layer.attention.output(ctx.reshape(W * c, H), x)
        h = layer.output(layer.intermediate(a), a)
    return (span.residual(h, precise=False).double() ** 2).reshape(W, c)
