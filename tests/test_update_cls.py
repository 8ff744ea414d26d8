"""The [CLS]-span descent (`update_cls`): each guessed sentence scored alone on the last layer's per-sentence spans,
on a wide random BERT's batch gradient read as an update with a negligible rounding box (lr 1, one step: the
random model's [CLS] vectors differ between sentences by ~1e-3 relative, under any float32 client's rounding at
small learning rates; the rounding's effect is measured end to end, `recipes/measured/fedavg_small_lr_s22`)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

import textleak
from conftest import make_wide_classifier
from textleak.attacks import update_rounding, update_small_lr
from textleak.attacks.update_cls import POOLER, SITES, SWEEPS, ClsSpans, cls_start
from textleak.attacks.update_rounding import RoundingFits
from textleak.text.layouts import layout_for

TEXTS = ["a bird sang a song .", "the cat was very sad .", "the film was good ."]
LABELS = [0, 1, 1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    wide = make_wide_classifier(tmp_path_factory.mktemp("wide-bert-cls"))
    cap = textleak.capture_gradients(wide, TEXTS, labels=LABELS)
    layout = layout_for(wide.model)
    fits = RoundingFits(layout, cap.gradients.gradients, 1.0, 1)
    spans = ClsSpans.of(fits, layout, len(TEXTS))
    return wide, fits, spans, [list(s) for s in cap.reference.token_ids]


def _recorded_descents(monkeypatch) -> list:
    """`ClsSpans.descend` replaced by one that changes nothing and records (the sentences, its sweeps) per call."""
    calls = []

    def descend(self, seqs, *a, sweeps=SWEEPS, **k):
        calls.append(([list(s) for s in seqs], sweeps))
        return [list(s) for s in seqs], {}
    monkeypatch.setattr(ClsSpans, "descend", descend)
    return calls


def _options(ids, extra):
    """Per length, each position's tokens of the batch (any sentence's there) and `extra`."""
    top = max(map(len, ids))
    rows = [list(dict.fromkeys([s[p] for s in ids if p < len(s)] + extra)) for p in range(top)]
    return {n: rows[:n] for n in {len(s) for s in ids}}


def test_the_true_sentences_score_below_one_token_wrong_and_crossed_tails(setup):
    wide, _, spans, ids = setup
    assert spans is not None and spans.bases
    true = spans.score(ids)
    wrong = [list(s) for s in ids]
    wrong[0][2], wrong[1][3] = wrong[1][3], wrong[0][2]  # "a was sang ..." / "the cat bird very sad ."
    crossed = [ids[1][:3] + ids[0][3:], ids[0][:3] + ids[1][3:]]
    assert max(true) < min(spans.score(wrong[:2]) + spans.score(crossed))


def test_a_batch_with_heads_traded_and_a_token_wrong_descends_to_the_truth(setup):
    wide, _, spans, ids = setup
    big = wide.tokenizer.convert_tokens_to_ids("big")
    wrong = [list(s) for s in ids]
    wrong[0], wrong[1] = ids[1][:4] + ids[0][4:], ids[0][:4] + ids[1][4:]  # heads of the same length traded
    wrong[2][2] = big
    got, report = spans.descend(wrong, _options(ids, [big]), {t for s in ids for t in s}, time.monotonic() + 600)
    # scored alone, the truth in any slot order scores the same (trading the heads back or the tails over both
    # reach it; float rounding picks one, and it differs between CPUs): the sentences, not their slots
    assert sorted(got) == sorted(ids) and report["changes"] >= 2


def test_cls_start_keeps_the_descended_batch_where_its_box_misfit_is_lower(setup):
    wide, fits, _, ids = setup

    def gradient(s, y):
        return torch.tensor([float(list(map(tuple, ids)).count(tuple(s)) == 0)])  # 0 for a true sentence
    options = _options(ids, [])
    repair = SimpleNamespace(layout=fits.layout, cover=None, options=lambda n: options[n], gradient=gradient,
                             misfit=lambda G: float(G.sum()))
    wrong = [ids[1][:4] + ids[0][4:], ids[0][:4] + ids[1][4:], list(ids[2])]
    pred = {"token_ids": wrong, "labels": LABELS}
    report = cls_start(repair, pred, fits, time.monotonic() + 600)
    assert report["kept"] and sorted(pred["token_ids"]) == sorted(ids)  # in some slot order (above)


def test_the_pooler_is_a_site_whose_true_sentences_score_below_crossed_tails(setup):
    wide, fits, _, ids = setup
    spans = ClsSpans.of(fits, fits.layout, len(ids), SITES + (POOLER,))
    assert POOLER in spans.bases and set(SITES) <= set(spans.bases)
    alone = ClsSpans.of(fits, fits.layout, len(ids), (POOLER,))
    crossed = [ids[1][:3] + ids[0][3:], ids[0][:3] + ids[1][3:]]
    assert max(alone.score(ids)) < min(alone.score(crossed))


def _truth_repair(fits, ids):
    """A stand-in for the run's `BoxRepair` whose misfit counts the sentences that are not true with their own
    label (0 for the true batch)."""
    truth = {tuple(s): y for s, y in zip(ids, LABELS)}

    def gradient(s, y):
        return torch.tensor([float(truth.get(tuple(s)) != int(y))])
    options = _options(ids, [])
    return SimpleNamespace(layout=fits.layout, cover=None, options=lambda n: options[n], gradient=gradient,
                           misfit=lambda G: float(G.sum()))


def test_with_relabel_the_descended_batch_is_weighed_with_its_own_labels(setup):
    wide, fits, _, ids = setup
    repair = _truth_repair(fits, ids)
    truth = sorted(zip(map(tuple, ids), LABELS))
    wrong = [ids[1][:4] + ids[0][4:], ids[0][:4] + ids[1][4:], list(ids[2])]
    swapped = [LABELS[1], LABELS[0], LABELS[2]]  # the labels that fitted the start's slots
    pred = {"token_ids": [list(s) for s in wrong], "labels": list(swapped)}
    report = cls_start(repair, pred, fits, time.monotonic() + 600, relabel=True)
    assert report["kept"] and sorted(zip(map(tuple, pred["token_ids"]), pred["labels"])) == truth
    # without relabel the labels stay with their slots: true sentences under crossed labels are not kept (the
    # descent has nothing to change); with it, each takes its own label
    crossed = [list(ids[1]), list(ids[0]), list(ids[2])]
    pred = {"token_ids": [list(s) for s in crossed], "labels": list(LABELS)}
    assert not cls_start(repair, pred, fits, time.monotonic() + 600)["kept"] and pred["labels"] == LABELS
    report = cls_start(repair, pred, fits, time.monotonic() + 600, relabel=True)
    assert report["kept"] and sorted(zip(map(tuple, pred["token_ids"]), pred["labels"])) == truth


def test_with_inner_ids_the_descent_is_offered_no_cls_or_sep_inside(setup, monkeypatch):
    wide, fits, _, ids = setup
    tok = wide.tokenizer
    specials = {tok.cls_token_id, tok.sep_token_id}
    options = _options(ids, sorted(specials))
    repair = SimpleNamespace(layout=fits.layout, cover=None, options=lambda n: options[n],
                             gradient=lambda s, y: torch.zeros(1), misfit=lambda G: float(G.sum()))
    seen = []

    def descend(self, sequences, opts, cover, deadline, **_):
        seen.append(opts)
        return [list(s) for s in sequences], {}
    monkeypatch.setattr(ClsSpans, "descend", descend)
    cls_start(repair, {"token_ids": [list(s) for s in ids], "labels": LABELS}, fits, time.monotonic() + 600,
              inner=specials)
    assert seen and all(not specials & set(row) for n, rows in seen[0].items() for row in rows[1:n - 1])
    cls_start(repair, {"token_ids": [list(s) for s in ids], "labels": LABELS}, fits, time.monotonic() + 600)
    assert any(specials & set(row) for n, rows in seen[1].items() for row in rows[1:n - 1])


def test_with_restarts_the_other_starts_are_descended_and_the_least_misfit_end_kept(setup, monkeypatch):
    """Option `cls_restarts`: the kept start's descent ends in a local minimum (here: the descent changes nothing),
    another start of `ranked_start`'s (the truth, weighed worse at the start) ends lower and replaces it."""
    wide, fits, _, ids = setup
    repair = _truth_repair(fits, ids)
    monkeypatch.setattr(ClsSpans, "descend", lambda self, seqs, *a, **k: ([list(s) for s in seqs], {}))
    wrong = [ids[1][:4] + ids[0][4:], ids[0][:4] + ids[1][4:], list(ids[2])]
    others = {"search": ([list(s) for s in wrong], list(LABELS), 0.9), "filled": ([list(s) for s in ids], LABELS, 1.0),
              "assigned_0": ([list(s) for s in wrong], list(LABELS), 0.5)}
    pred = {"token_ids": [list(s) for s in wrong], "labels": list(LABELS)}
    assert not cls_start(repair, pred, fits, time.monotonic() + 600, relabel=True)["kept"]
    report = cls_start(repair, pred, fits, time.monotonic() + 600, relabel=True, others=others)
    assert report["kept"] and pred["token_ids"] == ids and pred["labels"] == LABELS
    assert report["restarts"]["from"] == "filled" and list(report["restarts"]["ends"]) == ["filled"]


def test_with_screen_every_distinct_start_gets_a_few_sweeps_and_only_the_least_misfit_end_goes_on(setup, monkeypatch):
    """Option `cls_screen`: the kept start and each distinct other batch (a duplicate once) are descended `screen`
    sweeps; only the end of least misfit (here the fill's, one sentence wrong) is descended on to the cap."""
    wide, fits, _, ids = setup
    repair = _truth_repair(fits, ids)
    calls = _recorded_descents(monkeypatch)
    wrong = [ids[1][:4] + ids[0][4:], ids[0][:4] + ids[1][4:], list(ids[2])]
    third = ids[2][:2] + ids[0][2:3] + ids[2][3:]
    other = [list(ids[0]), ids[1][:2] + ids[0][2:3] + ids[1][3:], list(third)]
    filled = [list(ids[0]), list(ids[1]), list(third)]
    others = {"search": ([list(s) for s in wrong], list(LABELS), 0.9), "filled": (filled, LABELS, 1.0),
              "assigned_0": (other, list(LABELS), 0.5), "assigned_1": ([list(s) for s in other], list(LABELS), 0.6)}
    pred = {"token_ids": [list(s) for s in wrong], "labels": list(LABELS)}
    report = cls_start(repair, pred, fits, time.monotonic() + 600, relabel=True, others=others, screen=2)
    assert report["kept"] and pred["token_ids"] == filled and pred["labels"] == LABELS
    assert report["screen"]["from"] == "filled" and set(report["screen"]["ends"]) == {"kept", "assigned_0", "filled"}
    assert [s for _, s in calls] == [2, 2, 2, SWEEPS - 2] and calls[-1][0] == filled


def test_with_screen_an_end_inside_the_box_stops_the_screening(setup, monkeypatch):
    """Option `cls_screen`: the kept start's screened end has misfit 0 (the truth): no other start is descended and
    that end is not descended on."""
    wide, fits, _, ids = setup
    repair = _truth_repair(fits, ids)
    calls = []

    def descend(self, seqs, *a, sweeps=SWEEPS, **k):
        calls.append(sweeps)
        return [list(s) for s in seqs], {}
    monkeypatch.setattr(ClsSpans, "descend", descend)
    wrong = [ids[1][:4] + ids[0][4:], ids[0][:4] + ids[1][4:], list(ids[2])]
    others = {"filled": ([list(s) for s in wrong], LABELS, 1.0)}
    pred = {"token_ids": [list(s) for s in ids], "labels": list(LABELS)}
    report = cls_start(repair, pred, fits, time.monotonic() + 600, relabel=True, others=others, screen=2)
    assert calls == [2] and report["screen"] == {"from": "kept", "ends": {"kept": 0.0}, "misfit": 0.0}


def test_the_sites_are_fitted_once_for_the_descent_and_the_repair_screen(setup, monkeypatch):
    """`cls_start` and the token repair's screen (`update_small_lr._cls_scores`) read the same sites of the same update:
    the box fits (`update_rounding.fit_in_box`, ~60 SVDs each) run once per site, cached on the run's
    `RoundingFits` (`row_basis`), and both read the same bases."""
    wide, _, _, ids = setup
    fits = RoundingFits(layout_for(wide.model), setup[1].update, 1.0, 1)
    calls = []
    fit = update_rounding.fit_in_box
    monkeypatch.setattr(update_rounding, "fit_in_box", lambda *a, **k: calls.append(1) or fit(*a, **k))
    repair = _truth_repair(fits, ids)
    cls_start(repair, {"token_ids": [list(s) for s in ids], "labels": list(LABELS)}, fits, time.monotonic() + 600)
    assert len(calls) == len(SITES)
    screened = SimpleNamespace(layout=fits.layout, screen=None, keep=0)
    update_small_lr._cls_scores(SimpleNamespace(repair_screen=8, _fits=fits), screened, len(ids), False)
    assert len(calls) == len(SITES) and screened.keep == 8 and screened.screen is not None
    again = ClsSpans.of(fits, fits.layout, len(ids))
    assert all(torch.equal(again.bases[k], v) for k, v in ClsSpans.of(fits, fits.layout, len(ids)).bases.items())


def test_option_cls_share_ends_the_cls_start_at_that_share_of_the_budget_left():
    """`exact-update`'s option `cls_share` (`update_small_lr._cls_deadline`): 0 (the default) leaves the [CLS] start
    the whole budget; 0.25 a quarter of what is left."""
    from textleak.attacks.update import UpdateExact
    from textleak.core import budget
    assert UpdateExact().cls_share == 0
    with budget.time_budget(100.0) as b:
        assert update_small_lr._cls_deadline(UpdateExact()) == b.deadline
        got = update_small_lr._cls_deadline(UpdateExact(cls_share=0.25)) - budget.now()
        assert 24.0 < got <= 25.0
    assert update_small_lr._cls_deadline(UpdateExact(cls_share=0.25)) == float("inf")  # no budget: no limit


def test_with_screen_until_no_start_is_begun_after_it_and_the_kept_end_goes_on(setup, monkeypatch):
    """Option `cls_screen_reserve` (`cls_start`'s `screen_until`): once that time has passed no other start is
    screened; the first start's screened end goes on to the sweep cap (session 31: at RT b8 lr 1e-4 four starts'
    screens took the whole [CLS] start and the kept end never went on)."""
    wide, fits, _, ids = setup
    repair = _truth_repair(fits, ids)
    calls = _recorded_descents(monkeypatch)
    wrong = [ids[1][:4] + ids[0][4:], ids[0][:4] + ids[1][4:], list(ids[2])]
    filled = [list(ids[0]), list(ids[1]), ids[2][:2] + ids[0][2:3] + ids[2][3:]]
    others = {"filled": (filled, LABELS, 1.0)}
    pred = {"token_ids": [list(s) for s in wrong], "labels": list(LABELS)}
    report = cls_start(repair, pred, fits, time.monotonic() + 600, relabel=True, others=others, screen=2,
                       screen_until=time.monotonic() - 1)
    assert [s for _, s in calls] == [2, SWEEPS - 2] and calls[-1][0] == wrong
    assert report["screen"]["from"] == "kept" and list(report["screen"]["ends"]) == ["kept"]
    calls.clear()  # without it (or before it) the fill is screened too and goes on
    pred = {"token_ids": [list(s) for s in wrong], "labels": list(LABELS)}
    cls_start(repair, pred, fits, time.monotonic() + 600, relabel=True, others=others, screen=2,
              screen_until=time.monotonic() + 600)
    assert [s for _, s in calls] == [2, 2, SWEEPS - 2] and calls[-1][0] == filled


def test_option_cls_screen_reserve_sets_when_the_screen_begins_no_more_starts():
    """`exact-update`'s option `cls_screen_reserve` (`update_small_lr._screen_until`): 0 (the default) sets no
    limit; 0.25 leaves a quarter of the [CLS] start's time (to its deadline) after the last start begun."""
    from textleak.attacks.update import UpdateExact
    from textleak.core import budget
    assert UpdateExact().cls_screen_reserve == 0
    with budget.time_budget(100.0) as b:
        assert update_small_lr._screen_until(UpdateExact(), b.deadline) is None
        got = update_small_lr._screen_until(UpdateExact(cls_screen_reserve=0.25), b.deadline) - budget.now()
        assert 74.0 < got <= 75.5
    assert update_small_lr._screen_until(UpdateExact(cls_screen_reserve=0.25), float("inf")) is None


def test_option_cls_sweeps_goes_on_past_the_cap_while_the_misfit_falls(setup, monkeypatch):
    """`cls_start`'s `sweeps` above `SWEEPS` (option `cls_sweeps`): the kept end's going on sweeps past `SWEEPS` while
    each sweep lowers the box misfit, and keeps the end of least misfit (here the 10th sweep of all, the 11th rose);
    at `SWEEPS` (the default) it stops at the cap as before."""
    wide, fits, _, ids = setup
    repair = _truth_repair(fits, ids)

    def descend(self, seqs, *a, sweeps=SWEEPS, go_on=None, **k):  # sweep n of all writes 1000 + n at seqs[0][0]
        seqs = [list(s) for s in seqs]
        for done in range(1, sweeps + 1):
            seqs[0][0] = max(seqs[0][0], 1000) + 1
            if go_on is not None and not go_on(seqs, done):
                break
        return seqs, {"sweeps": done}
    monkeypatch.setattr(ClsSpans, "descend", descend)
    curve = {1000 + n: abs(n - 10) * 0.01 + 0.001 for n in range(30)}  # least after the 10th sweep

    def misfit(seqs, labels):
        return curve.get(seqs[0][0], 1.0)
    others = {"filled": ([list(s) for s in ids], LABELS, 1.0)}  # the kept batch again: screened once
    on = [curve[1000 + n] for n in range(8, 12)]  # the misfit after sweeps 8 (the old cap) to 11 (it rose)
    for cap, last, going_on in ((SWEEPS, 1000 + SWEEPS, None), (SWEEPS + 6, 1010, on)):
        pred = {"token_ids": [list(s) for s in ids], "labels": list(LABELS)}
        report = cls_start(repair, pred, fits, time.monotonic() + 600, misfit=misfit, others=others, screen=2,
                           sweeps=cap)
        assert report["kept"] and pred["token_ids"][0][0] == last and report["misfit"][1] == curve[last]
        assert report["screen"].get("going_on") == going_on


def test_option_repair_guard_first_hands_the_repair_one_remembered_cls_score(setup, monkeypatch):
    """`exact-update`'s option `repair_guard_first` (`update_small_lr._cls_scores`): with the guard, the token repair
    weighs the guard first (`BoxRepair.guard_first`), and its screen and guard share one [CLS] score that scores each
    distinct sentence once (the screen's trials are the guard's); off, the two are the spans' own score as before."""
    wide, fits, _, ids = setup
    sentences = []
    score = ClsSpans.score
    monkeypatch.setattr(ClsSpans, "score", lambda self, seqs: sentences.extend(seqs) or score(self, seqs))
    for first in (False, True):
        repair = SimpleNamespace(layout=fits.layout, screen=None, keep=0, guard=None, guard_first=False)
        update_small_lr._cls_scores(SimpleNamespace(repair_screen=8, _fits=fits, repair_guard_first=first), repair,
                                    len(ids), True)
        assert repair.guard_first == first and (repair.guard is repair.screen) == first
        sentences.clear()
        got = repair.screen(ids) + repair.guard(ids[1:])
        assert got[3:] == got[1:3] and len(sentences) == (3 if first else 5)
