"""Sentences moved between slots of other lengths, on the last layer's [CLS] spans (`exact-update`, batch > 1,
option `cls_lengths`).

The [CLS] start (`update_cls.cls_start`) changes one token at a time and trades tokens between two sentences at the
same positions (one position, or their heads), so a sentence it has built in a slot of the wrong length stays there:
a slot longer than the sentence gets tokens appended, and the slot of the right length holds another sentence's head
or filler. Ground truth (session 31, scratch `recipes/measured/fedavg_small_lr5_s31`; MiniLM, K 8, lr 1e-5, SST-2 dev
batch 0 of 4, the start's end at box misfit 3.1e-3, 39 of 95 tokens right): the 16-token sentence "why he keeps
being cast ... any good" stood in the 21-token slot with two tokens inserted, the 18-token slot held a second copy of
the 12-token sentence's head, and the 21-token sentence was lost but for its first two tokens.

So here two sentences a and b of lengths La > Lb trade their contents: b takes a's inner tokens less a run of
La - Lb of them (at each place in turn), a takes b's inner tokens followed by that run (the two sentences' tokens
stay the same multiset, so no token of the update leaves the batch); the trade of least summed score below the
current is kept (`ClsSpans._keep`), pair by pair, until a round changes nothing; then the [CLS] descent runs again
from there. The result replaces the start where its box misfit is lower (`length_start`).

Threat model: as `attacks.update` (U, w0, K, lr, the declared lengths; the last layer's weights shared).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from ..core.budget import now as budget_now
from ..errors import InputError
from ..validate import number
from .update_batch_positions import BatchMisfit, least_labels
from .update_cls import SITES, ClsSpans
from .update_cls_memo import ScoreMemos
from .update_repair_moves import options_by_length

#: rounds over every pair of sentences of different lengths at most
ROUNDS = 4
#: the values option `cls_lengths` takes: off, on, "race" (`length_race`, the default) and "heats" (`length_heats`)
MODES = (False, True, "race", "heats")
#: option `cls_lengths="heats"`: each start's first heat, this share of the time left when the repairs begin
HEAT = 1 / 3
#: option `cls_lengths_gate`'s default (`_gated`): 1.5 since session 40. RT batch 8, K 8, lr 1e-4 at 400 CPU s side by
#: side (recipes/measured/fedavg_rt_b8_s40/): dev 1 0.791 / 0.513 against 0.781 / 0.490 (the token repair 28.6 CPU s
#: against 0.5), dev 0 and dev 3 ties (no trade); the batch-4 trades measured stand at 0.39 x and 0.95 x, never gated
GATE = 1.5


def check_mode(value: Any, gate: Any = 0.0) -> None:
    """Options `cls_lengths`' value and `cls_lengths_gate`'s (a number, `validate.number`: 0, off, or >= 1) checked
    before any work (`validate.attack_instance`)."""
    if isinstance(value, int) and not isinstance(value, bool) or value not in MODES:
        raise InputError(f"cls_lengths: true, false, 'race' or 'heats', got {value!r:.40}")
    if 0 < number(gate, "option cls_lengths_gate", minimum=0) < 1:
        raise InputError(f"option cls_lengths_gate must be 0 (off) or a number >= 1, got {gate:g}")


def length_trades(x: Sequence[int], y: Sequence[int], a: int, b: int) -> list[dict[int, list[int]]]:
    """Sentences a (x) and b (y), len(x) > len(y), trading contents: b takes x's inner tokens less a run of
    len(x) - len(y) (each place in turn), a takes y's inner tokens and then that run (ends kept)."""
    d = len(x) - len(y)
    if d <= 0 or len(y) < 3:
        return []
    inner_x, inner_y = list(x[1:-1]), list(y[1:-1])
    out = []
    for q in range(len(inner_x) - d + 1):
        run = inner_x[q:q + d]
        rest = inner_x[:q] + inner_x[q + d:]
        out.append({a: [x[0]] + inner_y + run + [x[-1]], b: [y[0]] + rest + [y[-1]]})
    return out


def trade_lengths(spans: ClsSpans, seqs: list[list[int]], cover: set[int] | None, deadline: float
                  ) -> tuple[list[list[int]], dict[str, Any]]:
    """Rounds of `length_trades` over every pair of sentences of different lengths (`ClsSpans._keep`: the trade of
    least summed score below the current), until a round changes nothing; the sentences and a report."""
    seqs = [list(s) for s in seqs]
    scores = spans.score(seqs)
    first, kept, rounds = list(scores), 0, 0
    for _ in range(ROUNDS):
        if budget_now() >= deadline:
            break
        before = kept
        for a in range(len(seqs)):
            for b in range(len(seqs)):
                if len(seqs[a]) > len(seqs[b]):
                    kept += spans._keep(seqs, scores, length_trades(seqs[a], seqs[b], a, b), cover, deadline)
        rounds += 1
        if kept == before:
            break
    return seqs, {"score_before": first, "score_after": scores, "trades": kept, "rounds": rounds}


def length_start(repair: Any, pred: dict, fits: Any, deadline: float, misfit: BatchMisfit | None = None,
                 relabel: bool = True, sites: Sequence[str] = SITES, gate: float = 0.0, rough: int = 0,
                 memo: ScoreMemos | None = None) -> dict[str, Any] | None:
    """Option `cls_lengths`: the guess `pred` (token ids, labels; where the [CLS] start left it) through
    `trade_lengths`, then descended on the [CLS] spans again (`ClsSpans.descend`, the token repair's options); of
    the three (start, traded, descended) the one of least box misfit (with `relabel`, each under its labels of least
    misfit) replaces the guess. A report ("ends": each one's misfit, "from": the one kept), or None where no site
    is shared or the lengths are all one. Ground truth (SST-2 dev batch 0 of 4, K 8, lr 1e-5; scratch
    `recipes/measured/fedavg_small_lr5_s31`): one trade took the start from 39 to 54 of 95 tokens right, box misfit
    3.14e-3 -> 2.99e-3; the descent after it ended at 3.16e-3. `gate` (option `cls_lengths_gate`; 0: off): no
    descent where the trades leave the box misfit over `gate` x the start's (`_gated`). "trade_cpu_s": the trades'
    CPU s alone (the rest of "cpu_s" is the descent and the misfits). `rough` (option `cls_rough`): the trials ranked
    at bfloat16 first (`update_cls_rough`); "forwards": the [CLS] forwards, float32 and bfloat16; `memo` (option
    `cls_memo`): the scores kept per sentence, shared with the [CLS] start (`update_cls_memo`)."""
    seqs, began = [list(s) for s in pred["token_ids"]], time.process_time()
    spans = ClsSpans.of(fits, repair.layout, len(seqs), sites, rough, memo)
    if spans is None or len(seqs) < 2 or len({len(s) for s in seqs}) < 2:
        return None
    misfit = misfit if misfit is not None else BatchMisfit(repair)
    traded, report = trade_lengths(spans, seqs, repair.cover, deadline)
    report["trade_cpu_s"] = round(time.process_time() - began, 1)
    ends = {"start": (seqs, list(pred["labels"]))}
    if report["trades"]:
        ends["traded"] = traded, _labels(traded, pred["labels"], misfit, relabel)
    if report["trades"] and not _gated(misfit, ends, gate, report):
        options = options_by_length(repair, traded)
        got, report["descent"] = spans.descend(traded, options, repair.cover, deadline)
        ends["descended"] = got, _labels(got, pred["labels"], misfit, relabel)
    report["ends"] = {name: misfit(*end) for name, end in ends.items()}
    report["from"] = min(report["ends"], key=report["ends"].get)  # the start on a tie
    report["misfit"] = [report["ends"]["start"], report["ends"][report["from"]]]
    report["kept"] = report["from"] != "start"
    if report["kept"]:
        pred["token_ids"], pred["labels"] = ends[report["from"]]
    report["cpu_s"] = round(time.process_time() - began, 1)
    report["forwards"] = [spans.forwards, spans.rough.forwards if spans.rough is not None else 0]
    if memo is not None:
        report["memo"] = memo.report()
    return report


def _gated(misfit: BatchMisfit, ends: dict[str, tuple], gate: float, report: dict[str, Any]) -> bool:
    """Option `cls_lengths_gate`: whether the descent after the trades is skipped, the traded batch's box misfit
    over `gate` x the start's (`report["gated"]`: that ratio; 0: off). The descents measured moved the traded
    batch's misfit by -27% (SST-2 dev 1 of 4, K 8, lr 1e-5: 9.89e-4 -> 7.24e-4, kept), +6% (SST-2 dev 0: 2.99e-3 ->
    3.16e-3) and +0.6% (RT dev 1 of 8, lr 1e-4: 1.148e-2 -> 1.155e-2); on RT, the one traded batch over its start's
    (2.03 x 5.67e-3), the trade and its descent took 102.6 of the last ~103 CPU s and the token repair got 0.4
    (`recipes/measured/fedavg_rt_blocks_s39`, B). At 1.5 a descent would have to lower the misfit by a third, more
    than any measured, to be kept; the batch-4 cells measured (0.95 x, 0.39 x) descend as before."""
    if not gate:
        return False
    ratio = misfit(*ends["traded"]) / max(misfit(*ends["start"]), 1e-300)
    report["gated"] = round(ratio, 3)
    return ratio > gate


def _labels(seqs: list[list[int]], labels: Sequence[int], misfit: BatchMisfit, relabel: bool) -> list[int]:
    """The labels for a traded batch: with `relabel`, those of least misfit (the trades move sentences between
    slots, and with them their labels: `update_batch_positions.least_labels`), else `labels`."""
    return least_labels(seqs, [list(labels)], misfit.classes, misfit) if relabel else list(labels)


def length_race(repair: Any, pred: dict, report: dict[str, Any], untraded: tuple[list[list[int]], list[int]],
                deadline: float, order: Sequence[int] | None, details: dict[str, Any]) -> dict[str, Any]:
    """Option `cls_lengths="race"`: where the token repair from the traded batch (`pred`, its `report`) stopped
    before the deadline (no change left to keep), the repair runs again from `untraded` (the batch before the trade:
    token ids, labels) until `deadline`, and the end of least box misfit is kept (`pred` updated in place). The
    kept end's report; `details["cls_lengths_race"]` says what ran. Session 32 (SST-2 K 8 lr 1e-5, 800 CPU s;
    `recipes/measured/fedavg_small_lr5_s32`): on dev batch 1 a trade of two right sentences passed both tests, its
    repair stopped at misfit 5.23e-4 after 340 CPU s, and the untraded start's repair reached 3.49e-5 (3 of 4
    exact); on dev batch 0 the traded repair ran out at 2.44e-4 (0.927 against 0.835 untraded). Session 34
    (`recipes/measured/fedavg_small_lr5_s34`, 800 CPU s): SST-2 dev 1 0.994 / 0.926 (the untraded end kept, 3 of 4
    exact) against the defaults' 0.981 / 0.939, dev 0 0.927 / 0.727 against 0.835 / 0.588, RT dev 0 (no trade) 0.676
    / 0.298 in both, CoLA exact (22 CPU s): the default. With less time the traded repair may run out before it
    stops, and the race is then `cls_lengths=true` (which read SST-2 dev 1 at 0.894 in session 32)."""
    race: dict[str, Any] = {"traded": report["misfit_after"], "ran": False, "kept": "traded"}
    details["cls_lengths_race"] = race
    if report.get("ran_out") or budget_now() >= deadline or report["misfit_after"] <= 0:
        return report
    seqs, other = repair.run(untraded[0], untraded[1], deadline, order)  # copies its start: `pred` stays the traded
    race.update(ran=True, untraded=other["misfit_after"], cpu_s=other["cpu_s"])
    if other["misfit_after"] >= report["misfit_after"]:
        return report
    pred["token_ids"], pred["labels"] = seqs, list(untraded[1])
    race["kept"] = "untraded"
    return other


def length_heats(repair: Any, pred: dict, untraded: tuple[list[list[int]], list[int]], deadline: float,
                 order: Sequence[int] | None, details: dict[str, Any]) -> dict[str, Any]:
    """Option `cls_lengths="heats"`: the traded batch (`pred`: token ids, labels) and the untraded one (`untraded`,
    the batch before the trade) are each repaired for a heat of `HEAT` of the time left (one that stops, with no
    change left to keep, hands the rest of its heat on); then the one of least box misfit that has not stopped goes
    on from where it stands until `deadline` (where it stops, the other). The end of least misfit is kept (`pred`
    updated in place). Returns the kept end's report (its runs' changes and CPU s summed, "runs" counted);
    `details["cls_lengths_race"]` says what ran. Why: `race` repairs the untraded start only where the traded
    repair stops in time. Session 35 (SST-2 dev 1, K 8, lr 1e-5, 400 CPU s, `recipes/measured/fedavg_small_lr5_s35`):
    the traded repair ran out at misfit 5.28e-4 (ROUGE-1 0.865), where `cls_lengths=false` repaired the untraded
    start to 5.14e-5 (0.981) in the same time."""
    heat = max(0.0, deadline - budget_now()) * HEAT
    ends = {"traded": (pred["token_ids"], list(pred["labels"])), "untraded": (untraded[0], list(untraded[1]))}
    reports: dict[str, dict[str, Any]] = {}
    race: dict[str, Any] = {"mode": "heats", "heat_s": round(heat, 1), "heats": {}, "went_on": [], "kept": None}
    details["cls_lengths_race"] = race
    stopped: set[str] = set()
    for name in ends:
        _heat_run(repair, ends, reports, stopped, name, min(deadline, budget_now() + heat), order)
        race["heats"][name] = reports[name]["misfit_after"]
    while budget_now() < deadline and len(stopped) < len(ends):
        name = min((n for n in ends if n not in stopped), key=lambda n: reports[n]["misfit_after"])
        _heat_run(repair, ends, reports, stopped, name, deadline, order)
        race["went_on"].append(name)
    kept = race["kept"] = min(ends, key=lambda n: reports[n]["misfit_after"])  # the traded on a tie
    race.update({n: reports[n]["misfit_after"] for n in ends})
    pred["token_ids"], pred["labels"] = [list(s) for s in ends[kept][0]], list(ends[kept][1])
    return reports[kept]


def _heat_run(repair: Any, ends: dict, reports: dict, stopped: set, name: str, until: float,
              order: Sequence[int] | None) -> None:
    """`length_heats`' one run: start `name` repaired from where it stands (`ends`) until `until`; its end, its
    report merged with the earlier runs' (`reports`), and `stopped` where it ended before `until` (no change left)."""
    seqs, labels = ends[name]
    got, report = repair.run(seqs, labels, until, order)  # copies its start
    ends[name] = got, labels
    if not report.get("ran_out"):
        stopped.add(name)
    earlier = reports.get(name)
    if earlier is not None:
        report = {**report, "misfit_before": earlier["misfit_before"],
                  "changes": earlier.get("changes", 0) + report.get("changes", 0),
                  "cpu_s": round(earlier.get("cpu_s", 0.0) + report.get("cpu_s", 0.0), 1)}
    reports[name] = {**report, "runs": (earlier or {}).get("runs", 0) + 1}
