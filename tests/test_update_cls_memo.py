"""The [CLS] start's scores kept per sentence (`update_cls_memo`, `exact-update`'s option `cls_memo`, on since s46):
on the wide random BERT of `test_update_cls`, a descent with the memo makes the same changes, keeps the same scores
and reaches the same sentences as without, forwarding only the sentences it had not scored; with option `cls_rough`
the bfloat16 screen keeps its own memo; the option reaches both starts with one memo, and off leaves them without."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from test_update_cls import _options, setup  # noqa: F401  (the module's fixture)
from test_update_cls_rough import _fresh, _wrong
from textleak.attacks import update_small_lr
from textleak.attacks.update import UpdateExact
from textleak.attacks.update_cls import ClsSpans, cls_start
from textleak.attacks.update_cls_memo import ScoreMemo, ScoreMemos, memo_screen


def test_a_memo_forwards_each_new_sentence_once_and_answers_the_rest_from_what_it_kept():
    asked = []

    def fn(seqs):
        asked.append([list(s) for s in seqs])
        return [float(sum(s)) for s in seqs]
    memo = ScoreMemo()
    assert memo.scored(fn, [[1, 2], [3], [1, 2]]) == [3.0, 3.0, 3.0] and asked == [[[1, 2], [3]]]
    assert memo.scored(fn, [[3], [4, 5], [1, 2]]) == [3.0, 9.0, 3.0] and asked[-1] == [[4, 5]]
    assert (memo.fresh, memo.hits) == (3, 3)
    assert memo.scored(fn, [[3], [1, 2]]) == [3.0, 3.0] and len(asked) == 2  # nothing new: no forward
    small = ScoreMemo(limit=2)
    small.scored(fn, [[1], [2]])
    assert small.scored(fn, [[1], [7]]) == [1.0, 7.0] and len(small.seen) == 2  # full: emptied, then refilled


def test_a_descent_with_the_memo_makes_the_same_changes_with_fewer_forwards(setup):
    wide, fits, _, ids = setup
    wrong, big = _wrong(wide, ids)
    options = _options(ids, [big])
    plain = ClsSpans.of(fits, fits.layout, len(ids))
    memos = ScoreMemos()
    kept = memo_screen(ClsSpans.of(fits, fits.layout, len(ids)), memos)
    assert kept.memo is memos.float32 and memo_screen(plain, None).memo is None
    runs = [s.descend(wrong, options, None, time.monotonic() + 600) for s in (plain, kept)]
    assert runs[0][0] == runs[1][0] and runs[0][1]["trace"] == runs[1][1]["trace"]
    assert runs[0][1]["score_after"] == pytest.approx(runs[1][1]["score_after"], abs=1e-12)
    assert runs[1][1]["forwards"] == memos.float32.fresh < runs[0][1]["forwards"]
    assert memos.float32.fresh + memos.float32.hits == runs[0][1]["forwards"]  # every sentence asked, once forwarded


def test_with_the_bfloat16_screen_each_scorer_keeps_its_own_memo(setup, monkeypatch):
    wide, fits, _, ids = setup
    wrong, big = _wrong(wide, ids)
    memos = ScoreMemos()
    spans = memos.attach(_fresh(fits, ids, 2, monkeypatch))
    assert spans.memo is memos.float32 and spans.rough.memo is memos.bfloat16
    got, report = spans.descend(wrong, _options(ids, [big]), None, time.monotonic() + 600)
    assert report["rough_forwards"] == memos.bfloat16.fresh > 0 and memos.bfloat16.hits > 0
    assert report["forwards"] == memos.float32.fresh and sum(report["score_after"]) <= sum(report["score_before"])
    assert report["score_after"] == pytest.approx(spans.scored(spans.layout, got), abs=1e-9)  # float32 kept


def test_the_cls_start_reports_the_memo(setup):
    wide, fits, _, ids = setup
    wrong, _ = _wrong(wide, ids)
    options = _options(ids, [])
    repair = SimpleNamespace(layout=fits.layout, cover=None, options=lambda n: options[n],
                             gradient=lambda s, y: __import__("torch").tensor([float(s not in ids)]),
                             misfit=lambda G: float(G.sum()))
    memos = ScoreMemos()
    report = cls_start(repair, {"token_ids": [list(s) for s in wrong], "labels": [0, 1, 1]}, fits,
                       time.monotonic() + 600, memo=memos)
    assert report["memo"] == memos.report() and report["memo"]["float32"][0] == report["forwards"] > 0


def test_option_cls_memo_on_by_default_checked_and_one_memo_reaches_both_starts(monkeypatch):
    from textleak.errors import InputError
    from textleak.validate import attack_instance

    assert UpdateExact().cls_memo is True  # on since session 46
    assert attack_instance("exact-update", {"cls_memo": True}, 0).cls_memo is True
    with pytest.raises(InputError, match="cls_memo"):
        attack_instance("exact-update", {"cls_memo": 4}, 0)
    seen = {}
    monkeypatch.setattr(update_small_lr, "slot_starts", lambda *a: (set(), None))
    monkeypatch.setattr(update_small_lr, "BatchMisfit", lambda repair: None)
    monkeypatch.setattr(update_small_lr, "ranked_start", lambda *a: {"kept": "fill"})
    for name, key in (("cls_start", "cls"), ("length_start", "lengths")):
        monkeypatch.setattr(update_small_lr, name, lambda *a, memo=None, key=key: seen.setdefault(key, memo) and None)
    for value in (False, True):
        seen.clear()
        attack = UpdateExact(cls_memo=value)
        attack._fits = None
        out = SimpleNamespace(prediction={"token_ids": [[101, 1, 102]], "labels": [0]}, details={})
        update_small_lr._starts(attack, SimpleNamespace(tokenizer=None), SimpleNamespace(order=None), None,
                                out)
        assert (seen["cls"] is None) == (not value) and seen["cls"] is seen["lengths"]
        assert value is False or isinstance(seen["cls"], ScoreMemos)
