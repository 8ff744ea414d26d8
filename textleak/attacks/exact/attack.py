"""`Exact`: the attack object, its options, its pre-flight check and `run`, which reads as the
algorithm (the package doc explains it)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from ...core import budget
from ...errors import MissingKnowledgeError
from ...text.decode import ids_to_text
from ...text.inference import infer_lengths
from ...text.layouts import Layout, layout_for
from ...text.leaks import LayerSpan, layer0_table
from ...text.leaks.precision import span_for
from ...text.leaks.scale import linked_tables
from ...text.padding import LeftPadding
from ...threat import Observation
from ...training import TrainingSettings
from ...validate import integer
from ..base import ATTACKS, AttackOutput
from .candidates import Candidates, declared_masks, vocabulary
from .labels import class_labels, mlm_labels, order_by_slots
from .moves import MOVES
from .padding import left_candidates, search_left_padded
from .peeling import Peeler
from .peeling_rounded import RoundedPeeler
from .search import SEARCH_SCREEN, Search


@ATTACKS.register("exact")
@dataclass
class Exact:
    name: ClassVar[str] = "exact"
    modalities: ClassVar[tuple[str, ...]] = ("text",)
    #: options that also take `auto` (`validate.attack_instance`), each with the value it takes where on
    auto_options: ClassVar[dict] = {"search_screen": SEARCH_SCREEN}

    sweeps: int = 3
    settle: int = 10
    restarts: int = 4
    beam: int = 4
    widen: int = 4
    trials: int = 512
    seed: int = 0
    moves: tuple[str, ...] = ("word", "shift", "length", "polish")
    span_test: str = "rank-gap"
    # settling's candidates screened at bfloat16, each seed's this many least rescored at float32 (`seeds.settle`,
    # `leaks.slots.screened`; 0: off); "auto": `search.SEARCH_SCREEN` where bfloat16 is fast (AMX, CUDA), else 0. Off:
    # 4 at batch 64, 450 CPU s, found no sentence more (CoLA 0 8 = 8, SST-2 0 9 = 9), and within the rank limit
    # (RT batch 8, small calls) cost 48% more CPU (recipes/measured/large_batch_s37/search_README.md)
    search_screen: int | str = 0

    def preflight(self, observation: Observation, target: Any) -> None:
        """Raise before any work when exact recovery cannot run: UnsupportedModelError (no layout
        for this architecture), MissingKnowledgeError (layer 0's Q/K/V gradients not shared, or
        no rank gap in them, or a step taken in train mode: dropout leaves no input in a span)."""
        settings = TrainingSettings.of(observation.metadata)
        if settings.dropout_active and settings.recorded:
            rates = ", ".join(f"{k} {v:g}" for k, v in settings.dropout.items() if v > 0)
            raise MissingKnowledgeError(
                f"exact recovery needs a step without dropout; this capture was taken in train mode ({rates}): "
                "dropout scales and zeroes coordinates of every layer input, so none lies in a span")
        variant = self._variant(observation, target)
        if variant is not None:
            return variant.preflight(observation, target)
        types = layout_for(target.model).types_used(observation.gradients) if observation.defence is None else None
        if types and max(types) > 0:  # (a defence's noise fills every row: then the certificates decide)
            raise MissingKnowledgeError(
                f"exact recovery reads single sentences (token type 0); this batch used token types {types} "
                "(nonzero rows of the token-type embedding gradient): sentence pairs are not supported")
        known = observation.knowledge.seq_lengths
        self._layer0(observation, target, sum(known) if known is not None else None)

    def run(self, observation: Observation, target: Any, *, checkpoint: str | Path | None = None,
            resume: bool = False, progress: bool = True) -> AttackOutput:
        variant = self._variant(observation, target)
        if variant is not None:
            return variant.run(observation, target, checkpoint=checkpoint, resume=resume, progress=progress)
        t0 = time.perf_counter()
        settings = TrainingSettings.of(observation.metadata)
        # in reduced precision the lengths set the spans' ranks, so they come first
        early = self._lengths(observation, target) if settings.reduced_precision else None
        layout, span0 = self._layer0(observation, target, sum(early[0]) if early else None)
        lengths, assumed = early or self._lengths(observation, target)
        if settings.per_layer_norm:  # per-layer clipping gave each table its own factor: one again
            observation = replace(observation, gradients=linked_tables(
                layout.word_embedding_name, [layout.position_embedding_name], observation.gradients))
        grads, tok, task = observation.gradients, target.tokenizer, observation.task
        known = assumed["seq_lengths"] == "known"
        if settings.note():
            assumed["training"] = settings.note()
        vocab, vocab_source, span0 = self._vocabulary(layout, grads, tok, task, span0)
        specials = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id} - {None}
        # left padding: sentences stand where their length puts them (`text.padding`, `exact.padding`)
        layout.padding = LeftPadding.of(observation.metadata, lengths, task, tok.pad_token_id, ordered=known,
                                        shifts=layout.pads_take_positions)
        if layout.padding is not None:
            assumed["padding"] = layout.padding.describe()
        read = Candidates.read if layout.padding is None else left_candidates
        pins = self._pins(observation, lengths) if layout.padding is None and known else None
        cands = read(layout, grads, span0, vocab, lengths, specials, known_lengths=known,
                     masks=declared_masks(observation, lengths), mask_id=tok.mask_token_id,
                     **({"pins": pins} if pins is not None else {}))
        sequences, residuals, span1, peeler = self._recover(observation, tok, layout, cands, span0, lengths,
                                                            settings, known)
        sequences, residuals = order_by_slots(observation, tok, peeler, sequences, residuals)
        # per-layer clipping: the classifier's factor is not layer 1's (its labels take the sign rule)
        shares = peeler.fitted if peeler is not None and peeler.working and not settings.clipped_tensors(grads) \
            else None
        prediction = _predict(observation, layout, tok, sequences, assumed, shares)
        details = {
            "certified": self._certified(span1, residuals, cands, lengths, sequences), "layer0_rank": span0.rank,
            "layer0_gap": span0.gap, "layer0_threshold": cands.threshold, "layer1_rank": span1.rank if span1 is not None else None,
            "sentence_residuals": [float(r) for r in residuals], "vocabulary": vocab_source,
            "peeled": len(peeler.sentences) if peeler is not None and peeler.working else None,
            "peel_shares": shares,
            "approximate_peels": len(peeler.sentences) if isinstance(peeler, RoundedPeeler) else None,
            **_candidates_report(cands, len(vocab)), **_budget_report(), "seconds": time.perf_counter() - t0,
        }
        return AttackOutput(prediction=prediction, method=self.name, assumed=assumed, config=self.options(),
                            details=details)

    def _recover(self, observation: Observation, tok: Any, layout: Any, cands: Any, span0: Any,
                 lengths: list[int], settings: TrainingSettings, known: bool) -> tuple[list, list, Any, Any]:
        """Layer 1's span, the peeler and the search over the candidates: (sequences, residuals, span1,
        peeler)."""
        grads = observation.gradients
        span1 = self._layer1(layout, grads, span0, settings, sum(lengths))
        # peeling subtracts a recomputed gradient: exact only where the capture's arithmetic is
        if settings.reduced_precision:  # an approximate peel narrows the search only (certifies nothing)
            peeler = RoundedPeeler(observation, layout, lengths, settings) \
                if span1 is not None and layout.padding is None else None
        else:
            peeler = self._peeler(observation, layout, lengths, span1, tok.mask_token_id, known)
        if layout.padding is not None:
            sequences, residuals = search_left_padded(self, layout, tok, cands, lengths, span1, peeler,
                                                      observation.knowledge.special_tokens)
        else:
            with layer0_table(layout, max(lengths)):
                search = self._search(layout, tok, cands, lengths, span1, peeler,
                                      observation.knowledge.special_tokens)
                sequences, residuals = search.run()
                self._near = search.near  # each length's settled misses (`exact-update` repairs from them)
        return sequences, residuals, span1, peeler

    def options(self) -> dict[str, Any]:
        return {"sweeps": self.sweeps, "beam": self.beam, "trials": self.trials, "widen": self.widen,
                "settle": self.settle, "restarts": self.restarts, "seed": self.seed, "moves": list(self.moves),
                "span_test": self.span_test, "search_screen": self.search_screen}

    def check_options(self) -> None:
        """The option values checked before any work (`validate.attack_instance`): `search_screen` a count or auto."""
        if self.search_screen != "auto":
            integer(self.search_screen, "option search_screen (a count or auto)", minimum=0)

    # -- variants (#15): what the file shares picks the reading; subclasses override these -----
    def _vocabulary(self, layout: Layout, grads: Any, tok: Any, task: str, span0: LayerSpan
                    ) -> tuple[torch.Tensor, str, LayerSpan]:
        """The token ids to test against the layer-0 span, where they came from, and the span that
        screens them."""
        return *vocabulary(layout, grads, tok, task), span0

    def _variant(self, observation: Observation, target: Any) -> "Exact | None":
        """A FedAvg update (`attacks.update.UpdateExact`), an AdamW one or a gradient under additive noise
        (`attacks.noisy.NoisyExact`) is read by its own variant, with these options; None: this one."""
        if type(self) is not Exact:
            return None
        from ..variants import variant_for

        return variant_for(self, observation, target)

    def _pins(self, observation: Observation, lengths: list[int]) -> Any:
        """Token placements read by the variant itself (a `TokenPositions`), or None: the embedding
        gradients' own (`Candidates.read`)."""
        return None

    def _peeler(self, observation: Observation, layout: Layout, lengths: list[int], span1: LayerSpan | None,
                mask_id: int | None, known: bool) -> Peeler | None:
        return Peeler(observation, layout, lengths, span1.rank, mask_id, known) if span1 is not None else None

    def _search(self, layout: Layout, tok: Any, cands: Candidates, lengths: list[int], span1: LayerSpan | None,
                peeler: Any, template: bool) -> Search:
        """The search that assembles the sentences (`exact-update` scores more layers at small lr)."""
        return Search(self, layout, tok, cands, lengths, span1, peeler, template)

    def _certified(self, span1: LayerSpan | None, residuals: list[float], cands: Candidates, lengths: list[int],
                   sequences: list[list[int]]) -> bool:
        return _certified(span1, residuals, cands, lengths)

    # -- steps -------------------------------------------------------------------------------
    def _layer0(self, observation: Observation, target: Any, tokens: int | None) -> tuple[Layout, LayerSpan]:
        """The layout and the layer-0 span, once the options and the gradient allow the attack
        (`tokens`: the batch's token count, which sets the rank in reduced precision)."""
        for name in self.moves:
            MOVES.get(name)  # an unknown move: InputError naming the registered ones
        layout = layout_for(target.model)
        span0 = span_for(layout, observation.gradients, 0, TrainingSettings.of(observation.metadata), tokens,
                         self.span_test)
        if not span0.exact:
            sharing = layout.qkv_sharing(0)
            tokens = "input tokens" if sharing == 1 else f"input tokens x {sharing} layers sharing their weights"
            raise MissingKnowledgeError(
                f"exact recovery needs fewer {tokens} than the hidden size ({span0.basis.shape[0]}); the "
                "first layer's gradient shows no rank gap (batch x length too large, or noise)")
        return layout, span0

    def _layer1(self, layout: Layout, grads: Any, span0: LayerSpan, settings: TrainingSettings,
                tokens: int) -> LayerSpan | None:
        """The layer-1 span, where the gradient shares it and it holds every token."""
        if not layout.shared(grads, layout.qkv_names(1)):
            return None
        span1 = span_for(layout, grads, 1, settings, tokens, self.span_test)
        # e.g. the last layer of a classifier: only [CLS] feeds the loss there
        return None if span1.rank < span0.rank else span1

    @staticmethod
    def _lengths(observation: Observation, target: Any) -> tuple[list[int], dict[str, Any]]:
        know = observation.knowledge
        assumed: dict[str, Any] = {"special_tokens": bool(know.special_tokens)}
        if know.seq_lengths is not None:
            assumed["seq_lengths"] = "known"
            return [int(n) for n in know.seq_lengths], assumed
        inferred, assumed["seq_lengths"] = infer_lengths(observation, target)
        return list(inferred), assumed


def _certified(span1: LayerSpan | None, residuals: list[float], cands: Candidates, lengths: list[int]) -> bool:
    if span1 is not None and span1.exact:
        return all(r == r and span1.certifies(r, n) for r, n in zip(residuals, lengths))
    # without a second layer only an unambiguous single sentence is certain
    return len(lengths) == 1 and all(len(c) == 1 for c in cands.layer0[:lengths[0]])


def _predict(observation: Observation, layout: Layout, tok: Any, sequences: list[list[int]],
             assumed: dict[str, Any], shares: list[float] | None = None) -> dict[str, Any]:
    """Token ids, labels and texts of the batch (masked-LM: masked tokens filled in); notes how
    the labels (and mask positions) were obtained in `assumed`."""
    prediction: dict[str, Any] = {"token_ids": sequences}
    if observation.task == "classify":
        prediction["labels"], assumed["labels"] = class_labels(observation, layout, sequences, shares)
    else:
        prediction["token_ids"], prediction["labels"], assumed["labels"], assumed["mask_positions"] = \
            mlm_labels(observation, layout, tok, sequences)
    prediction["texts"] = [ids_to_text(tok, row) for row in prediction["token_ids"]]
    return prediction


def _candidates_report(cands: Candidates, tokens: int) -> dict[str, Any]:
    pins = cands.placed
    placed = None if pins is None else {"tokens": tokens, "placed": len(pins.complete),
                                        "closed_positions": len(pins.closed), "threshold": pins.threshold}
    return {"placed_tokens": placed, "candidates_per_position": [len(c) for c in cands.layer0],
            "candidates": [[t for t, _ in c] for c in cands.layer0]}


def _budget_report() -> dict[str, Any]:
    """Where a time budget applies, what it allowed and whether it cut the search short."""
    limit = budget.current()
    return {"budget": limit.describe()} if limit.ran_out or not math.isinf(limit.deadline) else {}
