"""`beyond_rank`'s `draft_bfloat16` (#16, session 37; the attack's default): the drafts' relaxation (`beyond_rank_drafts`) run
under bfloat16 autocast where bfloat16 is fast, each rounded draft kept or dropped on its float32 distance; on the
tiny 2-layer BERT classifier of test_pooled_states."""

from __future__ import annotations

import torch

from test_pooled_states import _two_off_setting, _wide_finisher, batch
from textleak.attacks import beyond_rank_drafts as drafts
from textleak.attacks import beyond_rank_invert as invert
from textleak.attacks.beyond_rank_targets import TargetDescent

FIXTURES = (batch,)  # test_pooled_states' module fixture, used here by name
CLS_STATE = invert._cls_state  # the unpatched state


def _drafted(batch, monkeypatch, fast: bool, **kw):
    """The descent (drafts only, no sweeps) with `fast_bfloat16` as given, and the autocast dtype (None: off) each
    relaxation forward pass ran under."""
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 4)
    seen = []

    def state(layout_, ids=None, embeds=None, mask=None):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return CLS_STATE(layout_, ids, embeds, mask)
    monkeypatch.setattr(invert, "_cls_state", state)
    monkeypatch.setattr(drafts, "fast_bfloat16", lambda device: fast)
    descent = TargetDescent(layout, grads, len(truth), specials, sweeps=0, drafts=30, **kw)
    out = descent.run([list(t) for t in tracks], [], pins.allowed)
    return descent, out, seen


def test_draft_bfloat16_relaxes_at_bfloat16_where_fast_and_keeps_drafts_on_float32_distances(batch, monkeypatch):
    descent, out, seen = _drafted(batch, monkeypatch, True, draft_bfloat16=True)
    rep = descent.report["drafts"]
    assert rep["bfloat16"] and rep["steps"] > 0 and len(seen) == rep["steps"]  # each step's forward pass
    assert set(seen) == {torch.bfloat16}
    assert rep["kept"] > 0 and out != _two_off_setting(batch, 4)[4]  # drafts replaced tracks
    plain, _, seen = _drafted(batch, monkeypatch, False, draft_bfloat16=True)  # emulated bfloat16: float32
    assert set(seen) == {None} and "bfloat16" not in plain.report["drafts"]
    off, _, seen = _drafted(batch, monkeypatch, True)  # the descent's own default: off
    assert set(seen) == {None} and "bfloat16" not in off.report["drafts"]
    assert _wide_finisher(batch).draft_bfloat16 and not _wide_finisher(batch, draft_bfloat16=False).draft_bfloat16


def test_bfloat16_drafts_are_kept_only_where_float32_says_nearer(batch, monkeypatch):
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 4)
    monkeypatch.setattr(drafts, "fast_bfloat16", lambda device: True)
    descent = TargetDescent(layout, grads, len(truth), specials, sweeps=0, drafts=30, draft_bfloat16=True)
    judged = []
    states = descent.states

    def spy(seqs):  # every distance StateDrafts keeps a draft on comes from here, outside autocast
        judged.append(torch.is_autocast_enabled("cpu"))
        return states(seqs)
    monkeypatch.setattr(descent, "states", spy)
    descent.run([list(t) for t in tracks], [], pins.allowed)
    assert judged and not any(judged)


def test_the_relaxation_gives_the_logits_gradients_and_the_model_weights_none(batch):
    # session 37: a full backward also computed (and accumulated) every weight's gradient, 1/3 of a draft step
    target, layout, _, truth, states = batch
    tok = target.tokenizer
    options = [sorted({s[p] for s in truth if p < len(s) - 1}) for p in range(max(map(len, truth)))]
    n = len(truth[0])
    cols = invert.columns(options, n, tok.sep_token_id, torch.device("cpu"))
    for p in layout.base.parameters():
        p.grad = None
    Z = [(0.1 * torch.randn(1, len(c), generator=torch.Generator().manual_seed(p))).requires_grad_(True)
         for p, c in enumerate(cols)]
    drawn, taken = invert.relax(layout, Z, cols, tok.cls_token_id, tok.sep_token_id, states[:1], 5)
    assert taken == 5 and len(drawn[0]) == n and all(z.grad is not None for z in Z)
    assert all(p.grad is None for p in layout.base.parameters())
