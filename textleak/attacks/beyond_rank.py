"""Exact recovery past the rank limit: batches whose token count exceeds the hidden size.

Threat model: as `exact` (honest-but-curious, the model known, the full gradient of a
classification step shared; lengths declared or inferred, labels recovered). Past B x L >= H
the first layers' input spans fill the whole space, and `exact` has no certificate. What
survives (see notes/16.md for the measurements):

* the token set (nonzero rows of the word-embedding gradient, untied heads) and where most
  tokens stand (`lk.token_positions`), which narrow the candidates per position;
* the partial span: the top singular directions of layer 1's Q/K/V gradient still hold most of
  each input (DAGER's best-effort mode), so layer-1 residuals against it still rank candidates
  (not certify) - strongly just past the limit, weakly at 4x;
* one span per *sentence* at the last layer (`text.sentence_spans`): a classifier reads only
  [CLS] there, so each of its weight gradients has rank B, not B x L, and a whole guessed
  sentence is certified when its [CLS] vectors lie in those spans;
* a certified sentence's own gradient (its label the one whose subtraction removes it from the
  last layer's span) comes off the batch's exactly, which leaves a smaller batch: fewer tokens,
  fewer candidates, a better partial span. Once the rest is under the rank limit, `exact`
  finishes it (the rest is rescaled to the mean over the sentences left, so it reads as a batch
  of its own).

Search: rounds of `exact`'s seeding (a beam over prefixes, random draws) and settling, scored
by the partial layer-1 span; settled sentences and their cuts are certified against the
sentence spans and peeled. A round that certifies nothing widens the next (as `exact`).

Arguments: `exact` (the configured `Exact` whose moves search and which finishes the rest),
`drop` (directions left out of the partial span), `widen` (largest widening), `seed`.
Degrades: without sentence spans (masked-LM, noise, no rank gap at the last layer) it raises
MissingKnowledgeError naming the condition; sentences it cannot certify are returned as its
best guesses with `details["certified"] = False` and the share certified.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch

from ..core.budget import current
from ..core.seeding import model_mode
from ..errors import MissingKnowledgeError
from ..text import leakage as lk
from ..text.decode import ids_to_text
from ..text.sentence_spans import MIN_GAP, SentenceSpans, sentence_spans
from ..threat import Knowledge, Observation
from .base import ATTACKS, AttackOutput
from .exact import Exact, _cuts, _occupants

log = logging.getLogger(__name__)


class PartialSpan(lk.LayerSpan):
    """The top directions of a layer span that has no rank gap: ranks candidates, certifies none."""

    def certifies(self, residual: float, tokens: int) -> bool:
        return False

    @property
    def exact(self) -> bool:
        return False


def partial_span(gradients, layer: int, drop: int) -> PartialSpan:
    names = lk.qkv_names(gradients, layer)
    G = torch.cat([gradients[n].double() for n in names], 0)
    _, s, vh = torch.linalg.svd(G, full_matrices=False)
    r = max(1, G.shape[1] - drop)
    s = s / s[0].clamp_min(1e-300)
    return PartialSpan(layer, vh[:r].T.contiguous(), s, r, float(s[r - 1] / s[r].clamp_min(1e-300)), 0.1)


def _under_limit(gradients) -> bool:
    """Whether the layer-1 span has a rank gap (fewer tokens than its width). Layer 0's can show
    one past the limit: its inputs do not depend on context, so a token at the same position in
    several sentences gives one direction, not several."""
    return lk.layer_span(gradients, 0).exact and lk.layer_span(gradients, 1).exact


class _Rest:
    """The batch's gradient less the sentences found so far (each its own gradient / B)."""

    def __init__(self, observation: Observation, model, lengths: Sequence[int], spans: SentenceSpans):
        self.grads, self.model = observation.gradients, model
        self.layer, self.rank = spans.layer, spans.rank  # of the last layer's query span of what is left
        self.params = dict(model.named_parameters())
        self.names = [n for n in self.grads if n in self.params]
        self.rest = {n: self.grads[n].double().clone() for n in self.names}
        self.batch_size = len(lengths)
        self.missing = list(lengths)
        self.found: list[tuple[list[int], int]] = []  # (sentence, label), in the order peeled
        self.word = lk.word_embedding_name(self.grads)
        self.top = float(self.grads[self.word].double().norm(dim=1).max()) if self.word else 0.0
        self.classes = int(getattr(model.config, "num_labels", 2) or 2)

    def captured(self) -> dict[str, torch.Tensor]:
        """What is left, in the capture's dtype (its rounding sets the leaks' thresholds)."""
        return {n: v.to(self.grads[n].dtype) for n, v in self.rest.items()}

    def tokens(self) -> list[int]:
        """Tokens whose word-embedding row is not yet explained by the sentences found."""
        rows = self.rest[self.word].norm(dim=1)
        return (rows > 1e-6 * self.top).nonzero().flatten().tolist()

    def _own(self, seq: Sequence[int], label: int) -> list[torch.Tensor]:
        ids = torch.tensor([list(seq)])
        with model_mode(self.model, train=False), torch.enable_grad():
            loss = self.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                              token_type_ids=torch.zeros_like(ids), labels=torch.tensor([label])).loss
            got = torch.autograd.grad(loss / self.batch_size, [self.params[n] for n in self.names],
                                      allow_unused=True)
        return [torch.zeros_like(self.params[n]) if g is None else g for n, g in zip(self.names, got)]

    def peel(self, seq: Sequence[int]) -> int | None:
        """Subtract a certified sentence with the label that takes it out of the last layer's
        query span (its rank drops by one, or nothing is left); its label, or None if no label
        does (a sentence already peeled, or not of this batch)."""
        if len(seq) not in self.missing:
            return None
        query = next(n for n in self.names if n.endswith(f"layer.{self.layer}.attention.self.query.weight"))
        before = torch.linalg.svdvals(self.rest[query])
        r = self.rank
        # the rounding plateau under the sentences' directions: what a removed direction falls to
        plateau = float(before[r]) if r < len(before) else float(before[-1])
        for label in range(self.classes):
            own = self._own(seq, label)
            after = torch.linalg.svdvals(self.rest[query] - own[self.names.index(query)].double())
            ok = float(after[r - 1]) < MIN_GAP * plateau
            if ok:
                for n, g in zip(self.names, own):
                    self.rest[n] -= g.double()
                self.found.append((list(seq), label))
                self.missing.remove(len(seq))
                self.rank -= 1
                return label
        return None

    def tokens_left(self) -> int:
        return sum(self.missing)

    def observation(self, observation: Observation) -> Observation:
        """The rest as a batch of its own: the mean over the sentences left (rescaled from the
        mean over the whole batch), their lengths declared as before."""
        k = self.batch_size / len(self.missing)
        grads = {n: (v * k).to(self.grads[n].dtype) for n, v in self.rest.items()}
        know = Knowledge(batch_size=len(self.missing), seq_lengths=tuple(self.missing),
                         special_tokens=observation.knowledge.special_tokens)
        return Observation(grads, observation.metadata, know)


@ATTACKS.register("beyond_rank")
@dataclass
class BeyondRank:
    name: ClassVar[str] = "beyond_rank"
    modalities: ClassVar[tuple[str, ...]] = ("text",)

    exact: Exact = field(default_factory=Exact)
    drop: int = 4
    widen: int = 8
    seed: int = 0

    def run(self, observation: Observation, target: Any, *, checkpoint=None, resume: bool = False,
            progress: bool = True) -> AttackOutput:
        t0 = time.perf_counter()
        grads, know, model, tok = observation.gradients, observation.knowledge, target.model, target.tokenizer
        if know.seq_lengths is None:
            raise MissingKnowledgeError("past the rank limit the lengths must be declared (they cannot be read "
                                        "off the first layer's span)")
        lengths = [int(n) for n in know.seq_lengths]
        spans = sentence_spans(model, grads, len(lengths), observation.task)
        if spans is None:
            raise MissingKnowledgeError("past the rank limit exact recovery needs the last layer's per-sentence "
                                        "spans (a [CLS] classifier's gradient with a clear rank gap there)")
        if lk.embedding_token_set(grads) is None:
            raise MissingKnowledgeError("past the rank limit exact recovery needs the token set "
                                        "(a sparse word-embedding gradient: an untied head)")
        state = _Rest(observation, model, lengths, spans)
        rounds = self._search(state, spans, target)
        handed = None
        if state.missing:
            rest = state.observation(observation)
            if _under_limit(rest.gradients):
                handed = self.exact.run(rest, target)
        return self._output(observation, target, state, handed, rounds, time.perf_counter() - t0)

    # -- search ------------------------------------------------------------------------------
    def _search(self, state: _Rest, spans: SentenceSpans, target) -> list[dict]:
        """Rounds of seeding and settling on the partial layer-1 span until the rest is under
        the rank limit (or nothing more is found at the widest round)."""
        model, tok = target.model, target.tokenizer
        rng = random.Random(self.seed)
        ends = tok.cls_token_id is not None and tok.sep_token_id is not None
        widen, rounds = 1, []
        while state.missing and widen <= self.widen:
            if current().expired():
                break
            left = state.captured()
            if _under_limit(left):
                break
            t0 = time.perf_counter()
            found = self._round(state, spans, target, left, rng, ends, widen)
            rounds.append({"widen": widen, "found": found, "tokens_left": state.tokens_left(),
                           "seconds": round(time.perf_counter() - t0, 2)})
            log.debug("round %s", rounds[-1])
            if found:
                spans = sentence_spans(model, state.captured(), len(state.missing), "classify") or spans
                widen = 1
            else:
                widen *= 2
        return rounds

    def _round(self, state: _Rest, spans: SentenceSpans, target, left, rng, ends: bool, widen: int) -> int:
        model, tok = target.model, target.tokenizer
        cls_id, sep_id = tok.cls_token_id, tok.sep_token_id
        specials = {cls_id, sep_id, tok.pad_token_id} - {None}
        span1 = partial_span(left, 1, self.drop)
        tokens = state.tokens()
        longest = max(state.missing)
        pins = lk.token_positions(model, left, tokens, longest, _occupants(state.missing))
        allowed = pins.allowed if pins is not None else [set(tokens)] * longest
        cands = [[t for t in sorted(allowed[p]) if t not in specials] or sorted(tokens) for p in range(longest)]

        def free(p: int, n: int | None = None) -> list[int]:
            return cands[p]

        wanted = {n: state.missing.count(n) for n in set(state.missing)}
        found_seqs = [s for s, _ in state.found]
        with lk.layer0_table(model, longest):
            finished = self.exact._beam(model, free, wanted, span1, ends, cls_id, sep_id, found_seqs,
                                        len(state.missing), widen)
            got = 0
            for n in sorted(wanted):
                if n not in state.missing:
                    continue
                seeds = [s for _, s in sorted(finished[n], key=lambda x: x[0])][:2 * wanted[n] * widen]
                seeds += [self._draw(rng, free, n, ends, cls_id, sep_id) for _ in range(self.exact.restarts * widen)]
                settled = self.exact._settle(model, span1, free, seeds, ends)
                trials = []
                for s in settled + [c for s in settled for c in _cuts(s, state.missing, ends, sep_id)]:
                    if s not in trials and s not in found_seqs:
                        trials.append(s)
                if not trials:
                    continue
                for s, ok in zip(trials, spans.certifies(model, trials)):
                    if ok and state.peel(s) is not None:
                        found_seqs.append(s)
                        got += 1
        return got

    @staticmethod
    def _draw(rng, free, n: int, ends: bool, cls_id, sep_id) -> list[int]:
        body = [rng.choice(free(q, n)) for q in range(1 if ends else 0, n - 1 if ends else n)]
        return [cls_id] + body + [sep_id] if ends else body

    # -- result ------------------------------------------------------------------------------
    def _output(self, observation, target, state: _Rest, handed: AttackOutput | None, rounds, seconds) -> AttackOutput:
        tok = target.tokenizer
        lengths = [int(n) for n in observation.knowledge.seq_lengths]
        pool: dict[int, list[tuple[list[int], int | None, bool]]] = {}
        for seq, label in state.found:
            pool.setdefault(len(seq), []).append((seq, label, True))
        if handed is not None:
            cert = bool(handed.details.get("certified"))
            for seq, label in zip(handed.prediction["token_ids"], handed.prediction["labels"]):
                pool.setdefault(len(seq), []).append((list(seq), label, cert))
        sequences, labels, certified = [], [], []
        for n in lengths:
            if pool.get(n):
                seq, label, cert = pool[n].pop(0)
            else:  # not found: the placeholder is the right length, every token a guess
                seq, label, cert = [tok.cls_token_id] + [tok.unk_token_id] * (n - 2) + [tok.sep_token_id], 0, False
            sequences.append(seq)
            labels.append(label)
            certified.append(cert)
        prediction = {"token_ids": sequences, "labels": labels,
                      "texts": [ids_to_text(tok, s) for s in sequences]}
        details = {"certified": all(certified), "certified_share": sum(certified) / len(certified),
                   "peeled": len(state.found), "rounds": rounds,
                   "handed_to_exact": None if handed is None else {"sentences": len(handed.prediction["token_ids"]),
                                                                   "certified": handed.details.get("certified")},
                   "seconds": seconds}
        assumed = {"seq_lengths": "known", "labels": "recovered: the label whose own gradient comes off the batch's"}
        return AttackOutput(prediction=prediction, method=self.name, assumed=assumed,
                            config={"drop": self.drop, "widen": self.widen, "seed": self.seed}, details=details)
