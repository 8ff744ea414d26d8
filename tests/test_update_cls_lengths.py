"""Sentences moved between slots of other lengths on the [CLS] spans (`update_cls_lengths`, `exact-update`'s option
`cls_lengths`), on the wide random BERT of `test_update_cls` (its batch gradient read as an update, lr 1, one step)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import torch

from test_update_cls import LABELS, setup  # noqa: F401 (the fixture: the wide random BERT and its update)
from textleak.attacks.update_cls import ClsSpans
from textleak.attacks.update_cls_lengths import length_start, length_trades, trade_lengths


def _misplaced(ids):
    """The 8-token slot holds the 7-token sentence and one more token (the 8-token sentence's last inner one), the
    7-token slot the 8-token sentence less that token: the same tokens, each sentence in the other's slot."""
    long, short = ids[0], ids[2]
    assert len(long) == len(short) + 1
    return [[long[0]] + short[1:-1] + [long[-2], long[-1]], list(ids[1]), long[:-2] + [long[-1]]]


def test_a_length_trade_keeps_the_pair_s_tokens_and_lengths(setup):
    _, _, _, ids = setup
    x, y = ids[0], ids[2]
    trades = length_trades(x, y, 0, 2)
    assert len(trades) == len(x) - 2 and not length_trades(y, x, 2, 0)
    for t in trades:
        assert len(t[0]) == len(x) and len(t[2]) == len(y)
        assert sorted(t[0] + t[2]) == sorted(x + y)


def test_sentences_in_each_other_s_slots_trade_back_to_the_truth(setup):
    _, fits, _, ids = setup
    spans = ClsSpans.of(fits, fits.layout, len(ids))
    wrong = _misplaced(ids)
    got, report = trade_lengths(spans, wrong, {t for s in ids for t in s}, time.monotonic() + 600)
    assert got == ids and report["trades"] >= 1


def test_option_cls_lengths_replaces_the_start_where_the_box_misfit_falls(setup):
    """`length_start` (`exact-update`'s option `cls_lengths`, "race" by default): the traded and descended batch
    replaces the guess where its box misfit (here: the sentences not true) is lower."""
    from textleak.attacks.update import UpdateExact
    _, fits, _, ids = setup
    truth = {tuple(s) for s in ids}
    top = max(map(len, ids))
    rows = [list(dict.fromkeys(s[p] for s in ids if p < len(s))) for p in range(top)]
    repair = SimpleNamespace(layout=fits.layout, cover=None, options=lambda n: rows[:n],
                             gradient=lambda s, y: torch.tensor([float(tuple(s) not in truth)]),
                             misfit=lambda G: float(G.sum()))
    pred = {"token_ids": _misplaced(ids), "labels": list(LABELS)}
    report = length_start(repair, pred, fits, time.monotonic() + 600, relabel=False)
    assert report["kept"] and report["misfit"][1] == 0 and sorted(pred["token_ids"]) == sorted(ids)
    assert UpdateExact().cls_lengths == "race" and UpdateExact(cls_lengths=True).cls_lengths is True


class _Repair:
    """A token repair whose run ends each start at the misfit `ends` gives it (keyed by the start's first sentence),
    recording the starts it ran from."""

    def __init__(self, ends, ran_out=False):
        self.ends, self.ran_out, self.starts = ends, ran_out, []

    def run(self, seqs, labels, deadline, order=None):
        self.starts.append(([list(s) for s in seqs], list(labels)))
        return [list(s) for s in seqs], {"misfit_after": self.ends[tuple(seqs[0])], "cpu_s": 0.0,
                                         "ran_out": self.ran_out}


def test_option_cls_lengths_race_repairs_the_untraded_start_with_the_time_left():
    """`length_race` (`cls_lengths="race"`): the traded batch's repair stopped with time left, so the untraded start
    is repaired too and the end of least box misfit is kept; not where the first repair ran out of time."""
    from textleak.attacks.update_cls_lengths import length_race
    traded, untraded = [[101, 7, 102], [101, 8, 9, 102]], ([[101, 8, 102], [101, 7, 9, 102]], [1, 0])
    for ends, kept in (({(101, 8, 102): 1e-5}, "untraded"), ({(101, 8, 102): 9e-4}, "traded")):
        repair = _Repair(ends)
        pred, details = {"token_ids": [list(s) for s in traded], "labels": [0, 1]}, {}
        report = length_race(repair, pred, {"misfit_after": 5e-4, "ran_out": False}, untraded,
                             time.monotonic() + 600, None, details)
        assert repair.starts == [untraded] and details["cls_lengths_race"]["kept"] == kept
        want = (untraded[0], untraded[1]) if kept == "untraded" else (traded, [0, 1])
        assert (pred["token_ids"], pred["labels"]) == want and report["misfit_after"] == min(5e-4, *ends.values())
    repair = _Repair({})
    pred, details = {"token_ids": [list(s) for s in traded], "labels": [0, 1]}, {}
    length_race(repair, pred, {"misfit_after": 5e-4, "ran_out": True}, untraded, time.monotonic() + 600, None,
                details)
    assert repair.starts == [] and details["cls_lengths_race"]["ran"] is False and pred["token_ids"] == traded


class _Heats:
    """A token repair whose runs each take one step along a start's misfits (`paths`, keyed by the start's first
    sentence, whose token ids step on too) and run out of their time while the path goes on: `ran_out` False at
    the path's last misfit, as a repair that stops with no change left. Records the starts it ran from."""

    def __init__(self, paths):
        self.paths, self.starts = paths, []

    def run(self, seqs, labels, deadline, order=None):
        self.starts.append(seqs[0][1])
        head, step = seqs[0][1] // 100, seqs[0][1] % 100
        path = self.paths[head]
        got = [list(s) for s in seqs]
        got[0][1] = head * 100 + min(step + 1, len(path) - 1)
        return got, {"misfit_before": path[step], "misfit_after": path[got[0][1] % 100], "changes": 1,
                     "cpu_s": 1.0, "ran_out": got[0][1] % 100 < len(path) - 1}


def test_option_cls_lengths_heats_repairs_both_starts_and_the_leader_goes_on():
    """`length_heats` (`cls_lengths="heats"`): both starts get a heat though the traded one's repair would run out
    (where `race` never repairs the untraded start); the leader after the heats goes on, and where it stops the
    other; the end of least misfit is kept, its runs' report summed."""
    from textleak.attacks.update_cls_lengths import length_heats
    traded, labels = [[101, 100, 102], [101, 9, 9, 102]], [0, 1]
    untraded = ([[101, 200, 102], [101, 9, 9, 102]], [1, 0])
    # the traded start leads after the heats, stops at 4e-4; the untraded goes on to 1e-5: kept
    repair = _Heats({1: [7e-4, 5e-4, 4e-4], 2: [2e-3, 6e-4, 1e-4, 1e-5]})
    pred, details = {"token_ids": [list(s) for s in traded], "labels": list(labels)}, {}
    report = length_heats(repair, pred, untraded, time.monotonic() + 600, None, details)
    race = details["cls_lengths_race"]
    assert race["heats"] == {"traded": 5e-4, "untraded": 6e-4} and race["went_on"][0] == "traded"
    assert race["kept"] == "untraded" and pred["labels"] == [1, 0] and pred["token_ids"][0][1] == 203
    assert report["misfit_before"] == 2e-3 and report["misfit_after"] == 1e-5 and report["runs"] == 3
    assert report["changes"] == 3 and repair.starts[:2] == [100, 200]
    # the traded start reaches the least misfit: it is kept, the untraded start's heat run all the same
    repair = _Heats({1: [7e-4, 1e-6], 2: [2e-3, 1e-3, 9e-4]})
    pred, details = {"token_ids": [list(s) for s in traded], "labels": list(labels)}, {}
    length_heats(repair, pred, untraded, time.monotonic() + 600, None, details)
    assert details["cls_lengths_race"]["kept"] == "traded" and pred["labels"] == labels and 200 in repair.starts


def test_option_cls_lengths_takes_true_false_or_race_checked_before_any_work():
    import pytest

    from textleak.errors import InputError
    from textleak.validate import attack_instance
    assert attack_instance("exact-update", {"cls_lengths": "race"}, 0).cls_lengths == "race"
    assert attack_instance("exact-update", {"cls_lengths": True}, 0).cls_lengths is True
    assert attack_instance("exact-update", {"cls_lengths": "heats"}, 0).cls_lengths == "heats"
    for bad in ("rac", 1):
        with pytest.raises(InputError, match="cls_lengths"):
            attack_instance("exact-update", {"cls_lengths": bad}, 0)


def test_option_cls_lengths_gate_skips_the_descent_where_the_trades_raise_the_box_misfit(setup):
    """`length_start`'s `gate` (`exact-update`'s option `cls_lengths_gate`, 1.5 by default since session 40): where the
    trades leave the box misfit over `gate` x the start's (here a misfit that counts the true sentences: the start holds 1 of 3,
    the traded batch 3 of 3, 3 x) no descent runs after them and the start is kept; under the gate, or off, the
    descent runs as before. Session 39 (RT dev 1 of 8, lr 1e-4): 1.15e-2 traded against the start's 5.67e-3, and the
    trade's descent took the token repair's time."""
    import pytest

    from textleak.attacks.update import UpdateExact
    from textleak.attacks.update_cls_lengths import GATE
    from textleak.errors import InputError
    from textleak.validate import attack_instance
    _, fits, _, ids = setup
    truth = {tuple(s) for s in ids}
    top = max(map(len, ids))
    rows = [list(dict.fromkeys(s[p] for s in ids if p < len(s))) for p in range(top)]
    repair = SimpleNamespace(layout=fits.layout, cover=None, options=lambda n: rows[:n],
                             gradient=lambda s, y: torch.tensor([float(tuple(s) in truth)]),
                             misfit=lambda G: float(G.sum()))
    for gate, descends in ((1.5, False), (4.0, True), (0.0, True)):
        pred = {"token_ids": _misplaced(ids), "labels": list(LABELS)}
        report = length_start(repair, pred, fits, time.monotonic() + 600, relabel=False, gate=gate)
        assert report["trades"] >= 1 and ("descent" in report) is descends and not report["kept"]
        assert report.get("gated", 0) == (3.0 if gate else 0) and pred["token_ids"] == _misplaced(ids)
        assert report["trade_cpu_s"] <= report["cpu_s"]
    assert UpdateExact().cls_lengths_gate == GATE == 1.5
    assert attack_instance("exact-update", {"cls_lengths_gate": 0}, 0).cls_lengths_gate == 0  # off
    assert attack_instance("exact-update", {"cls_lengths_gate": 1.5}, 0).cls_lengths_gate == 1.5
    for bad in (0.5, -1.0):
        with pytest.raises(InputError, match="cls_lengths_gate"):
            attack_instance("exact-update", {"cls_lengths_gate": bad}, 0)
