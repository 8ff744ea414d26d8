"""Repairs of an uncertified `exact-update` guess where the rounding is fitted (small learning rates).

Small learning rates (`update_rounding`, `update_sentences`, `update_repair`). A float32 client loses every step
smaller than half an ulp of its weight: U holds the average gradient only to within
ulp(w) / (2 lr) per entry, a box as wide as the gradient itself at lr 1e-4 on MiniLM and eight
times wider at 1e-5. Where that box is wide against U (from lr ~1e-3 on MiniLM), the spans are
read from the rank-r matrix closest to U inside it, each token of a peeled sentence must lie near
the fitted layer-1 span (a cut of a longer sentence otherwise passes the loose whole-sentence
test, `update_peel`), and an uncertified guess is repaired on the whole update's box misfit (every
layer's Q/K/V gradient against the box; the true batch's is ~0: 5e-14 on CoLA dev batch 4, K = 8,
lr 1e-4, against 1.2e-2 for the assembled guess), first sentence by sentence (`update_sentences`:
the search's settled misses, and each slot made afresh from layer 0), then token by token
(`update_repair`, from the labels of least box misfit), and simulated again. At lr 1e-4 the layer-1
test certifies no sentence at all (the search assembles the batch from each length's closest miss, a
cut of a longer sentence among them), so where the box is that wide (`REPAIR_ROUNDING`) the repairs
keep `REPAIR_SHARE` of the budget. At batch > 1 the repairs may start from the batch the update's embedding rows
place (`update_batch_positions`), its shared positions' tokens handed to sentences by `update_slots`.

Threat model: as `attacks.update` (U, w0, K, lr, the declared lengths).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from ..core import budget
from ..text.decode import ids_to_text
from ..text.layouts import layout_for
from ..threat import Observation
from .base import AttackOutput
from .exact.candidates import vocabulary
from .update_batch_positions import BatchMisfit, ranked_start
from .update_cls import POOLER, SITES, SWEEPS, ClsSpans, cls_start
from .update_cls_lengths import length_heats, length_race, length_start
from .update_cls_memo import ScoreMemos
from .update_positions import declared_batch
from .update_repair import WIDTH, BoxRepair
from .update_repair_blocks import BLOCK_AT_DEFAULT, blocks_off, late_blocks, traded_blocks_off
from .update_repair_kick import Kick, traded_kick_off
from .update_repair_peeled import PeeledPooler
from .update_sentences import SentenceRepair
from .update_sim import UpdateFacts
from .update_slots import slot_starts

#: options `repair_cls_guard` and `cls_screen_reserve` set to `auto` (`batch_gated`): these values where the declared
#: batch holds `AUTO_BATCH` sentences or more, off below. RT dev batch 1 of 8, K 8, lr 1e-4, the two together read
#: ROUGE-1 0.791 against 0.705 (reserve alone) and 0.719 (neither); at batch 4 the guard lost (SST-2 lr 1e-5 dev
#: batch 1, ROUGE-2 0.790 against 0.939; `recipes/measured/fedavg_rt_b8_guard_s32`, `fedavg_small_lr5_s32`)
AUTO_ON = {"repair_cls_guard": True, "cls_screen_reserve": 0.5}
AUTO_BATCH = 8


def repair_guess(attack: Any, observation: Observation, target: Any, moved: Any, facts: UpdateFacts,
                 out: AttackOutput, near: dict) -> None:
    """Small learning rates (the rounding fitted): repair the guess on the whole update's box
    misfit, first sentence by sentence from the search's settled misses (`update_sentences`),
    then token by token (`update_repair`); then certify again by simulation. The certificate
    between the two re-solves the labels by the simulation; the token repair starts from
    whichever labels, those or the sentence repair's, leave the smaller box misfit."""
    layout = layout_for(moved.model)
    _, span0 = attack._layer0(observation, moved)
    vocab, _ = vocabulary(layout, observation.gradients, target.tokenizer, observation.task)
    pred = out.prediction
    gate = batch_gated(attack, declared_batch(observation) or len(pred["token_ids"]))
    if gate["auto"]:
        out.details["batch_gate"] = gate
    pins = attack._batch_pins(observation, layout_for(target.model), facts)
    if pins is not None and not attack.row_ranking:
        pins = dataclasses.replace(pins, order=None)
    repair = _box_repair(attack, layout, span0, vocab, pins)
    untraded = None
    if getattr(pins, "order", None) is not None:
        untraded = _starts(attack, target, pins, repair, out, gate["cls_screen_reserve"])
    if near:
        sentence_repair = SentenceRepair(repair)
        pred["token_ids"], sentences = sentence_repair.run(pred["token_ids"], pred["labels"], near,
                                                           budget.current().deadline)
        out.details["sentence_repair"] = sentences
        if sentences["swaps"] or sentences["fresh"]:  # certified already: no token sweep to spend
            pred["texts"] = [ids_to_text(target.tokenizer, row) for row in pred["token_ids"]]
            repaired = list(pred["labels"])
            attack._certify(observation, layout_for(target.model), facts, out)
            if out.details["certified"]:
                return
            # the certificate re-solved the labels by the simulation, closest for a wrong batch: the
            # token repair starts from whichever labels fit the box better (RT dev batch 0, lr 1e-4:
            # the re-solved ones took its start from 0.021 to 0.031)
            pred["labels"] = repair.least_labels(pred["token_ids"], [repaired, pred["labels"]],
                                                 sentence_repair.gradient)
    residuals = out.details.get("sentence_residuals") or []
    worst = sorted(range(len(residuals)), key=lambda b: -residuals[b] if residuals[b] == residuals[b] else
                   -float("inf")) if len(residuals) == len(pred["token_ids"]) else None
    _cls_scores(attack, repair, len(pred["token_ids"]), gate["repair_cls_guard"])
    if untraded is not None and attack.cls_lengths == "heats":  # both starts repaired in heats, the leader on
        report = length_heats(repair, pred, untraded, budget.current().deadline, worst, out.details)
    else:
        race = untraded is not None and attack.cls_lengths == "race"
        off, late = traded_blocks_off(attack, race, repair.block_at), getattr(attack, "repair_block_late", False)
        with blocks_off(repair, off and not late), late_blocks(repair, off and late), traded_kick_off(repair, race):
            pred["token_ids"], report = repair.run(pred["token_ids"], pred["labels"], budget.current().deadline, worst)
        if off and late:  # the traded start's stalls (spent, left, due): in its report, in the units where kept
            report["block_late"] = out.details["block_late"] = list(repair.late_stalls)
    if untraded is not None and attack.cls_lengths == "race":  # the untraded start repaired with the time left
        report = length_race(repair, pred, report, untraded, budget.current().deadline, worst, out.details)
    pred["texts"] = [ids_to_text(target.tokenizer, row) for row in pred["token_ids"]]
    attack._certify(observation, layout_for(target.model), facts, out)
    out.details["repair"] = _reported(repair, report)


def _reported(repair: BoxRepair, report: dict) -> dict:
    """The repair's `report` with what its options add: option `repair_kick`'s kicks (the last run's: the race's
    untraded start's where it ran); option `repair_memo`'s [sentences forwarded, answered from the memo]; option
    `repair_cutoff`'s [trials given up, summed through] (`update_repair_cutoff`)."""
    if repair.kick is not None:
        report["kick"] = repair.kick.report()
    if getattr(repair, "memo", None) is not None:
        report["memo"] = [repair.memo.fresh, repair.memo.hits]
    if getattr(repair, "cutoff", False):
        report["cutoff"] = list(repair.cut)
    return report


def _box_repair(attack: Any, layout: Any, span0: Any, vocab: Any, pins: Any) -> BoxRepair:
    """The token repair (`update_repair.BoxRepair`) with the attack's options: its width, in-place trials, slides,
    block moves and where they are tried (`repair_block_at`), shortest sentences first (`repair_block_short`), owed
    block sweeps (`repair_block_owed`), the neighbouring pairs (`repair_pairs`), trials' gradients a chunk at a time
    (`repair_batch`), misfits given up once they cannot be kept (`repair_cutoff`), the block moves weighed
    (`repair_block_keep`), their screen (`repair_block_peeled`) and the placed tokens put back (`repair_pin_fill`)."""
    repair = BoxRepair(layout, attack._fits, span0, vocab, pins=pins, move=attack.cross_move,
                       width=getattr(attack, "repair_width", WIDTH), inplace=getattr(attack, "repair_inplace", True),
                       slide=int(getattr(attack, "repair_slide", 0) or 0),
                       block=int(getattr(attack, "repair_block", 0) or 0),
                       float32=bool(getattr(attack, "repair_float32", False)))
    repair.block_at = getattr(attack, "repair_block_at", BLOCK_AT_DEFAULT)
    repair.block_short = bool(getattr(attack, "repair_block_short", False))
    repair.block_owed = bool(getattr(attack, "repair_block_owed", False))  # option `repair_block_owed`
    repair.pairs = int(getattr(attack, "repair_pairs", 0) or 0)  # option `repair_pairs` (`update_repair_pairs`)
    repair.block_keep = int(getattr(attack, "repair_block_keep", 0) or 0)  # option `repair_block_keep`
    repair.fill = int(getattr(attack, "repair_pin_fill", 0) or 0)  # option `repair_pin_fill` (`update_repair_fill`)
    if getattr(attack, "repair_block_peeled", False):  # option `repair_block_peeled` (`update_repair_peeled`)
        repair.peeled = PeeledPooler.of(layout, attack._fits)
    repair.batch = int(getattr(attack, "repair_batch", 0) or 0)  # option `repair_batch` (`update_repair_batch`)
    repair.cutoff = bool(getattr(attack, "repair_cutoff", False))  # option `repair_cutoff` (`update_repair_cutoff`)
    return repair


def batch_gated(attack: Any, sentences: int) -> dict:
    """The values of the options in `AUTO_ON` for a batch of `sentences` (what the attacker is told: the declared
    lengths' count, `declared_batch`, else the guess's, never the true batch's): an option set to `auto` takes its
    `AUTO_ON` value where `sentences` >= `AUTO_BATCH`, off (False / 0) below; any other value as set. Also
    "sentences" and "auto" (the names set to `auto`), for the attack's details."""
    gate: dict = {"sentences": sentences, "auto": []}
    for name, on in AUTO_ON.items():
        value = getattr(attack, name, type(on)())
        if value == "auto":
            gate["auto"].append(name)
            value = on if sentences >= AUTO_BATCH else type(on)()
        gate[name] = value
    return gate


def _starts(attack: Any, target: Any, pins: Any, repair: BoxRepair, out: AttackOutput,
            reserve: float | None = None) -> tuple[list[list[int]], list[int]] | None:
    """With the batch placements' ranking: the guess replaced by the ranked fill or a slot assignment of least box
    misfit (`ranked_start`, with the batch `slots_first` carried), then descended on the [CLS] spans (`cls_start`, by
    `_cls_deadline`); with option `cls_lengths`, sentences of other lengths trade contents after it
    (`update_cls_lengths.length_start`). `reserve`: option `cls_screen_reserve` as `batch_gated` resolved it (None:
    the option as set). Returns the batch before the length trade (token ids, labels) where `cls_lengths` is
    "race" or "heats" and a trade was kept, else None."""
    pred, untraded = out.prediction, None
    special, assign = slot_starts(pins, target.tokenizer, attack.slot_assignment)
    carried = getattr(attack, "_carried", None)
    misfit = BatchMisfit(repair)
    batches: dict = {}
    out.details["ranked_fill"] = ranked_start(repair, pred, pins.order, special,
                                               _carrying(assign, carried) if carried else assign, misfit, batches)
    if attack.cls_descent and attack.slot_assignment and out.details["ranked_fill"]["kept"] != "carried":
        deadline, sites = _cls_deadline(attack), SITES + (POOLER,) if attack.cls_pooler else SITES
        until, rough = _screen_until(attack, deadline, reserve), int(getattr(attack, "cls_rough", 0) or 0)
        memo = ScoreMemos() if getattr(attack, "cls_memo", False) else None  # one for both starts' spans
        out.details["cls_descent"] = cls_start(repair, pred, attack._fits, deadline, sites, attack.cls_relabel,
                                               special if attack.cls_inner_plain else (),
                                               misfit, batches if getattr(attack, "cls_restarts", False) else None,
                                               getattr(attack, "cls_screen", 0), until,
                                               max(SWEEPS, int(getattr(attack, "cls_sweeps", 0) or 0)), rough,
                                               memo=memo)
        if getattr(attack, "cls_lengths", False):  # sentences moved between slots of other lengths
            before = [list(s) for s in pred["token_ids"]], list(pred["labels"])
            out.details["cls_lengths"] = length_start(repair, pred, attack._fits, deadline, misfit,
                                                      attack.cls_relabel, sites,
                                                      float(getattr(attack, "cls_lengths_gate", 0) or 0), rough,
                                                      memo=memo)
            if isinstance(out.details["cls_descent"], dict):  # carried where the recipes read the start
                out.details["cls_descent"]["lengths"] = out.details["cls_lengths"]
            if attack.cls_lengths in ("race", "heats") and (out.details["cls_lengths"] or {}).get("kept"):
                untraded = before
    return untraded


def _cls_deadline(attack: Any) -> float:
    """The [CLS] start's deadline: the budget's, or with option `cls_share` (in (0, 1)) that share of what is left."""
    deadline, share = budget.current().deadline, _fraction(attack, "cls_share")
    return _share_of(deadline, share) if share and deadline != float("inf") else deadline


def _screen_until(attack: Any, deadline: float, reserve: float | None = None) -> float | None:
    """Option `cls_screen_reserve` (in (0, 1); `reserve` where given, the option as `batch_gated` resolved it): when
    the [CLS] start's screen begins no more starts, so that this share of the [CLS] start's time (to `deadline`) is
    left for the kept end's going on; None (off, or no deadline).
    Session 31 (`recipes/measured/fedavg_rt_b8_s31`): RT b8 K 8 lr 1e-4, a [CLS] sweep ~35 CPU s, each start's 3
    screened sweeps ~105 of the ~375 CPU s, and the kept end never went on."""
    reserve = _fraction(attack, "cls_screen_reserve", reserve)
    return _share_of(deadline, 1.0 - reserve) if reserve and deadline != float("inf") else None


def _fraction(attack: Any, name: str, value: Any = None) -> float:
    """The attack's option `name` (or `value` where given) where it lies in (0, 1), else 0 (off)."""
    value = float((getattr(attack, name, 0) if value is None else value) or 0)
    return value if 0 < value < 1 else 0.0


def _share_of(deadline: float, share: float) -> float:
    """The time `share` of the way from now to `deadline`."""
    began = budget.now()
    return began + share * (deadline - began)


def _cls_scores(attack: Any, repair: BoxRepair, batch: int, guard: bool) -> None:
    """The token repair's uses of the [CLS] score (`update_cls.ClsSpans.score`, the spans built once; batch > 1, the
    last layer shared). Option `repair_screen`: the repair weighs only each position's `repair_screen` trials of
    least [CLS] score (one forward a trial, where the box misfit costs a backward) until a screened sweep changes
    nothing. Ground truth (scratch, `recipes/measured/fedavg_small_lr_s28`): at lr 1e-5 the true batch has box
    misfit 0 and every single substitution tried more; the repair ran out of budget at 3-5 full sweeps, its misfit
    still falling. Option `repair_screen_from`: the screened sweeps keep fewer trials first (`BoxRepair.first_keep`);
    option `repair_exchange_screen`: the sentences' trades screened too (`BoxRepair.exchange_keep`). Option
    `repair_cls_guard`: the repair keeps no change that raises a changed sentence's [CLS] score (`BoxRepair.guard`).
    Session 31 (`recipes/measured/fedavg_rt_b8_s31`): RT dev batch 1 of 8, K 8, lr 1e-4, the [CLS] start ended 98
    of 161 tokens right and the repair's 27 changes lowered the box misfit 5.67e-3 -> 4.70e-3 and took it to 91.
    Option `repair_guard_first`: the guard weighed before each trial's gradient (`BoxRepair.guard_first`; session 33,
    RT 1: 182 of 185 weighed trials refused, 96.6 CPU s).
    Option `repair_memo`: these scores kept per sentence, only sentences not seen before forwarded (`BoxRepair.memo`,
    `update_cls_memo.ScoreMemo`; `recipes/measured/fedavg_memo_s47`).
    `guard`: option `repair_cls_guard` as `batch_gated` resolved it (never the option's raw value: `auto` is text)."""
    keep = int(getattr(attack, "repair_screen", 0) or 0)
    fits = getattr(attack, "_fits", None)
    if (keep <= 0 and not guard) or batch < 2 or fits is None:
        return
    memo = ScoreMemos() if getattr(attack, "repair_memo", False) else None  # option `repair_memo`: its own memo
    spans = ClsSpans.of(fits, repair.layout, batch, memo=memo)  # the sites' bases `cls_start` fitted (`row_basis`)
    if spans is None:
        return
    repair.memo = spans.memo
    if keep > 0:
        repair.screen, repair.keep = spans.score, keep
        repair.first_keep = int(getattr(attack, "repair_screen_from", 0) or 0)
        repair.exchange_keep = int(getattr(attack, "repair_exchange_screen", 0) or 0)
        kick, at = int(getattr(attack, "repair_kick", 0) or 0), getattr(attack, "repair_kick_at", "stall")
        repair.kick = Kick(spans, kick, at) if kick > 0 else None  # option `repair_kick` (`update_repair_kick`)
    if guard:
        repair.guard = spans.score
        if getattr(attack, "repair_guard_first", False):  # the guard scores every trial: the screen's scores kept
            repair.guard_first, scores = True, _remembered(spans.score)
            repair.guard, repair.screen = scores, scores if keep > 0 else None


def _remembered(score: Callable[[list[list[int]]], list[float]]) -> Callable[[list[list[int]]], list[float]]:
    """`score` (per sentence) with each distinct sentence's score kept: option `repair_guard_first` scores a trial
    for the guard that the repair's screen (`repair_screen`) scored already."""
    kept: dict[tuple, float] = {}

    def scored(seqs: list[list[int]]) -> list[float]:
        new = list(dict.fromkeys(tuple(s) for s in seqs if tuple(s) not in kept))
        kept.update(zip(new, score([list(s) for s in new])))
        return [kept[tuple(s)] for s in seqs]
    return scored


def _carrying(assign: Any, batch: list[list[int]]) -> Any:
    """`ranked_start`'s batches from `assign` (`update_slots.assigned`, or None) and `batch` (option `slots_carry`:
    where `slots_first` left it) named "carried"."""
    def make(filled: list[list[int]]) -> dict[str, list[list[int]]]:
        return {**(assign(filled) if assign is not None else {}), "carried": [list(s) for s in batch]}
    return make


def better_result(a: AttackOutput, b: AttackOutput) -> bool:
    """Whether result a beats b: certified first, then the smaller summed layer-1 residual."""
    def key(o: AttackOutput) -> tuple[bool, float]:
        return not o.details["certified"], sum(o.details.get("sentence_residuals") or [float("inf")])
    return key(a) < key(b)


def repair_misfit(out: AttackOutput) -> float:
    """The box misfit the token repair left (inf where it did not run)."""
    return float((out.details.get("repair") or {}).get("misfit_after", float("inf")))
