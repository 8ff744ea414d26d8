"""The token repair's kick at a stall (`update_repair_kick.Kick`, `BoxRepair.kick`, `exact-update`'s option
`repair_kick`, 3 by default since session 44): at the screened sweeps' stall the batch is descended on the [CLS] spans
and the screened sweeps go on from there; the full sweeps start from the least-misfit stall seen (RT dev batch 0 of 4 at
K 8, lr 1e-5 stalls in a local minimum of the repair's moves; session 42)."""

from __future__ import annotations

import time

import pytest

import test_update_repair_screen as screen
from test_update_repair_screen import _repair_the_true_batch, _spy_on_the_repair
from test_update_repair_slide import toy_box
from textleak.attacks.update import UpdateExact
from textleak.attacks.update_repair import BoxRepair
from textleak.attacks.update_repair_kick import Kick

setup = screen.setup  # the fixture: the wide BERT's update on the screen tests' three sentences

TRUTH = [[101, 5, 6, 7, 8, 9, 102], [101, 11, 12, 13, 102]]
#: the truth with 9 slid back and 11, 12 swapped: no substitution helps where each position offers its own token
WRONG = [[101, 5, 9, 6, 7, 8, 102], [101, 12, 11, 13, 102]]
#: farther from the truth than `WRONG` (one more token off its place)
WORSE = [[101, 9, 5, 6, 7, 8, 102], [101, 12, 11, 13, 102]]


class _Spans:
    """A stand-in for `update_cls.ClsSpans`: its descent goes to `to`; with `box`, that box's options then offer only
    `to`'s tokens (so `to` is a stall of the toy repair too)."""

    def __init__(self, to, box=None):
        self.to, self.box, self.calls = to, box, 0

    def descend(self, seqs, options, cover, deadline, sweeps=8, relocate=True):
        self.calls += 1
        assert sweeps == 3 and relocate is False
        if self.box is not None:
            self.box.options = lambda n: [[t] for t in next(s for s in self.to if len(s) == n)]
        return [list(s) for s in self.to], {}


def _toy(kick: Kick | None) -> BoxRepair:
    """The descent alone on the slide tests' toy gradient (`test_update_repair_slide.toy_box`), with a screen that
    ranks nothing (its sweeps weigh every trial): each position offers only the token standing there in `WRONG`."""
    return toy_box(TRUTH, WRONG, screen=lambda s: [0.0] * len(s), keep=8, kick=kick)


def test_a_kick_at_the_stall_moves_the_repair_out_of_its_local_minimum():
    got, _ = _toy(None).run(WRONG, [0, 0], time.monotonic() + 600, exchange=False)
    assert got == WRONG  # stalled: no single substitution can leave it
    kick = Kick(_Spans(TRUTH), 3)
    got, report = _toy(kick).run(WRONG, [0, 0], time.monotonic() + 600, exchange=False)
    assert got == TRUTH and report["misfit_after"] == 0
    assert kick.report()["kicks"] == 1 and kick.stalls[0][1] == 0.0


def test_a_kick_to_a_worse_batch_is_undone_before_the_full_sweeps():
    """The descent leads farther off: the second stall descends to the same batch (nothing changes), so the full
    sweeps go on from the first stall, the lower one, and the run ends where it would have without the kick."""
    spans = _Spans(WORSE)
    kick = Kick(spans, 3)
    box = _toy(kick)
    spans.box = box
    got, report = box.run(WRONG, [0, 0], time.monotonic() + 600, exchange=False)
    plain = _toy(None).run(WRONG, [0, 0], time.monotonic() + 600, exchange=False)[1]
    assert got == WRONG and report["misfit_after"] == plain["misfit_after"] > 0
    assert spans.calls == 2 and kick.report()["kicks"] == 1 and kick.stalls[-1][1] == "restored"
    box.run(WRONG, [0, 0], time.monotonic() + 600, exchange=False)  # a second run starts afresh (the race's)
    assert spans.calls == 4 and kick.report()["kicks"] == 1


def test_option_repair_kick_reaches_the_token_repair(setup, monkeypatch):
    """3 by default since session 44; `repair_kick=3` gives the repair a `Kick` of 3 [CLS] sweeps on the run's spans,
    0 none."""
    wide, observation, ids = setup
    assert UpdateExact().repair_kick == 3
    seen = _spy_on_the_repair(monkeypatch, "kick")
    for value in (0, 3):
        out = _repair_the_true_batch(UpdateExact(repair_kick=value, cls_descent=False), wide, observation, ids)
    assert seen[0] == (None,) and isinstance(seen[1][0], Kick) and seen[1][0].sweeps == 3
    assert out.details["repair"]["kick"] == {"sweeps": 3, "kicks": 0, "stalls": [], "at": "block"}  # the default


@pytest.mark.parametrize("bad", [-1, 2.5, "x"])
def test_repair_kick_must_be_a_count_of_zero_or_more(bad):
    from textleak.errors import InputError
    from textleak.validate import attack_instance

    assert attack_instance("exact-update", {"repair_kick": 3}, 0).repair_kick == 3
    with pytest.raises(InputError, match="repair_kick"):
        attack_instance("exact-update", {"repair_kick": bad}, 0)


def test_a_run_the_deadline_ends_after_a_kick_ends_on_the_lower_stall(monkeypatch):
    """The deadline falls between a kick and the next stall: the run ends on the stalled batch, the lower one."""
    import textleak.attacks.update_repair as repair_module
    import textleak.attacks.update_repair_kick as kick_module

    spans = _Spans(WORSE)
    kick = Kick(spans, 3)
    box = _toy(kick)
    spans.box = box
    stalled = _toy(None).run(WRONG, [0, 0], time.monotonic() + 600, exchange=False)[1]["misfit_after"]
    clock = lambda: 1e12 if spans.calls and box.best > stalled else 0.0  # spent once the kick moved the batch
    monkeypatch.setattr(repair_module, "budget_now", clock)
    monkeypatch.setattr(kick_module, "budget_now", clock)
    got, report = box.run(WRONG, [0, 0], 1e6, exchange=False)
    assert spans.calls == 1 and kick.report()["kicks"] == 1 and kick.stalls[-1][1] == "restored"
    assert got == WRONG and report["misfit_after"] == stalled
