"""The approximate peel for reduced-precision captures (`RoundedPeeler`): it narrows the search and
certifies nothing (the exact peel is `peeling.Peeler`)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from ...text.layouts import Layout
from ...text.leaks import embedding_token_set
from ...text.leaks.precision import span_for
from ...text.leaks.scale import Pencil, own_rows_scale, stacked
from ...training import TrainingSettings
from .peeling import Rest, subtracted


class RoundedPeeler:
    """An approximate peel for reduced-precision captures (fp16 / bf16 autocast), to narrow the search.

    Nothing subtracts exactly from a rounded gradient, so this peel certifies nothing (`working`
    False: no peel certificate). Once a sentence is certified by the layer-1 span of the whole
    gradient, its own gradient (recomputed in float32, its label the class whose subtraction
    leaves the least outside the rank of what is left, its share fitted on the word-embedding rows
    only it touches, else on the layer-1 pencil: `leaks.scale`) is subtracted from what is left.
    The remainder holds the other sentences plus the capture's rounding (relative size u, the
    dtype's unit roundoff) and the recomputation's error (the same order), so its layer-1 span is read
    at the declared number of tokens left (`leaks.precision.span_for`) and a token stays in the set
    while its word-embedding row keeps more than `KEEP` u of what the peels took from it. What is left
    (`Rest`) narrows the candidates and ranks the search; every certificate is still read
    against the whole, unpeeled span (`Search.take`), so a poor peel can slow the search but
    never admit a sentence."""

    working = False
    approximate = True
    #: a token row is gone once what is left of it is within this many roundoffs of what peels took
    #: from it (measured, RT dev batch 8: rows gone keep at most 6.1u (fp16) / 7.0u (bf16) of it, rows
    #: of tokens still in the batch at least 204u / 25.6u; a token wrongly kept only widens the search)
    KEEP = 8

    def __init__(self, observation: Any, layout: Layout, lengths: Sequence[int], settings: TrainingSettings):
        grads = self.grads = observation.gradients
        self.layout, self.model, self.settings = layout, layout.model, settings
        self.layer1 = layout.shared(grads, layout.qkv_names(1))
        self.word = layout.word_embedding_name if embedding_token_set(layout, grads) is not None else None
        names = self.layer1 + layout.shared(grads, layout.qkv_names(0)) + ([self.word] if self.word else [])
        self.names = list(dict.fromkeys(names))
        params = dict(self.model.named_parameters())
        self.params = [params.get(n) for n in self.names]
        self.usable = observation.task != "mlm" and all(p is not None for p in self.params)
        self.rest = {n: grads[n].to(layout.device).double().clone() for n in self.names} if self.usable else {}
        self.taken = torch.zeros(grads[self.word].shape[0], dtype=torch.float64, device=layout.device) \
            if self.usable and self.word else None  # per word row: the norms peels took from it, summed
        self.left = list(lengths)  # lengths not yet peeled
        self.sentences: list[list[int]] = []
        self.labels: list[int] = []
        self.fitted: list[float] = []
        self.slots: list[int] = []  # (masked-LM slots: none, it does not peel masked-LM)

    def peel(self, seq: list[int]) -> Rest | None:
        """Subtract certified `seq`'s gradient (best label, fitted share); what is left, or None
        when it cannot be done (then the search goes on against the whole span)."""
        if not self.usable or len(seq) not in self.left or len(self.left) < 2:
            return None
        tokens = sum(self.left) - len(seq)
        best = None
        for label in range(int(self.model.config.num_labels)):
            own = dict(zip(self.names, self._own(seq, label)))
            share = self._share(own, sum(self.left))
            if share is None:
                continue
            trial = {n: subtracted(self.rest[n], own[n], share) for n in self.names}
            s = torch.linalg.svdvals(stacked(trial, self.layer1))
            tail = float((s[tokens:] ** 2).sum() / (s ** 2).sum().clamp_min(1e-300))
            if best is None or tail < best[0]:
                best = (tail, trial, label, share)
        if best is None:
            return None
        _, trial, label, share = best
        if self.taken is not None:
            self.taken += (self.rest[self.word] - trial[self.word]).norm(dim=1)
        self.rest = trial
        self.left.remove(len(seq))
        self.sentences.append(list(seq))
        self.labels.append(label)
        self.fitted.append(share)
        return self._what_is_left(tokens)

    def _share(self, own: Mapping[str, torch.Tensor], tokens: int) -> float | None:
        a = own_rows_scale(self.rest[self.word], own[self.word], None,
                                                  tol=max(1e-2, 8 * self.settings.roundoff), least=2) if self.word else None
        if a is None:
            a = Pencil.of(stacked(self.rest, self.layer1), tokens).scale(stacked(own, self.layer1))
        return a if math.isfinite(a) and a > 0 else None

    def _what_is_left(self, tokens: int) -> Rest:
        allowed = None
        if self.word:
            rows = self.rest[self.word].norm(dim=1)
            allowed = set(((rows > 0) & (rows > self.KEEP * self.settings.roundoff * self.taken)
                           ).nonzero().flatten().tolist())
        # layer 0 is not read again: what is left of it is too weak against the rounding (true
        # tokens shared with found sentences drop out: 'in', 'the' of RT dev batch 8, fp16)
        return Rest(span_for(self.layout, self.rest, 1, self.settings, tokens), allowed, None, None)

    def _own(self, seq: list[int], label: int) -> tuple[torch.Tensor, ...]:
        ids = torch.tensor([seq], device=self.layout.device)
        return self.layout.loss_gradient(ids, torch.tensor([label], device=ids.device), self.params)
