"""What certifies a sentence past the rank limit (#16, `attacks.beyond_rank`): the last layer's
sentence spans (`SentenceCertificate`) and the peel that must drop their rank by the sentence's
terms there (`SentencePeeler`: one per sentence for a [CLS] classifier, one per declared masked
position for a masked-LM head)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from ..text.decode import ids_to_text
from ..text.layouts import Layout
from ..text.leaks import SentenceSpans, layer_span, partial_span
from ..threat import Observation
from .exact.peeling import Peeler, Rest, as_captured
from .exact.search import Search

#: directions of 384 that must lie outside the layer-1 span of what is left after peels before the
#: search settles on it rather than on the partial span. MiniLM, RT batch 16 index 1: after one
#: peel (398 - 15 = 383 tokens) every miss's residual was ~0 per token on the rest's span and
#: nothing more was found in ~500 s; with the margin 5 of 16 were certified in 900 s
#: (recipes/measured/beyond_rank_s9.md); index 0 settled well on a span of 365 (19 outside)
EXACT_MARGIN = 10


class SentenceCertificate:
    """A whole sentence passes when its [CLS] vectors (masked-LM: those at its slot's masked positions)
    lie in the last layer's per-sentence spans."""

    name = "last-layer sentence spans"

    def __init__(self, spans: SentenceSpans):
        self.spans = spans

    def admits(self, search: Search, seq: list[int], residual: float) -> bool:
        # once what is left has a layer-1 rank gap, a sentence off that span is none of the batch's:
        # refused without the whole-model forward (about 70 ms a sentence; profiled, SST-2 batch 32
        # index 0's first 330 s read 875 sentences, 61 s, most of them cuts of settled seeds)
        if search.span1.exact and not search.span1.certifies(residual, len(seq)):
            return False
        return self.spans.certifies(search.layout, [seq])[0]


class SentencePeeler(Peeler):
    """`Peeler` past the rank limit: a sentence's own gradient, under the labels that make the
    subtraction exact, must drop the rank of the last layer's query gradient by its terms there
    (classification: one, at [CLS], under the class tried; masked-LM: one per masked position of
    the slot, its tokens those `Peeler` ranks on the prediction-head gradient) (the layer-1 rank has
    no gap to drop); what is left is read as `Peeler` reads it, with the partial layer-1 span until
    the rest is under the limit."""

    def __init__(self, observation: Observation, layout: Layout, lengths: Sequence[int], spans: SentenceSpans,
                 drop: int, mask_id: int | None = None):
        super().__init__(observation, layout, lengths, 0, mask_id, observation.knowledge.seq_lengths is not None)
        self.query = layout.name(layout.linears(spans.layer)["query"].weight)
        self.sentence_rank, self.drop = spans.rank, drop
        if self.query not in self.names:
            self.names.append(self.query)
            self.params.append(dict(layout.model.named_parameters()).get(self.query))
            self.working = self.working and self.params[-1] is not None
            if self.working:
                self.rest[self.query] = self.grads[self.query].to(layout.device).double().clone()

    def peel(self, seq: list[int], last: bool = False) -> Rest | None:
        # past the limit there is no layer-1 rank gap to fit a share on (`Peeler.shares`): a sentence's
        # share is the unclipped mean's (classification 1/B; masked-LM its masked positions' k/M, which
        # `_own` applies); a clipped or rescaled gradient is not peeled
        share = 1.0 / self.batch_size if self.task != "mlm" else 1.0
        for slot, labels in self._choices(seq):
            terms = len(labels) if self.task == "mlm" else 1
            own = self._own(seq, slot, labels)
            trial = {n: self.rest[n] - share * g.double() for n, g in zip(self.names, own)}
            if self._exact_removal(trial, last, terms):
                break
        else:
            return None
        self._record(seq, slot, labels)
        self.rest = trial
        if last:
            return Rest(None)
        self.sentence_rank -= terms
        return self._what_is_left(self.span1_left())

    def _exact_removal(self, trial: dict[str, torch.Tensor], last: bool, terms: int = 1) -> bool:
        """The last layer's query gradient lost `terms` directions (nothing but rounding, for the last)."""
        before = torch.linalg.svdvals(self.rest[self.query])
        after = torch.linalg.svdvals(trial[self.query])
        if last:
            return float(after[0]) < math.sqrt(torch.finfo(self.grads[self.query].dtype).eps) * float(before[0])
        r = self.sentence_rank
        if terms < 1 or terms > r:
            return False
        plateau = float(before[r]) if r < len(before) else float(before[-1]) * 1e-3
        return float(after[r - terms]) < 10.0 * plateau

    def span1_left(self):
        """Layer 1's span of what is left: the full span once it has a rank gap at least EXACT_MARGIN
        (of 384) below the width, else the partial one."""
        left = as_captured({n: self.rest[n] for n in self.layer1}, self.grads)
        span = layer_span(self.layout, left, 1)
        # a gap within a few directions of the width leaves every candidate's residual near 0:
        # settling is blind there
        if span.exact and span.rank <= self.layout.hidden_size - max(1, self.layout.hidden_size * EXACT_MARGIN // 384):
            return span
        return partial_span([left[n].to(self.layout.device) for n in self.layer1], 1, self.drop)


def fill_peeled(observation: Observation, tok: Any, peeler: SentencePeeler, sequences: list[list[int]],
                prediction: dict[str, Any]) -> None:
    """Masked-LM: a peeled sentence keeps the masked tokens its peel verified (the batch-wide fill
    reads every sentence's hidden states, and one wrong sentence can move a right one's tokens)."""
    if observation.task != "mlm" or observation.knowledge.mask_positions is None:
        return
    for slot, seq, labels in zip(peeler.slots, peeler.sentences, peeler.labels):
        positions = list(observation.knowledge.mask_positions[slot])
        if slot >= len(sequences) or sequences[slot] != seq or len(labels) != len(positions):
            continue
        row = list(prediction["token_ids"][slot])
        for p, t in zip(positions, labels):
            row[p] = int(t)
        prediction["token_ids"][slot] = row
        prediction["labels"][slot] = [int(t) for t in labels]
        prediction["texts"][slot] = ids_to_text(tok, row)


def certified(layout: Layout, spans: SentenceSpans, sequences: list[list[int]], found: Sequence[list[int]]
              ) -> list[bool]:
    """Per sentence: found by the search (certified and peeled), or passing the sentence spans now (moved here from
    `beyond_rank.BeyondRank._certified`, session 40)."""
    found = [list(s) for s in found]
    out = []
    for seq in sequences:
        if seq in found:
            found.remove(seq)
            out.append(True)
        else:
            out.append(bool(spans.certifies(layout, [seq])[0]))
    return out
