"""The token repair's [CLS] scores kept per sentence (`exact-update`'s option `repair_memo`, session 47, on by
default): the repair's spans get their own `update_cls_memo.ScoreMemo`, so its screen, the pairs' and block moves'
screens and the kick's descents forward only sentences the repair had not scored; a screened repair makes the same
changes with it and without, forwarding fewer sentences (`recipes/measured/fedavg_memo_s47`)."""

from __future__ import annotations

import time

import pytest

import test_update_repair_screen as screen
from test_update_repair_screen import LABELS, _box, _repair_the_true_batch, _spy_on_the_repair, _wrong
from conftest import repair_inputs
from textleak.attacks.update import UpdateExact
from textleak.attacks.update_cls import ClsSpans
from textleak.attacks.update_cls_memo import ScoreMemo, ScoreMemos, memo_screen

setup = screen.setup  # the fixture: the wide BERT's update at lr 1e-5 on the screen tests' three sentences


def test_option_repair_memo_is_on_by_default_and_checked():
    from textleak.errors import InputError
    from textleak.validate import attack_instance

    assert UpdateExact().repair_memo is True  # on since session 47
    assert attack_instance("exact-update", {"repair_memo": False}, 0).repair_memo is False
    with pytest.raises(InputError, match="repair_memo"):
        attack_instance("exact-update", {"repair_memo": 4}, 0)


def test_option_repair_memo_gives_the_repairs_cls_scores_one_memo_and_reports_it(setup, monkeypatch):
    wide, observation, ids = setup
    seen = _spy_on_the_repair(monkeypatch, "memo", "screen", "kick")
    outs = [_repair_the_true_batch(UpdateExact(repair_memo=value, cls_descent=False), wide, observation, ids)
            for value in (False, True)]
    (off, off_screen, _), (on, on_screen, kick) = seen
    assert off is None and off_screen.__self__.memo is None and "memo" not in outs[0].details["repair"]
    assert isinstance(on, ScoreMemo) and on_screen.__self__.memo is on and kick.spans.memo is on
    before = on.fresh
    first = on_screen(ids)
    assert on_screen(ids) == first and on.fresh == before + len(ids) and on.hits >= len(ids)  # asked again: no forward
    assert outs[1].details["repair"]["memo"] == [0, 0]  # the spy scored nothing in the run


def test_a_screened_repair_makes_the_same_changes_with_the_memo_forwarding_fewer_sentences(setup):
    """Two runs of one repair from the same batch (as the race repairs two starts with one repair): with the memo the
    same sentences and reports, and the second run's screen answered from the memo."""
    wide, observation, ids = setup
    layout, fits, _ = repair_inputs(wide, observation)
    memos = ScoreMemos()
    spans = [ClsSpans.of(fits, layout, len(ids)), memo_screen(ClsSpans.of(fits, layout, len(ids)), memos)]
    runs = []
    for s in spans:
        box, _ = _box(wide, observation, ids, screen=s.score, keep=2)
        runs.append([box.run(_wrong(ids), LABELS, time.monotonic() + 600) for _ in range(2)])
    for (plain, a), (kept, b) in zip(*runs):
        assert kept == plain == ids and a["screened"] > 0
        assert {k: v for k, v in a.items() if k != "cpu_s"} == {k: v for k, v in b.items() if k != "cpu_s"}
    assert spans[1].forwards == memos.float32.fresh == spans[0].forwards // 2 == memos.float32.hits
