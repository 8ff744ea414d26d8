"""Padding and micro-batches as the collators make them (issue #14, requirement 3): left padding,
pad_to_multiple_of, gradient accumulation over micro-batches each padded on its own."""

from __future__ import annotations

import pytest
import torch
from test_attacks_text import _wide_model

import textleak
from textleak.capturing import TrainingStep
from textleak.cli import main
from textleak.text.layouts import layout_for
from textleak.text.leaks import padded
from textleak.text.padding import LeftPadding

TEXTS = ["the dog sat on the mat .", "a small bird sang", "big cat ran"]


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return _wide_model(tmp_path_factory.mktemp("wide-padding"), "classify")


def _exact(target, texts, labels, step, unknown=("labels",)):
    cap = textleak.capture_gradients(target, texts, labels=labels, step=step, device="cpu")
    res = textleak.recover(gradients=cap.gradients, model=target, attack="exact", reference=cap.reference,
                           unknown=list(unknown), progress=False, device="cpu")
    return cap, res


def test_the_layout_computes_a_left_padded_batch_as_the_victim_did(wide):
    cap = textleak.capture_gradients(wide, TEXTS, labels=[1, 0, 1], step=TrainingStep(pad_side="left"), device="cpu")
    meta = cap.gradients.metadata
    assert meta["capture"]["padding"]["side"] == "left" and meta["capture"]["padding"]["length"] == 9
    layout = layout_for(wide.model)
    layout.padding = LeftPadding.of(meta, meta["knowledge"]["seq_lengths"], "classify", wide.tokenizer.pad_token_id)
    assert layout.padding.shift(5) == 4 and layout.padding.rows(5) == 6 and layout.padding.rows(9) == 9
    ids, mask = padded(cap.reference.token_ids)  # the attacker's rows: each sentence from position 0
    named = dict(wide.model.named_parameters())
    wide.model.eval()
    loss = wide.model(**layout.inputs(ids, mask), labels=torch.tensor([1, 0, 1])).loss
    grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
    for (name, _), g in zip(named.items(), grads):
        if g is not None and name in cap.gradients.gradients:
            shared = cap.gradients.gradients[name]
            assert float((g - shared).norm()) <= 1e-5 * float(shared.norm()) + 1e-12, name
    # layer inputs come back where the caller put each token: the short sentence's first row is its [CLS]
    h = layout.layer_inputs(ids, mask, 1)
    alone = layout_for(wide.model).layer_inputs(ids[2:3, :5], None, 1, positions=torch.arange(5) + 4)
    assert torch.allclose(h[2, :5], alone[0], atol=1e-5)


def test_a_left_padded_batch_is_recovered_exactly_and_certified(wide):
    cap, res = _exact(wide, TEXTS, [1, 0, 1], TrainingStep(pad_side="left"))
    assert res.details["certified"] and res.metrics["mean"]["exact_match"] == 1.0
    assert res.metrics["mean"]["label_accuracy"] == 1.0 and res.details["peeled"] == 3
    assert res.assumed["padding"].startswith("left padding to 9 tokens")


def test_left_padding_to_a_fixed_length_with_lengths_inferred(wide):
    cap, res = _exact(wide, TEXTS[1:], [0, 1], TrainingStep(pad_side="left", pad_to=16), unknown=("labels", "seq_lengths"))
    assert cap.gradients.metadata["capture"]["padding"]["length"] == 16
    assert "[CLS] positions" in res.assumed["seq_lengths"]
    assert res.details["certified"] and res.metrics["mean"]["exact_match"] == 1.0


def test_padding_to_a_multiple_changes_nothing_an_attack_sees(wide):
    cap, res = _exact(wide, TEXTS, [0, 1, 1], TrainingStep(pad_multiple=8))
    assert cap.gradients.metadata["capture"]["padding"]["length"] == 16
    assert res.details["certified"] and res.metrics["mean"]["exact_match"] == 1.0


@pytest.mark.parametrize("side", ["right", "left"])
def test_micro_batches_each_padded_on_their_own_are_recovered_exactly(wide, side):
    # 3 sentences over 2 micro-batches: [2, 1], each micro-batch's mean loss halved, so the third
    # sentence weighs twice the others; its own micro-batch is padded to its own length
    cap, res = _exact(wide, TEXTS, [1, 0, 1], TrainingStep(accumulation=2, pad_side=side))
    shared = cap.gradients.metadata["capture"]
    assert shared["accumulation"] == {"steps": 2, "sizes": [2, 1]}
    assert shared["padding"]["lengths"] == [9, 5]
    assert res.details["certified"] and res.metrics["mean"]["exact_match"] == 1.0
    assert sorted(res.details["peel_shares"]) == pytest.approx([0.25, 0.25, 0.5], rel=1e-3)


def test_a_left_padded_masked_lm_step_declares_positions_within_each_sentence(tmp_path):
    mlm = _wide_model(tmp_path, "mlm")
    cap, res = _exact(mlm, TEXTS, None, TrainingStep(pad_side="left"), unknown=())
    know = cap.gradients.metadata["knowledge"]
    assert all(0 < p < n - 1 for pos, n in zip(know["mask_positions"], know["seq_lengths"]) for p in pos)
    assert res.details["certified"] and res.metrics["mean"]["exact_match"] == 1.0


def test_capture_takes_the_padding_switches(tiny_bert_wide, tmp_path, capsys):
    out = tmp_path / "g.pt"
    code = main(["capture", "--model", str(tiny_bert_wide), "--text", "the cat sat", "--text", "a dog ran", "--task", "classify",
                 "--labels", "1", "0", "--pad-side", "left", "--pad-multiple", "8", "--accumulate", "2", "--out", str(out)])
    assert code == 0
    shared = textleak.load_gradients(out).metadata["capture"]
    assert shared["padding"]["side"] == "left" and shared["padding"]["multiple"] == 8
    assert shared["padding"]["lengths"] == [8, 8] and shared["accumulation"] == {"steps": 2, "sizes": [1, 1]}
    capsys.readouterr()
    assert main(["capture", "--model", str(tiny_bert_wide), "--text", "x", "--accumulate", "2", "--out", str(tmp_path / "h.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("textleak: error: --accumulate 2 needs at least 2 sentences") and err.count("\n") == 1
    assert main(["capture", "--text", "x", "--pad-side", "top", "--out", str(tmp_path / "h.pt")]) == 2
    assert not (tmp_path / "h.pt").exists()


def test_a_length_in_two_micro_batches_padded_differently_is_searched_at_each(wide):
    # micro-batches [9, 5] and [5, 6] tokens: the two 5-token sentences stand at different shifts
    texts = [TEXTS[0], TEXTS[2], "sad film was", TEXTS[1]]
    cap, res = _exact(wide, texts, [1, 0, 0, 1], TrainingStep(pad_side="left", accumulation=2))
    assert cap.gradients.metadata["capture"]["padding"]["lengths"] == [9, 6]
    assert cap.gradients.metadata["knowledge"]["seq_lengths"] == [9, 5, 5, 6]
    assert res.details["certified"] and res.metrics["mean"]["exact_match"] == 1.0
    assert res.metrics["mean"]["label_accuracy"] == 1.0


def test_sentence_pairs_show_in_the_token_type_gradient_and_exact_refuses_them(wide):
    from textleak.capturing import parameter_gradients
    from textleak.errors import MissingKnowledgeError

    cap = textleak.capture_gradients(wide, TEXTS[:2], labels=[1, 0], device="cpu")
    assert layout_for(wide.model).types_used(cap.gradients.gradients) == [0]  # single sentences: type 0 only
    pair = wide.tokenizer([TEXTS[1]], [TEXTS[2]], return_tensors="pt")
    wide.model.eval()
    grads = parameter_gradients(wide.model(**pair, labels=torch.tensor([1])).loss, wide.model)
    shared = textleak.GradientFile(grads, cap.gradients.metadata)
    with pytest.raises(MissingKnowledgeError, match="token types \\[0, 1\\].*sentence pairs"):
        textleak.recover(gradients=shared, model=wide, attack="exact", progress=False, device="cpu")


def test_positions_refuses_a_left_padded_dropout_step_and_auto_says_why(wide):
    # positions reads sentences as standing from position 0: a left-padded train-mode step is refused
    # in one line (and `auto` names the reason); a single sentence padded to nothing is read as before
    from textleak.attacks import ATTACKS
    from textleak.errors import MissingKnowledgeError
    from textleak.threat import Observation

    step = TrainingStep(mode="train", pad_side="left")
    two = Observation.from_file(textleak.capture_gradients(wide, [TEXTS[0], TEXTS[2]], labels=[1, 0], step=step).gradients)
    with pytest.raises(MissingKnowledgeError, match="positions attack does not handle left padding.* to 9 tokens"):
        ATTACKS.get("positions")().preflight(two, wide)
    auto = ATTACKS.get("auto")(stages=[ATTACKS.get("exact")(), ATTACKS.get("positions")()])
    with pytest.raises(MissingKnowledgeError, match="exact: .*train mode.*positions: .*left padding"):
        auto.preflight(two, wide)
    one = textleak.capture_gradients(wide, TEXTS[:1], labels=[1], step=step)
    ATTACKS.get("positions")().preflight(Observation.from_file(one.gradients), wide)
    fixed = textleak.capture_gradients(wide, TEXTS[:1], labels=[1], step=TrainingStep(mode="train", pad_side="left", pad_to=12))
    with pytest.raises(MissingKnowledgeError, match="left padding"):  # a fixed length pads even one sentence
        ATTACKS.get("positions")().preflight(Observation.from_file(fixed.gradients, unknown=["seq_lengths"]), wide)


def test_roberta_left_padding_shifts_nothing_and_is_recovered_exactly(tmp_path):
    # RoBERTa numbers only the real tokens (pads read the padding row): left padding shifts no
    # sentence there, but the classifier still pools a pad; before, the shorter sentence was searched
    # at shifted positions and missed (uncertified)
    from conftest import make_tiny_model
    from textleak.text.models import load_text_model

    torch.manual_seed(0)
    target = load_text_model(str(make_tiny_model(tmp_path, "roberta", hidden=64, layers=3, init=0.1)), task="classify")
    texts = ["the small dog sat on the mat .", "a red bird flew", "big cat ran"]
    cap = textleak.capture_gradients(target, texts, labels=[0, 1, 1], seed=1, step=TrainingStep(pad_side="left"))
    meta = cap.gradients.metadata
    layout = layout_for(target.model)
    assert not layout.pads_take_positions
    layout.padding = LeftPadding.of(meta, meta["knowledge"]["seq_lengths"], "classify", target.tokenizer.pad_token_id,
                                    shifts=layout.pads_take_positions)
    ids, mask = padded(cap.reference.token_ids)
    named = dict(target.model.named_parameters())
    target.model.eval()
    loss = target.model(**layout.inputs(ids, mask), labels=torch.tensor([0, 1, 1])).loss
    for (name, _), g in zip(named.items(), torch.autograd.grad(loss, list(named.values()), allow_unused=True)):
        if g is not None and name in cap.gradients.gradients:
            shared = cap.gradients.gradients[name]
            assert float((g - shared).norm()) <= 1e-5 * float(shared.norm()) + 1e-12, name
    res = textleak.recover(gradients=cap.gradients, model=target, attack="exact", reference=cap.reference,
                           unknown=["labels"], progress=False, budget=30)
    assert res.details["certified"] and res.metrics["mean"]["exact_match"] == 1.0 and res.details["peeled"] == 3
    assert "pads take no position" in res.assumed["padding"]
