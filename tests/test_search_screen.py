"""`search_screen` (`exact`, `beyond_rank`): settling's candidates scored with the layer under bfloat16 autocast,
each seed's K least rescored as without the screen (`leaks.slots.screened`, `exact.seeds.settle`)."""

import pytest
import torch

import textleak
from textleak.attacks.exact import seeds
from textleak.core.device import fast_bfloat16
from textleak.errors import InputError
from textleak.text import leaks
from textleak.text.layouts import layout_for
from textleak.validate import attack_instance

from test_attacks_text import _wide_model


@pytest.fixture(scope="module")
def wide_target(tmp_path_factory):
    return _wide_model(tmp_path_factory.mktemp("wide-bert-screen"), "classify")


def test_the_screen_rescores_each_prefix_s_least_and_reads_the_rest_as_inf(wide_target, monkeypatch):
    """Each prefix keeps its K least under the bfloat16 screen, scored as the unscreened call scores them (the
    true token among them, least), the other candidates inf (the calls screened whatever their size)."""
    monkeypatch.setattr(leaks.slots, "SCREEN_PAIRS", 0, raising=False)
    texts = ["the dog sat on the mat .", "a small bird sang"]
    cap = textleak.capture_gradients(wide_target, texts, labels=[1, 0])
    layout, seq = layout_for(wide_target.model), cap.reference.token_ids[0]
    span1 = leaks.layer_span(layout, cap.gradients.gradients, 1)
    p, options = 3, torch.arange(5, wide_target.model.config.vocab_size)
    prefixes = torch.tensor([seq[:p], seq[:p]])
    suffix = torch.tensor([seq[p + 1:], seq[p + 1:]])
    with leaks.layer0_table(layout, len(seq)):
        plain = leaks.slot_residuals(layout, span1, prefixes, options, suffix)
        screened = leaks.slot_residuals(layout, span1, prefixes, options, suffix, screen=3)
    assert screened.shape == plain.shape and screened.dtype == plain.dtype
    kept = torch.isfinite(screened)
    assert kept.sum(1).tolist() == [3, 3]
    assert torch.allclose(screened[kept], plain[kept], rtol=1e-5, atol=1e-12)
    assert (options[screened.argmin(1)] == seq[p]).all() and (options[plain.argmin(1)] == seq[p]).all()
    # no screen where K covers every candidate
    assert torch.equal(leaks.slot_residuals(layout, span1, prefixes, options, suffix, screen=len(options)), plain)


def test_settle_screens_with_the_search_s_count_and_still_recovers(wide_target, monkeypatch):
    """`exact` with `search_screen=2` passes the count to every settling call, screens the beam's wide steps, and still recovers the batch,
    certified; `auto` takes `SEARCH_SCREEN` only where bfloat16 is fast (the calls screened whatever their size)."""
    from textleak.core.device import screen_count

    monkeypatch.setattr(leaks.slots, "SCREEN_PAIRS", 0, raising=False)
    seen, rough = [], []
    plain = seeds.slot_residuals

    def spy(*args, screen=0, **kw):
        if len(args) == 5:  # settling (the beam scores prefixes alone)
            seen.append(screen)
        else:
            rough.append(kw.get("rough", False))
        return plain(*args, screen=screen, **kw)

    monkeypatch.setattr(seeds, "slot_residuals", spy)
    texts = ["the dog sat on the mat .", "a small dog sat", "a bird sang the song", "big cat ran"]
    cap = textleak.capture_gradients(wide_target, texts, labels=[0, 1, 1, 0], seed=1)
    res = textleak.recover(gradients=cap.gradients, model=wide_target, attack="exact", reference=cap.reference,
                           unknown=["labels"], progress=False, options={"search_screen": 2})
    assert res.details["certified"] and res.metrics["mean"]["exact_match"] == 1.0
    assert seen and set(seen) == {2} and res.config["search_screen"] == 2
    assert any(rough) and not all(rough)  # the beam's wide steps screened, its rescoring (and narrow steps) not
    assert screen_count("auto", 4, "cpu") == (4 if fast_bfloat16("cpu") else 0) and screen_count(0, 4, "cpu") == 0


def test_search_screen_takes_a_count_or_auto():
    for name in ("exact", "beyond_rank"):
        assert attack_instance(name, {"search_screen": "auto"}, 0).search_screen == "auto"
        assert attack_instance(name, {"search_screen": 4}, 0).search_screen == 4
        for bad in ("some", -1):
            with pytest.raises(InputError):
                attack_instance(name, {"search_screen": bad}, 0)


def test_inside_the_table_the_screen_runs_a_bfloat16_copy_and_small_calls_are_not_screened(wide_target, monkeypatch):
    """Inside `layer0_table` a screened call runs layer 0's bfloat16 copy, made once for the block (no autocast, which
    casts the weights on every call), and keeps the float32 least; a call of fewer than `SCREEN_PAIRS` pairs is
    scored as without the screen."""
    texts = ["the dog sat on the mat .", "a small bird sang"]
    cap = textleak.capture_gradients(wide_target, texts, labels=[1, 0])
    layout, seq = layout_for(wide_target.model), cap.reference.token_ids[0]
    span1 = leaks.layer_span(layout, cap.gradients.gradients, 1)
    p, options = 3, torch.arange(5, wide_target.model.config.vocab_size)
    prefixes, suffix = torch.tensor([seq[:p]] * 2), torch.tensor([seq[p + 1:]] * 2)
    autocasts: list[bool] = []
    plain_autocast = torch.autocast

    def spy(*args, enabled=True, **kw):
        autocasts.append(enabled)
        return plain_autocast(*args, enabled=enabled, **kw)

    monkeypatch.setattr(torch, "autocast", spy)
    with leaks.layer0_table(layout, len(seq)):
        plain = leaks.slot_residuals(layout, span1, prefixes, options, suffix)
        assert 2 * len(options) < leaks.slots.SCREEN_PAIRS
        assert torch.equal(leaks.slot_residuals(layout, span1, prefixes, options, suffix, screen=3), plain)
        monkeypatch.setattr(leaks.slots, "SCREEN_PAIRS", 2 * len(options))
        screened = leaks.slot_residuals(layout, span1, prefixes, options, suffix, screen=3)
        table = leaks.slots._TABLE.get()
        block = table.rough_block()
        assert block is table.rough_block() and block.query.weight.dtype == torch.bfloat16
        assert layout.block(0).query.weight.dtype == torch.float32  # the model itself untouched
    assert torch.isfinite(screened).sum(1).tolist() == [3, 3] and not any(autocasts)
    assert (options[screened.argmin(1)] == seq[p]).all()
    kept = torch.isfinite(screened)
    assert torch.allclose(screened[kept], plain[kept], rtol=1e-5, atol=1e-12)


def test_the_rough_block_is_a_bfloat16_copy_of_layer_0_alone(wide_target, monkeypatch):
    """`_Layer0Table.rough_block` copies layer 0 alone (not the whole model), casts the copy to bfloat16, leaves the
    model as it was and computes what layer 0 computes, to bfloat16's precision."""
    layout = layout_for(wide_target.model)
    copied, plain_copy = [], leaks.slots.copy.deepcopy

    def spy(obj, *args):
        copied.append(obj)
        return plain_copy(obj, *args)

    monkeypatch.setattr(leaks.slots.copy, "deepcopy", spy)
    with leaks.layer0_table(layout, 4):
        rough = leaks.slots._TABLE.get().rough_block()
    assert len(copied) == 1 and copied[0] is layout.layer(0)
    assert rough.query.weight.dtype == torch.bfloat16 and rough.query.weight is not layout.block(0).query.weight
    assert all(p.dtype == torch.float32 for p in wide_target.model.parameters())
    x = torch.randn(3, wide_target.model.config.hidden_size)
    exact, block = layout.block(0).query(x), rough.query(x.to(torch.bfloat16)).float()
    assert torch.allclose(block, exact, rtol=0.05, atol=0.05)
    h = torch.randn(3, wide_target.model.config.hidden_size)
    assert torch.allclose(rough.feed_forward(h.to(torch.bfloat16)).float(), layout.block(0).feed_forward(h), atol=0.1)
