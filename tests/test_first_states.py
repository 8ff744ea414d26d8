"""`beyond_rank --option cls_row_only=true` (#16, session 45): the target descent's [CLS] states read by a forward
that runs the last layer for position 0 alone (`Layout.first_states`, BERT's family: BERT, RoBERTa, ELECTRA); the
same states as the full forward's to float32 rounding, at bfloat16 within the screen's own rounding; a layout that
cannot (DistilBERT, ALBERT, left padding) says None and the full forward is read. On tiny random encoders
(conftest.make_tiny_model) and the tiny 2-layer BERT classifier of test_pooled_states."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_model

from test_pooled_states import _two_off_setting, _wide_finisher, batch
from textleak.attacks import ATTACKS
from textleak.attacks.beyond_rank_targets import TargetDescent, cls_states
from textleak.errors import InputError
from textleak.text.layouts import Layout, layout_for
from textleak.text.leaks.residuals import padded
from textleak.text.models import load_text_model
from textleak.validate import attack_instance

FIXTURES = (batch,)  # test_pooled_states' module fixture, used here by name
SEQS = [[2, 7, 9, 11, 3], [2, 8, 3], [2, 5, 6, 7, 8, 9, 10, 3]]  # padded to 8: the keys' mask matters


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max())


@pytest.mark.parametrize("family,can", [("bert", True), ("roberta", True), ("electra", True),
                                        ("distilbert", False), ("albert", False)])
def test_the_last_layer_for_cls_alone_gives_the_full_forwards_cls_states(tmp_path, family, can):
    torch.manual_seed(0)
    model = load_text_model(str(make_tiny_model(tmp_path, family, hidden=64, layers=3, init=0.1)),
                            task="classify").model
    layout = layout_for(model)
    ids, mask = padded(SEQS)
    with torch.no_grad():
        full, row = layout.hidden_states(ids, mask)[:, 0], layout.first_states(ids, mask)
        if not can:  # says so: the descent reads the full forward
            assert row is None and torch.equal(cls_states(layout, SEQS, row=True), cls_states(layout, SEQS))
            return
        assert row.shape == full.shape and _relative(row, full) < 1e-5  # float32 rounding (measured ~5e-7)
        assert not torch.equal(layout.first_states(ids, None), row)  # the pads are masked out of the keys
        half = copy.copy(layout)  # the layout on a bfloat16 copy, as `RoughStates` screens
        half.model = copy.deepcopy(model).to(torch.bfloat16)
        half.base = half.model.base_model
        rough_full, rough_row = half.hidden_states(ids, mask)[:, 0].float(), half.first_states(ids, mask).float()
        assert rough_row.dtype == torch.float32 and _relative(rough_row, full) < 2e-2  # bfloat16's own rounding
        assert _relative(rough_row, rough_full) < 2e-2
        layout.padding = object()  # left padding moves position 0: it cannot
        assert layout.first_states(ids, mask) is None


def test_the_base_layout_cannot():
    assert Layout.first_states(None, torch.zeros(1, 3, dtype=torch.long)) is None


def test_the_descent_reads_the_row_states_and_still_reaches_the_truth(batch, monkeypatch):
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 1)
    calls = []
    first = type(layout).first_states

    def counted(self, ids, mask=None):
        calls.append(ids.shape)
        return first(self, ids, mask)
    monkeypatch.setattr(type(layout), "first_states", counted)
    for screen, copy_model in ((0, False), (2, True), (2, False)):
        calls.clear()
        descent = TargetDescent(layout, grads, len(truth), specials, sweeps=8, screen=screen, screen_copy=copy_model,
                                cls_row_only=True)
        assert descent.run([list(t) for t in tracks], [], pins.allowed) == truth
        assert calls and descent.report["reached"] == len(truth)
        assert _relative(descent.states(truth), cls_states(layout, truth)) < 1e-5
    calls.clear()
    TargetDescent(layout, grads, len(truth), specials, sweeps=8, screen=2).run([list(t) for t in tracks], [],
                                                                                 pins.allowed)
    assert not calls  # off: the full forward


def test_cls_row_only_is_on_by_default_checked_and_reaches_the_descent(batch):
    assert ATTACKS.get("beyond_rank")().cls_row_only is True and _wide_finisher(batch).cls_row_only is True  # s45
    assert _wide_finisher(batch, cls_row_only=False).cls_row_only is False
    assert ATTACKS.get("beyond_rank")(cls_row_only=True).options()["cls_row_only"] is True
    assert attack_instance("beyond_rank", {"cls_row_only": True}, 0).cls_row_only is True
    with pytest.raises(InputError, match="cls_row_only"):
        attack_instance("beyond_rank", {"cls_row_only": 3}, 0)
    assert TargetDescent(batch[1], {}, 2, set(), cls_row_only=True).cls.keywords == {"row": True}
    assert TargetDescent(batch[1], {}, 2, set()).cls.keywords == {"row": False}
