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
    """`length_start` (`exact-update`'s option `cls_lengths`, off by default): the traded and descended batch
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
    assert UpdateExact().cls_lengths is False and UpdateExact(cls_lengths=True).cls_lengths is True
