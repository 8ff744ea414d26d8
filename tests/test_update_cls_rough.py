"""The [CLS] descent's trials ranked at bfloat16 first (`update_cls_rough`, `exact-update`'s option `cls_rough`,
off): on the wide random BERT of `test_update_cls`, every change the screened descent keeps is a float32 gain (even
under a ranking that puts the worst first), off leaves the descent as it was, and the option reaches both starts."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from test_update_cls import _options, setup  # noqa: F401  (the module's fixture)
from textleak.attacks import update_cls_rough, update_small_lr
from textleak.attacks.update import UpdateExact
from textleak.attacks.update_cls import ClsSpans, cls_start
from textleak.attacks.update_cls_rough import RoughScreen, rough_screen


def _wrong(wide, ids):
    """The batch with the heads of two sentences traded and a token of the third wrong (and the token's id)."""
    big = wide.tokenizer.convert_tokens_to_ids("big")
    wrong = [list(s) for s in ids]
    wrong[0], wrong[1] = ids[1][:4] + ids[0][4:], ids[0][:4] + ids[1][4:]
    wrong[2][2] = big
    return wrong, big


def _fresh(fits, ids, keep, monkeypatch, fast=True):
    monkeypatch.setattr(update_cls_rough, "fast_bfloat16", lambda device: fast)
    return rough_screen(ClsSpans.of(fits, fits.layout, len(ids)), keep)


def test_off_or_where_bfloat16_is_slow_the_spans_have_no_screen_and_descend_as_before(setup, monkeypatch):
    wide, fits, _, ids = setup
    wrong, big = _wrong(wide, ids)
    assert _fresh(fits, ids, 0, monkeypatch).rough is None
    assert _fresh(fits, ids, 4, monkeypatch, fast=False).rough is None
    assert rough_screen(None, 4) is None
    plain, slow = ClsSpans.of(fits, fits.layout, len(ids)), _fresh(fits, ids, 4, monkeypatch, fast=False)
    runs = [s.descend(wrong, _options(ids, [big]), None, time.monotonic() + 600) for s in (plain, slow)]
    assert runs[0][0] == runs[1][0] and runs[0][1]["trace"] == runs[1][1]["trace"]
    assert runs[0][1]["forwards"] == runs[1][1]["forwards"] and runs[1][1]["rough_forwards"] == 0


def test_the_screen_scores_only_the_k_of_least_bfloat16_gain_at_float32(setup, monkeypatch):
    wide, fits, _, ids = setup
    spans = _fresh(fits, ids, 2, monkeypatch)
    assert isinstance(spans.rough, RoughScreen) and spans.rough.rough.copy_model
    tokens = list(dict.fromkeys(t for t in ids[1][1:-1] + ids[2][1:-1] if t != ids[0][2]))
    trials = [{0: ids[0][:2] + [t] + ids[0][3:]} for t in tokens]
    got = spans.rough.top(ids, trials)
    assert len(got) == 2 and all(t in trials for t in got)
    assert spans.rough.forwards == len(trials) + 1  # the trials and the current sentence, at bfloat16
    assert spans.rough.top(ids, trials[:2]) == trials[:2] and spans.rough.forwards == len(trials) + 1  # no screen
    rough = spans.scored(spans.rough.rough._view(), [t[0] for t in trials] + [ids[0]])
    gains = [r - rough[-1] for r in rough[:-1]]
    assert sorted(gains.index(g) for g in sorted(gains)[:2]) == [trials.index(t) for t in got]


def test_every_change_kept_is_a_float32_gain_even_under_a_ranking_that_puts_the_worst_first(setup, monkeypatch):
    wide, fits, _, ids = setup
    wrong, big = _wrong(wide, ids)
    spans = _fresh(fits, ids, 1, monkeypatch)
    spans.rough.rough.states = lambda seqs: [-v for v in spans.scored(spans.layout, seqs)]  # the worst ranked first
    kept = []
    plain_keep = ClsSpans._keep

    def keep(self, seqs, scores, trials, cover, deadline):
        before = list(scores)
        n = plain_keep(self, seqs, scores, trials, cover, deadline)
        if n:
            kept.append(sum(scores) - sum(before))
            assert scores == pytest.approx(self.scored(self.layout, seqs), abs=1e-9)  # float32 scores kept
        return n
    monkeypatch.setattr(ClsSpans, "_keep", keep)
    got, report = spans.descend(wrong, _options(ids, [big]), None, time.monotonic() + 600)
    assert all(g < 0 for g in kept) and sum(report["score_after"]) <= sum(report["score_before"])
    assert report["rough_forwards"] > 0 and report["changes"] == len(kept)


def test_with_the_screen_the_cls_start_reports_both_forwards_and_keeps_only_a_lower_misfit(setup, monkeypatch):
    wide, fits, _, ids = setup
    monkeypatch.setattr(update_cls_rough, "fast_bfloat16", lambda device: True)
    truth = {tuple(s) for s in ids}
    wrong, _ = _wrong(wide, ids)
    options = _options(ids, [])
    repair = SimpleNamespace(layout=fits.layout, cover=None, options=lambda n: options[n],
                             gradient=lambda s, y: __import__("torch").tensor([float(tuple(s) not in truth)]),
                             misfit=lambda G: float(G.sum()))
    pred = {"token_ids": [list(s) for s in wrong], "labels": [0, 1, 1]}
    report = cls_start(repair, pred, fits, time.monotonic() + 600, rough=2)
    assert report["rough_forwards"] > 0 and report["forwards"] > 0
    assert report["kept"] == (report["misfit"][1] < report["misfit"][0])


def test_option_cls_rough_reaches_both_starts_on_by_default_checked(monkeypatch):
    from textleak.errors import InputError
    from textleak.validate import attack_instance

    assert UpdateExact().cls_rough == 4  # the default since session 45
    assert attack_instance("exact-update", {"cls_rough": 4}, 0).cls_rough == 4
    for bad in ("x", -1):
        with pytest.raises(InputError, match="cls_rough"):
            attack_instance("exact-update", {"cls_rough": bad}, 0)
    seen = {}
    monkeypatch.setattr(update_small_lr, "slot_starts", lambda *a: (set(), None))
    monkeypatch.setattr(update_small_lr, "BatchMisfit", lambda repair: None)
    monkeypatch.setattr(update_small_lr, "ranked_start", lambda *a: {"kept": "fill"})
    monkeypatch.setattr(update_small_lr, "cls_start", lambda *a, **k: seen.setdefault("cls", a[-1]) and None)
    monkeypatch.setattr(update_small_lr, "length_start", lambda *a, **k: seen.setdefault("lengths", a[-1]) and None)
    for value, want in ((None, 4), (0, 0), (2, 2)):
        seen.clear()
        attack = UpdateExact() if value is None else UpdateExact(cls_rough=value)
        attack._fits = None
        out = SimpleNamespace(prediction={"token_ids": [[101, 1, 102]], "labels": [0]}, details={})
        update_small_lr._starts(attack, SimpleNamespace(tokenizer=None), SimpleNamespace(order=None), None, out)
        assert seen == {"cls": want, "lengths": want}
