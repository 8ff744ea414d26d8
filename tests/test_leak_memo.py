"""Leaks that several steps of one recovery ask for are read once per gradient (`text.leaks.memo`):
the noise level (the preflights, the variant choice and the attack each ask), the token set and a
layer's span; each is read again once any tensor it came from changes. And `check_finite` finds a
NaN or an infinity anywhere in a tensor without building its [numel] mask."""

from __future__ import annotations

import pytest
import torch

import textleak
from textleak.errors import GradientFileError
from textleak.gradients import check_finite
from textleak.text.layouts import layout_for
from textleak.text.models import load_text_model
from textleak.text.leaks import embedding_token_set, layer_span, noise_level
from textleak.text.leaks.memo import memo

TEXTS = ["the film was a delight", "a dull , tired story"]


def test_memo_reuses_a_result_only_while_every_tensor_it_read_is_unchanged():
    a, b, c = torch.ones(3), torch.ones(3), torch.ones(3)
    calls = []

    def compute():
        calls.append(1)
        return len(calls)

    assert memo(a, "k", compute, also=[b]) == 1
    assert memo(a, "k", compute, also=[b]) == 1  # the same tensors, the same versions
    b.add_(1)  # an in-place change to a tensor it also read
    assert memo(a, "k", compute, also=[b]) == 2
    assert memo(a, "k", compute, also=[c]) == 3  # another tensor in its place
    assert memo(a, "k", compute, also=[c, b]) == 4
    a.mul_(2)
    assert memo(a, "k", compute, also=[c, b]) == 5


def test_noise_level_token_set_and_span_are_read_once_per_gradient(tiny_bert):
    target = load_text_model(str(tiny_bert), task="classify")
    layout = layout_for(target.model)
    noisy = textleak.capture_gradients(target, TEXTS, labels=[1, 0], defence="noise:1e-6", seed=0).gradients.gradients
    level = noise_level(layout, noisy, 8)
    assert level is not None and noise_level(layout, noisy, 8) is level
    noisy[layout.position_embedding_name][-1].add_(1.0)  # the rows past the longest sentence change
    again = noise_level(layout, noisy, 8)
    assert again is not level and again.sigma != level.sigma

    grads = textleak.capture_gradients(target, TEXTS, labels=[1, 0], seed=0).gradients.gradients
    tokens = embedding_token_set(layout, grads)
    tokens[0] = -1  # each caller gets its own copy
    assert int(embedding_token_set(layout, grads)[0]) >= 0
    grads[layout.word_embedding_name][7].add_(1.0)
    assert 7 in embedding_token_set(layout, grads).tolist()

    span = layer_span(layout, grads, 0)
    again = layer_span(layout, grads, 0)
    assert again is not span and again.basis is span.basis  # one SVD, a copy per caller
    span.tol = 123.0
    assert layer_span(layout, grads, 0).tol != 123.0
    name = layout.qkv_names(0)[-1]
    grads[name].mul_(2.0)
    assert layer_span(layout, grads, 0).basis is not span.basis


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_check_finite_finds_one_bad_entry_anywhere(bad):
    grads = {"a": torch.zeros(50, 40), "b": torch.zeros(0), "ids": torch.arange(5)}
    check_finite(grads, source="x")
    grads["a"][37, 11] = bad
    with pytest.raises(GradientFileError, match="NaN or infinite values in a"):
        check_finite(grads, source="x")


def test_a_peel_subtracts_only_the_rows_a_sentence_touches_with_the_same_values():
    from textleak.attacks.exact.peeling import subtracted

    gen = torch.Generator().manual_seed(0)
    rest = torch.randn(3000, 16, generator=gen, dtype=torch.float64)
    own = torch.zeros(3000, 16)
    own[[5, 17, 2999]] = torch.randn(3, 16, generator=gen)
    out = subtracted(rest, own, 0.37)
    assert out.dtype == torch.float64 and out.data_ptr() != rest.data_ptr()
    assert torch.equal(out, rest - 0.37 * own.double())
    dense = torch.randn(3000, 16, generator=gen)
    assert torch.equal(subtracted(rest, dense, 0.37), rest - 0.37 * dense.double())
