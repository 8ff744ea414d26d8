"""The token repair's screen (`update_repair.BoxRepair`, `exact-update`'s option `repair_screen`): each position's
trials ranked by a cheap score (the [CLS] spans' in the attack), only the first `keep` weighed on the box misfit,
until a screened sweep changes nothing; then full sweeps. A wide random BERT's update at lr 1e-5."""

from __future__ import annotations

import copy
import time
from types import SimpleNamespace

import pytest
import torch

from conftest import embedding_pins, repair_inputs, wide_update_at_small_lr
from textleak.attacks import update as update_module
from textleak.attacks import update_small_lr
from textleak.attacks.update import UpdateExact, midpoint_model
from textleak.attacks.update_positions import declared_batch
from textleak.attacks.update_repair import BoxRepair
from textleak.attacks.update_rounding import RoundingFits
from textleak.attacks.update_sim import update_facts
from textleak.core import budget
from textleak.threat import Knowledge

TEXTS = ["a bird sang a song .", "the cat was very sad .", "the film was good ."]
LABELS = [0, 1, 1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return wide_update_at_small_lr(tmp_path_factory.mktemp("wide-bert-screen"), TEXTS, LABELS)


def _box(wide, observation, ids, **kw):
    layout, fits, span0 = repair_inputs(wide, observation)
    extra = wide.tokenizer.convert_tokens_to_ids([",", "big", "dog", "red"])
    vocab = torch.tensor(sorted({t for s in ids for t in s} | set(extra)))
    return BoxRepair(layout, fits, span0, vocab, sweeps=2, pins=embedding_pins(ids, extra), **kw), extra[1]


def _wrong(ids, big=None):
    wrong = [list(s) for s in ids]
    wrong[2][2] = ids[1][2]  # "the cat was good ."
    return wrong


def test_a_screen_that_ranks_the_true_token_first_repairs_in_the_screened_sweeps(setup):
    wide, observation, ids = setup
    plain, big = _box(wide, observation, ids)
    got, report = plain.run(_wrong(ids, big), LABELS, time.monotonic() + 600)
    assert got == ids and report["screened_sweeps"] == 0 and report["screened"] == 0

    def prefers_truth(trials):  # 0 for a trial that holds the true sentence, else 1
        return [0.0 if t in ids else 1.0 for t in trials]
    screened, _ = _box(wide, observation, ids, screen=prefers_truth, keep=1)
    got, on = screened.run(_wrong(ids, big), LABELS, time.monotonic() + 600)
    # the truth (box misfit 0) found in the screened sweeps: no full sweep follows (no trial can be kept there)
    assert got == ids and on["misfit_after"] == 0 and on["screened_sweeps"] >= 1 and on["screened"] > 0
    assert on["sweeps"] == 0


def test_a_screen_that_hides_the_true_token_hands_over_to_full_sweeps(setup):
    wide, observation, ids = setup

    def hides_truth(trials):  # the true sentence last
        return [1.0 if t in ids else 0.0 for t in trials]
    screened, big = _box(wide, observation, ids, screen=hides_truth, keep=1)
    screened.sweeps = 2
    got, report = screened.run(_wrong(ids), LABELS, time.monotonic() + 600, exchange=False)
    # the screened sweeps keep only wrong tokens, or none, and stall above misfit 0: full sweeps (counted) follow
    assert got != ids and report["screened_sweeps"] >= 1 and report["sweeps"] >= 1
    assert 0 < report["misfit_after"] < report["misfit_before"]


def _spy_on_the_repair(monkeypatch, *fields: str) -> list:
    """Replace the token repair by a spy that records its `fields` at each run and changes nothing."""
    seen = []

    class Spy(BoxRepair):
        def run(self, sequences, labels, deadline, order=None, exchange=True):
            seen.append(tuple(getattr(self, f) for f in fields))
            return [list(s) for s in sequences], {"misfit_after": 0.0}
    monkeypatch.setattr(update_small_lr, "BoxRepair", Spy)
    return seen


def _repair_the_true_batch(attack: UpdateExact, wide, observation, ids):
    """Run `attack`'s token repair step once on the true batch, read at the update's midpoint; its output."""
    facts = update_facts(observation.metadata)
    attack._fits = RoundingFits(update_module.layout_for(wide.model), observation.gradients, facts.lr, facts.steps)
    attack._widen = None
    moved = copy.copy(wide)
    moved.model = midpoint_model(wide.model, observation.gradients, facts)
    out = update_module.AttackOutput(method="exact-update", config={}, assumed={}, details={"certified": False},
                                     prediction={"token_ids": [list(s) for s in ids], "labels": list(LABELS),
                                                 "texts": []})
    attack._repair(observation, wide, moved, facts, out, {})
    return out


def test_option_repair_screen_hands_the_token_repair_the_cls_score(setup, monkeypatch):
    wide, observation, ids = setup
    assert UpdateExact().repair_screen == 8 and UpdateExact(repair_screen=0).repair_screen == 0
    seen = _spy_on_the_repair(monkeypatch, "keep", "screen")
    for keep in (0, 4):
        _repair_the_true_batch(UpdateExact(repair_screen=keep, cls_descent=False), wide, observation, ids)
    assert seen[0] == (0, None) and seen[1][0] == 4 and seen[1][1] is not None
    scores = seen[1][1](ids + [_wrong(ids)[2]])
    assert len(scores) == 4 and scores[2] < scores[3]  # the true sentence below its one-token-wrong copy


def test_from_a_narrow_screen_the_kept_trials_double_after_each_sweep_that_changes_nothing(setup):
    """`first_keep` (option `repair_screen_from`): the screened sweeps keep 1 trial a position, then 2, then 4 (the
    `keep`) once a sweep at the narrower screen changes nothing; then full sweeps."""
    wide, observation, ids = setup

    def hides_truth(trials):  # the true sentence last: no screened sweep can reach it
        return [1.0 if t in ids else 0.0 for t in trials]
    screened, _ = _box(wide, observation, ids, screen=hides_truth, keep=4, first_keep=1)
    got, report = screened.run(_wrong(ids), LABELS, time.monotonic() + 600, exchange=False)
    keeps = report["screen_keeps"]
    assert keeps[0] == 1 and keeps == sorted(keeps) and {1, 2, 4} <= set(keeps) and set(keeps) <= {1, 2, 4}
    assert report["screened_sweeps"] == len(keeps) >= 3
    plain, _ = _box(wide, observation, ids, screen=hides_truth, keep=4)
    assert set(plain.run(_wrong(ids), LABELS, time.monotonic() + 600, exchange=False)[1]["screen_keeps"]) == {4}


def _traded(ids):
    """The true batch with sentences 1 and 2 trading "cat" and "film" (position 2): single substitutions back are
    refused by the pins' cover only where a token would leave the batch, the trade undoes it at once."""
    wrong = [list(s) for s in ids]
    wrong[1][2], wrong[2][2] = ids[2][2], ids[1][2]
    return wrong


def _exchanged(box, ids):
    """One `_exchange` of the traded batch in a screened sweep: (the batch after, the gradients it took)."""
    seqs, _ = box.begin(_traded(ids), LABELS, time.monotonic() + 600)
    box._screening, before = True, box.trials
    box._exchange(seqs)
    return seqs, box.trials - before


def test_option_exchange_keep_screens_the_sentences_trades(setup):
    """`exchange_keep` (option `repair_exchange_screen`): each pair's trades ranked by the screen (the two sentences'
    scores summed), only the first `exchange_keep` weighed on the box misfit."""
    wide, observation, ids = setup

    def prefers_truth(trials):
        return [0.0 if t in ids else 1.0 for t in trials]

    def hides_truth(trials):
        return [1.0 if t in ids else 0.0 for t in trials]
    plain, _ = _box(wide, observation, ids, screen=prefers_truth, keep=4)
    got, full = _exchanged(plain, ids)
    assert got == ids and plain.exchange_screened == 0 and plain.exchange_trials == full > 6
    on, _ = _box(wide, observation, ids, screen=prefers_truth, keep=4, exchange_keep=1)
    got, few = _exchanged(on, ids)
    assert got == ids and few == on.exchange_trials == 6 and on.exchange_screened > 0  # 3 pairs x 1 trade x 2
    hidden, _ = _box(wide, observation, ids, screen=hides_truth, keep=4, exchange_keep=1)
    assert _exchanged(hidden, ids)[0] != ids


@pytest.mark.parametrize("option, field", [("repair_screen_from", "first_keep"),
                                           ("repair_exchange_screen", "exchange_keep")])
def test_the_repair_screen_options_reach_the_token_repair(setup, monkeypatch, option, field):
    wide, observation, ids = setup
    assert getattr(UpdateExact(), option) == 0  # off
    seen = _spy_on_the_repair(monkeypatch, "keep", field)
    for n in (0, 3):
        _repair_the_true_batch(UpdateExact(**{option: n}, cls_descent=False), wide, observation, ids)
    assert seen == [(8, 0), (8, 3)]


def test_a_repair_that_starts_inside_the_box_runs_no_sweep(setup):
    """The true batch has box misfit 0: no trial can be kept, so the repair stops before its first sweep (it ran a
    whole sweep before, ~11 CPU s on CoLA dev batch 0 of 4, K 8, lr 1e-5: session 29)."""
    wide, observation, ids = setup
    for kw in ({}, {"screen": lambda trials: [0.0] * len(trials), "keep": 2}):
        box, _ = _box(wide, observation, ids, **kw)
        got, report = box.run([list(s) for s in ids], LABELS, time.monotonic() + 600)
        assert got == ids and report["misfit_after"] == 0
        assert report["sweeps"] == report["screened_sweeps"] == 0 and report["trials"] == len(ids)



def test_a_repair_stops_weighing_trials_once_a_change_puts_the_batch_inside_the_box(setup):
    """One token off in the sentence repaired first: the substitution that puts it back leaves misfit 0, after which
    no trial can be kept, so the sweep weighs nothing more (it went on through every other position, swap, sentence
    and trade of the sweep before: with a budget, on to its end, reporting it run out at misfit 0)."""
    wide, observation, ids = setup
    for kw in ({}, {"move": True}):
        box, _ = _box(wide, observation, ids, **kw)
        got, report = box.run(_wrong(ids), LABELS, time.monotonic() + 600, order=[2, 0, 1])
        assert got == ids and report["misfit_after"] == 0 and report["sweeps"] == 1
        # the start's 3 gradients and the wrong sentence's first two positions' trials (144 and 56 trades before)
        assert report["trials"] <= len(ids) + 2 * box.width and report["exchange_trials"] == 0

def _prefers_truth(ids):
    return lambda trials: [0.0 if t in ids else 1.0 for t in trials]


def _hides_truth(ids):
    return lambda trials: [1.0 if t in ids else 0.0 for t in trials]


def test_the_cls_guard_keeps_no_change_that_raises_a_changed_sentences_score(setup):
    """`guard` (option `repair_cls_guard`): a substitution or trade of lower box misfit is kept only where no sentence
    it changes scores higher on the guard; a guard that ranks the truth first lets the repair reach it as before."""
    wide, observation, ids = setup
    box, _ = _box(wide, observation, ids)
    box.guard = _hides_truth(ids)
    got, report = box.run(_wrong(ids), LABELS, time.monotonic() + 600)
    assert got[2] != ids[2] and report["guarded"] > 0 and report["misfit_after"] > 0
    assert all(v <= w for v, w in zip(box.guard(got), box.guard(_wrong(ids))))
    box, _ = _box(wide, observation, ids)
    box.guard = _prefers_truth(ids)
    got, report = box.run(_wrong(ids), LABELS, time.monotonic() + 600)
    assert got == ids and report["misfit_after"] == 0
    for guard, undone in ((_hides_truth(ids), False), (_prefers_truth(ids), True)):
        box, _ = _box(wide, observation, ids)
        box.guard = guard
        assert (_exchanged(box, ids)[0] == ids) == undone  # the trade back to the truth, refused or kept


def test_option_repair_cls_guard_hands_the_token_repair_the_cls_score(setup, monkeypatch):
    wide, observation, ids = setup
    assert UpdateExact().repair_cls_guard == "auto"  # off below a declared batch of 8 (`batch_gated`)
    seen = _spy_on_the_repair(monkeypatch, "guard")
    for on in (False, True):
        _repair_the_true_batch(UpdateExact(repair_cls_guard=on, cls_descent=False), wide, observation, ids)
    assert seen[0] == (None,) and seen[1][0] is not None
    scores = seen[1][0](ids + [_wrong(ids)[2]])
    assert len(scores) == 4 and scores[2] < scores[3]


@pytest.mark.parametrize("sentences, on", [(4, False), (8, True)])
def test_auto_turns_the_guard_and_the_screen_reserve_on_from_a_declared_batch_of_8(sentences, on):
    """Options `repair_cls_guard` and `cls_screen_reserve` set to `auto` (`update_small_lr.batch_gated`): the guard
    and a reserve of 0.5 where the attacker is told of 8 sentences or more (the declared lengths' count, else the
    batch size), off at 4 (where the guard lost: session 32); a value set otherwise is kept at any batch."""
    auto = UpdateExact(repair_cls_guard="auto", cls_screen_reserve="auto")
    for know in (Knowledge(seq_lengths=(6,) * sentences), Knowledge(batch_size=sentences)):
        gate = update_small_lr.batch_gated(auto, declared_batch(SimpleNamespace(knowledge=know)))
        assert (gate["repair_cls_guard"], gate["cls_screen_reserve"]) == ((True, 0.5) if on else (False, 0))
    with budget.time_budget(100.0) as b:
        assert (update_small_lr._screen_until(auto, b.deadline, gate["cls_screen_reserve"]) is not None) == on
    kept = update_small_lr.batch_gated(UpdateExact(repair_cls_guard=True, cls_screen_reserve=0.25), sentences)
    assert (kept["repair_cls_guard"], kept["cls_screen_reserve"], kept["auto"]) == (True, 0.25, [])


def test_auto_reaches_the_token_repair_by_the_declared_batch(setup, monkeypatch):
    """`auto` (the default) in the attack: the update's 3 declared sentences are below `AUTO_BATCH` (8): no guard
    handed to the token repair, the gate recorded in the details; with `AUTO_BATCH` 3 the guard is handed."""
    wide, observation, ids = setup
    seen = _spy_on_the_repair(monkeypatch, "guard")
    out = _repair_the_true_batch(UpdateExact(cls_descent=False), wide, observation, ids)
    assert seen == [(None,)]
    assert out.details["batch_gate"] == {"sentences": 3, "auto": ["repair_cls_guard"], "repair_cls_guard": False,
                                         "cls_screen_reserve": 0.0}
    monkeypatch.setattr(update_small_lr, "AUTO_BATCH", 3)
    _repair_the_true_batch(UpdateExact(repair_cls_guard="auto", cls_descent=False), wide, observation, ids)
    assert seen[1][0] is not None


def test_the_api_takes_auto_for_the_gated_options_only():
    """`validate.attack_instance` (`textleak recover --option`): `auto` passes for the options `batch_gated` reads
    (`UpdateExact.auto_options`), other text for them and `auto` for other number options still fail."""
    from textleak.errors import InputError
    from textleak.validate import attack_instance
    attack = attack_instance("exact-update", {"repair_cls_guard": "auto", "cls_screen_reserve": "auto"}, 0)
    assert (attack.repair_cls_guard, attack.cls_screen_reserve) == ("auto", "auto")
    assert attack_instance("exact-update", {"cls_screen_reserve": 0.5}, 0).cls_screen_reserve == 0.5
    for bad in ({"cls_screen_reserve": "half"}, {"cls_share": "auto"}):
        with pytest.raises(InputError):
            attack_instance("exact-update", bad, 0)


def test_guard_first_weighs_no_trial_the_guard_would_refuse(setup):
    """`guard_first` (option `repair_guard_first`): with a `guard`, a trial whose changed sentence would score higher
    gets no gradient; the repair keeps the same changes (the guard refused them after their gradients before) with
    fewer gradients, the trades too."""
    wide, observation, ids = setup
    for guard in (_hides_truth(ids), _prefers_truth(ids)):
        ends = []
        for first in (False, True):
            box, _ = _box(wide, observation, ids)
            box.guard, box.guard_first = guard, first
            got, report = box.run(_wrong(ids), LABELS, time.monotonic() + 600)
            ends.append((got, report["misfit_after"], report["changes"], report["trials"], report.get("unweighed")))
        assert ends[1][:3] == ends[0][:3] and ends[1][3] < ends[0][3] and ends[1][4] > 0 and ends[0][4] is None
    trials = []
    for first in (False, True):
        box, _ = _box(wide, observation, ids)
        box.guard, box.guard_first = _hides_truth(ids), first
        seqs, took = _exchanged(box, ids)
        assert seqs != ids  # the trade back to the truth refused either way
        trials.append(took)
    assert trials[1] < trials[0]
