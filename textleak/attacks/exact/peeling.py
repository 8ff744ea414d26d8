"""Peeling: taking found sentences out of the batch's gradient, one at a time (`Peeler`; in reduced
precision, approximately, to narrow the search only: `peeling_rounded.RoundedPeeler`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from ...text.layouts import Layout, MlmHead
from ...text.leaks import SPAN_TESTS, LayerSpan, embedding_token_set, layer_span, mlm_label_counts, positions
from ...text.leaks.positions import TokenPositions
from ...text.leaks.scale import ShareFit, touched_rows
from ...training import TrainingSettings
from .sequences import occupants

#: a peel subtracts at most this multiple of what is left (layer 1's Q/K/V, Frobenius norm). A true
#: sentence's part of a batch is about its size: MiniLM classification, 24 dev sentences each of
#: CoLA / SST-2 / RT, one sentence against itself plus one or three others, at most 1.25x (99th
#: percentile 1.02-1.08; scratch). A share fitted orders of magnitude too large leaves a trial whose
#: spectrum is the sentence's own scaled up, with what is really left sunk in that part's rounding:
#: the rank then drops by the sentence's length whenever the rest has that many inputs more (a
#: per-layer clipped batch of 4-, 7- and 7-token sentences, the second peel at a share 1e7 times the
#: first's, passed the rank test and left the last sentence unpeelable)
PEEL_GROWTH = 10.0


def subtracted(rest: torch.Tensor, own: torch.Tensor, share: float) -> torch.Tensor:
    """`rest - share * own` in double. A sentence touches few rows of an embedding table: there only
    those rows are computed, the rest copied (the same values; MiniLM's word table is 94 MB in double,
    and three full passes over it were most of a batch-1 peel's time)."""
    if own.dim() == 2 and own.shape[0] > 1024:
        rows = touched_rows(own)  # (read once per `own`: the share fit may have asked already)
        if len(rows) < own.shape[0] // 2:
            out = rest.to(dtype=torch.float64, copy=True)
            out[rows] = rest[rows].double() - share * own[rows].double()
            return out
    return rest - share * own.double()


@dataclass
class Rest:
    """What is left of a batch once sentences are peeled off: its layer-1 span (None when nothing
    is left), token set, layer-0 span (None without a rank gap) and token positions (None
    without the embedding gradients)."""

    span1: LayerSpan | None
    allowed: set[int] | None = None
    span0: LayerSpan | None = None
    positions: TokenPositions | None = None


def head_label_terms(head: MlmHead, h: torch.Tensor, tokens: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """For hidden states h [k, H] entering the masked-LM head: J^T p [k, E] and J^T e_v for each
    of `tokens` [len(tokens), k, E], in double, where J is the logits' Jacobian in the head
    transform's pre-activation; the cross-entropy gradient there, label v, is J^T p - J^T e_v."""
    with torch.enable_grad():
        pre = head.dense(h.to(head.dense.weight.dtype)).detach().requires_grad_()
        logits = head.logits(pre)
        probs = logits.softmax(-1).detach()
        expected = torch.autograd.grad((probs * logits).sum(), pre, retain_graph=True)[0].double()
        per_token = torch.stack([torch.autograd.grad(logits[:, v].sum(), pre, retain_graph=True)[0].double()
                                 for v in tokens])
    return expected, per_token


def as_captured(values: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Back to the shared gradient's dtype: the span's noise floor is set by its precision."""
    return {n: v.to(grads[n].dtype) for n, v in values.items()}


class Peeler:
    """Takes found sentences out of the batch's gradient, one at a time.

    The batch gradient is the mean of its sentences' own gradients (classification: over
    sentences; masked-LM: over all M masked positions of the batch), times a factor the attacker
    may not know (global-norm clipping, accumulation, a sum reduction), and a found sentence's own
    gradient can be recomputed exactly (eval mode, as captured) once its labels are known; its
    share of what is left is fitted (`leaks.scale.ShareFit`, recorded in `fitted`). The
    labels are those whose subtraction drops the layer-1 rank by the sentence's length (where
    layers share the Q/K/V weights, as ALBERT's do, by at least its length: its inputs to the
    other sharing layers add directions that other sentences may share) or, for the last
    sentence, leave nothing but rounding. That is a second certificate: a wrong sentence, even one the
    layer-1 residual lets pass, does not drop the rank, and `peel` refuses it (None).

    Classification tries every class. Masked-LM takes the masked positions from the declared
    ones of a batch slot of the sentence's length (its [MASK] tokens among them), and each
    position's token from the prediction-head transform gradient A = sum_j d_j h_j^T: removing
    the right term d_j(y) h_j^T lowers A's rank by one, which holds exactly when
    h_j^T A^+ d_j(y) = 1 with d_j(y) in A's column space (Wedderburn's rank-one reduction); the
    candidates y are the leaked masked tokens still counted by the output-bias gradient.
    `working` is False when the gradient lacks what the subtraction needs."""

    def __init__(self, observation: Any, layout: Layout, lengths: Sequence[int], rank: int,
                 mask_id: int | None = None, known_lengths: bool = False):
        grads = self.grads = observation.gradients
        self.layout, self.model, self.batch_size = layout, layout.model, len(lengths)
        self.task, self.lengths, self.mask_id, self.known_lengths = observation.task, list(lengths), mask_id, known_lengths
        self.layer1 = layout.shared(grads, layout.qkv_names(1))
        self.scale = sum(float(grads[n].double().norm()) for n in self.layer1)  # of what `last` leaves
        names = self.layer1 + layout.shared(grads, layout.qkv_names(0))
        self.word = layout.word_embedding_name if embedding_token_set(layout, grads) is not None else None
        # with it, what is left shows where its tokens stand (`leaks.token_positions`)
        self.position_table = layout.position_embedding_name if self.word and layout.position_embedding_name in grads \
            else None
        names += [n for n in (self.word, self.position_table) if n]
        self.working = self._masked_lm(observation, lengths, names) if self.task == "mlm" else True
        self.names = list(dict.fromkeys(names))  # layers sharing their weights name them twice
        params = dict(self.model.named_parameters())
        self.params = [params.get(n) for n in self.names]
        self.working = self.working and all(p is not None for p in self.params)
        dev = layout.device
        self.rest = {n: grads[n].to(device=dev, dtype=torch.float64, copy=True) for n in self.names} \
            if self.working else {}
        self._word_top: float | None = None  # the largest word-embedding gradient row's norm, once needed
        self.rank = rank  # of the layer-1 span of what is left
        self.rank_kv = self._kv_rank(self.rest) if self.working else None
        # each sentence's share of the gradient is fitted, not assumed (clipping, accumulation, sum losses)
        tables = [n for n in (self.word, self.position_table) if n]
        self.shares = ShareFit(self.layer1, [n for n in self.names if n not in self.layer1], tables,
                               eps=torch.finfo(grads[self.layer1[0]].dtype).eps if self.layer1 else 2.0 ** -23,
                               own=self._own_factors(observation, tables),
                               layers=[layout.shared(grads, layout.qkv_names(0))])
        self.fitted: list[float] = []  # the (layer-1) share each peeled sentence came out at
        self.labels: list[Any] = []  # the label(s) of each sentence peeled, in order
        self.slots: list[int] = []  # masked-LM: the batch slot of each sentence peeled
        self.sentences: list[list[int]] = []  # each sentence peeled, in order

    def _own_factors(self, observation: Any, tables: list[str]) -> set[str]:
        """Per-layer clipping: the tensors at the bound, each scaled by its own factor; the
        embedding tables follow the word table's (`leaks.scale.linked_tables`)."""
        own = TrainingSettings.of(observation.metadata).clipped_tensors(
            {n: self.grads[n] for n in self.names if n in self.grads})
        return (own - set(tables)) | (set(tables) if self.word in own else set())

    def _masked_lm(self, observation: Any, lengths: Sequence[int], names: list[str]) -> bool:
        """Set up the masked-LM subtraction; whether the gradient and knowledge allow it."""
        know, head = observation.knowledge, self.layout.mlm_head()
        self.head = head
        self.dense = head.dense_weight if head.dense_weight in self.grads else None
        # a slot's masked positions go with its length: both must be declared
        if not (know.mask_positions is not None and know.seq_lengths is not None and self.dense is not None
                and self.mask_id is not None and head.bias in self.grads and len(know.mask_positions) == len(lengths)):
            return False
        self.positions = [sorted(p) for p in know.mask_positions]
        self.masked = sum(len(p) for p in self.positions)  # M: the loss is a mean over them
        self.masked_left = self.masked
        self.counts = mlm_label_counts(self.layout, self.grads, self.masked)
        names.append(self.dense)
        return self.masked > 0

    def peel(self, seq: list[int], last: bool = False) -> Rest | None:
        """Subtract `seq`'s own gradient under the likeliest labels that make the subtraction
        exact; None when none does (the sentence is refused)."""
        best = None
        for slot, labels in self._choices(seq):
            own = dict(zip(self.names, self._own(seq, slot, labels)))
            share = self.shares.scale(self.rest, own, self._rank_left(), self._rows(seq), last)
            if share is None or not self._in_scale(share, own):  # no positive share of this sentence fits
                continue
            trial = {n: subtracted(self.rest[n], own[n], share[n]) for n in self.names}
            score, ok, span = self._test(seq, trial, last)
            if ok and (best is None or score < best[0]):
                best = (score, trial, slot, labels, span, share)
                if not last:
                    break
        if best is None:
            return None
        score, trial, slot, labels, span, share = best
        if not last and not span.exact:
            return None
        self.shares.remember(share)
        self.fitted.append(share[self.layer1[0]] if self.layer1 else next(iter(share.values())))
        self._record(seq, slot, labels)
        if last:
            return Rest(None)
        self.rank, self.rest = score, trial
        self.rank_kv = self._kv_rank(trial)
        return self._what_is_left(span)

    def _in_scale(self, share: Mapping[str, float], own: Mapping[str, torch.Tensor]) -> bool:
        """Whether the part subtracted is within PEEL_GROWTH of what is left (layer 1)."""
        part = math.sqrt(sum(float((share[n] * own[n].double()).norm()) ** 2 for n in self.layer1))
        left = math.sqrt(sum(float(self.rest[n].double().norm()) ** 2 for n in self.layer1))
        return part <= PEEL_GROWTH * left

    def _test(self, seq: list[int], trial: dict[str, torch.Tensor], last: bool
              ) -> tuple[float, bool, LayerSpan | None]:
        """(score, whether the subtraction is exact, the layer-1 span of what it leaves)."""
        if last:  # nothing may be left but the capture's rounding
            r = sum(float(trial[n].norm()) for n in self.layer1) / self.scale
            return r, r < math.sqrt(torch.finfo(self.grads[self.layer1[0]].dtype).eps), None
        span = layer_span(self.layout, as_captured({n: trial[n] for n in self.layer1}, self.grads), 1)
        if self.rank_kv is not None:  # left padding under a classifier (`_kv_rank`)
            drop_kv = self.rank_kv - self._kv_rank(trial)
            return span.rank, drop_kv == len(seq) or self.rank - span.rank >= len(seq), span
        if self.layout.qkv_sharing(1) == 1:
            return span.rank, span.rank == self.rank - len(seq), span
        # layers sharing the weights (ALBERT): the sentence's layer-1 inputs (context-dependent,
        # its own) come out with it; what its inputs to the other sharing layers add is not
        # known in advance (layer 0's are shared with other sentences at the same (token,
        # position); the last layer's are partial), so the drop must be at least its length
        return span.rank, self.rank - span.rank >= len(seq), span

    def _pooled_pads(self) -> bool:
        padding = self.layout.padding
        return padding is not None and padding.pooled and len(self.layer1) == 3

    def _kv_rank(self, values: Mapping[str, torch.Tensor]) -> int | None:
        """Under left padding a classifier pools a pad, whose layer-1 input enters the query gradient
        only (masked as a key, it gets no key or value gradient): those rows lie close together
        (mostly the pad's own embedding), so how many of them the spectrum resolves varies. The
        peel is then certified by the key and value gradients' rank, which a sentence's tokens
        lower by its length, or, where those are degenerate (a random model), by the stacked
        rank dropping at least that much. None without left padding."""
        if not self._pooled_pads():
            return None
        kv = as_captured({n: values[n] for n in self.layer1[1:]}, self.grads)
        return SPAN_TESTS.get("rank-gap")([kv[n].to(self.layout.device) for n in self.layer1[1:]], 1).rank

    def _rank_left(self) -> int:
        """The rank of what is left, for fitting a share: as read off its spectrum, or under left
        padding with known lengths what its sentences and pooled pads add up to (those pads' rows
        lie close together: the spectrum may not resolve them all, and the fit needs every one)."""
        padding = self.layout.padding
        if padding is None or not padding.pooled or not self.known_lengths:
            return self.rank
        return max(self.rank, sum(padding.rows(n) for n in self._lengths_left()))

    def _lengths_left(self) -> list[int]:
        """The declared lengths of the sentences not yet peeled."""
        left = list(self.lengths)
        for s in self.sentences:
            left.remove(len(s))
        return left

    def _rows(self, seq: list[int]) -> int:
        """Layer-1 inputs the sentence adds: its tokens (and under left padding a classifier's pooled pad)."""
        padding = self.layout.padding
        return len(seq) if padding is None else padding.rows(len(seq))

    def _what_is_left(self, span: LayerSpan) -> Rest:
        allowed = None
        if self.word:
            if self._word_top is None:
                self._word_top = float(self.grads[self.word].double().norm(dim=1).max())
            rows = self.rest[self.word].norm(dim=1)
            allowed = set((rows > 1e-6 * self._word_top).nonzero().flatten().tolist())
        left = as_captured(self.rest, self.grads)
        span0 = layer_span(self.layout, left, 0)
        found = None
        if self.position_table and allowed:
            lengths = self._lengths_left()
            padding = self.layout.padding  # left padding: absolute positions over the padded length
            width, reach = (max(lengths), occupants(lengths)) if padding is None else \
                (padding.width(lengths), padding.occupants(lengths))
            found = positions.token_positions(self.layout, left, sorted(allowed), width,
                                              reach if self.known_lengths else None)
        return Rest(span, allowed, span0 if span0.exact else None, found)

    def _record(self, seq: list[int], slot, labels) -> None:
        """Book a peeled sentence: its labels (masked-LM: masked tokens, which leave the counts) and slot."""
        self.labels.append(labels)
        self.sentences.append(list(seq))
        if self.task == "mlm":
            self.slots.append(slot)
            self.masked_left -= len(labels)
            for t in labels:
                self.counts[t] = self.counts.get(t, 0) - 1

    def _choices(self, seq: list[int]):
        """(slot, labels) to try, likeliest first."""
        if self.task != "mlm":
            yield from ((None, c) for c in range(int(self.model.config.num_labels)))
            return
        masks = {p for p, t in enumerate(seq) if t == self.mask_id}
        seen: list[list[int]] = []
        for b, (n, pos) in enumerate(zip(self.lengths, self.positions)):
            if b in self.slots or n != len(seq) or not masks <= set(pos) or pos in seen or not pos:
                continue
            seen.append(pos)
            ranked = self._ranked_tokens(seq, pos)
            first = [r[0] for r in ranked]
            yield b, first
            for i, r in enumerate(ranked):  # one position's runner-up at a time
                if len(r) > 1:
                    yield b, first[:i] + [r[1]] + first[i + 1:]

    def _own(self, seq: list[int], slot, labels) -> tuple[torch.Tensor, ...]:
        """The sentence's own share of the batch gradient, for `self.names`."""
        dev = self.layout.device
        ids = torch.tensor([seq], device=dev)
        if self.task == "mlm":
            target = torch.full_like(ids, -100)
            target[0, self.positions[slot]] = torch.tensor(labels, device=dev)
            share = len(labels) / self.masked  # the loss averages over the whole batch's masked positions
        else:
            target, share = torch.tensor([labels], device=dev), 1.0  # its share of the batch is fitted
        return self.layout.loss_gradient(ids, target, self.params, scale=share)

    def _ranked_tokens(self, seq: list[int], pos: list[int], keep: int = 2) -> list[list[int]]:
        """Per masked position, the `keep` leaked tokens whose term best reduces the rank of
        the transform gradient left."""
        cand = [t for t, c in self.counts.items() if c > 0] or list(self.counts)
        A = self.rest[self.dense]
        U, S, Vh = torch.linalg.svd(A, full_matrices=False)
        r = max(1, min(self.masked_left, len(S)))
        U, S, V = U[:, :r], S[:r], Vh[:r].T
        with torch.no_grad():
            h = self.layout.hidden_states(torch.tensor([seq], device=self.layout.device))[0, pos]
        expected, per_token = head_label_terms(self.head, h, cand)
        d = (expected[None] - per_token) / self.masked  # [candidates, k, E]: dL/dpre_j were the label v
        left = (h.double() @ V) / S  # h_j^T A^+ = h_j^T V S^-1 U^T
        coef = d @ U  # [candidates, k, r]
        inside = (coef * left[None]).sum(-1)
        outside = (d - coef @ U.T).norm(dim=-1) / d.norm(dim=-1).clamp_min(1e-300)
        scores = ((inside - 1).abs() + outside).T  # [k, candidates]
        order = torch.argsort(scores, dim=1)[:, :keep]
        return [[cand[j] for j in row] for row in order.tolist()]
