"""A trial's box misfit given up once it cannot be kept (`update_repair_cutoff`, `exact-update`'s option
`repair_cutoff`, session 47, on by default): summed a slice at a time, it is the plain misfit to the bit where the
trial gets through, inf where its slices pass the bound; a repair makes the same changes with it and without."""

from __future__ import annotations

import time

import pytest

import test_update_repair_screen as screen
from test_update_repair_screen import LABELS, _box, _wrong
from textleak.attacks import update_repair_cutoff, update_small_lr
from textleak.attacks.update import UpdateExact
from textleak.attacks.update_repair_cutoff import cut_misfit

setup = screen.setup  # the fixture: the wide BERT's update at lr 1e-5 on the screen tests' three sentences


def test_the_cut_misfit_is_the_plain_one_to_the_bit_or_inf_past_the_bound(setup, monkeypatch):
    wide, observation, ids = setup
    box, _ = _box(wide, observation, ids, inplace=True)
    seqs, _ = box.begin(_wrong(ids), LABELS, time.monotonic() + 600)
    monkeypatch.setattr(update_repair_cutoff, "CHUNK", 1000)  # several slices on the small model
    assert box.U.numel() > 3 * update_repair_cutoff.CHUNK
    for changes in ([(box.gradient(ids[1], LABELS[0]), box._own[0])],
                    [(box.gradient(ids[2], LABELS[0]), box._own[0]), (box.gradient(ids[0], LABELS[1]), box._own[1])]):
        plain = box.misfit(box._shifted(changes))
        assert plain > 0 and cut_misfit(box, changes, plain) == plain  # at the bound: through, the same bits
        assert cut_misfit(box, changes, 2 * plain) == plain
        assert cut_misfit(box, changes, 0.5 * plain) == float("inf")


@pytest.mark.parametrize("guard", [False, True])
def test_a_repair_with_the_cutoff_makes_the_same_changes(setup, monkeypatch, guard):
    wide, observation, ids = setup
    monkeypatch.setattr(update_repair_cutoff, "CHUNK", 1000)
    calls = []
    cut = update_repair_cutoff.cut_misfit
    monkeypatch.setattr("textleak.attacks.update_repair_keep.cut_misfit",
                        lambda *a: calls.append(cut(*a)) or calls[-1])
    wrong = _wrong(ids)
    wrong[0][2], wrong[0][3] = wrong[0][3], wrong[0][2]
    runs = []
    for cutoff in (False, True):
        box, _ = _box(wide, observation, ids, inplace=True)
        box.cutoff = cutoff
        if guard:
            box.guard = lambda seqs: [0.0] * len(seqs)
        runs.append(box.run(wrong, LABELS, time.monotonic() + 600))
    (a, ra), (b, rb) = runs
    assert a == b and {k: v for k, v in ra.items() if k != "cpu_s"} == {k: v for k, v in rb.items() if k != "cpu_s"}
    assert ra["changes"] > 0 and runs and sum(box.cut) == len(calls) and box.cut[0] == calls.count(float("inf"))
    assert float("inf") in calls and any(c < float("inf") for c in calls)  # some trials given up, some weighed


def test_option_repair_cutoff_is_on_by_default_checked_and_reaches_the_repair(monkeypatch):
    from types import SimpleNamespace

    from textleak.errors import InputError
    from textleak.validate import attack_instance

    assert UpdateExact().repair_cutoff is True  # on since session 47
    with pytest.raises(InputError, match="repair_cutoff"):
        attack_instance("exact-update", {"repair_cutoff": 1}, 0)
    monkeypatch.setattr(update_small_lr, "BoxRepair", lambda *a, **k: SimpleNamespace())
    for value in (False, True):
        attack = attack_instance("exact-update", {"repair_cutoff": value}, 0)
        attack._fits = None
        assert update_small_lr._box_repair(attack, None, None, None, None).cutoff is value
    repair = SimpleNamespace(kick=None, memo=None, cutoff=True, cut=(2, 3))
    assert update_small_lr._reported(repair, {}) == {"cutoff": [2, 3]}
    assert update_small_lr._reported(SimpleNamespace(kick=None, memo=None, cutoff=False), {}) == {}
