"""Recovery from what a real training step shares (issue #14): a gradient at an unknown scale
(clipping), reduced-precision autocast, padding, train mode, and the protocol the capture records."""

from __future__ import annotations

import json

import pytest
import torch
from test_attacks_text import _wide_model

import textleak
from textleak.attacks import ATTACKS
from textleak.capturing import TrainingStep
from textleak.cli import main
from textleak.errors import MissingKnowledgeError
from textleak.text.layouts import layout_for
from textleak.text.leaks import assign_class_labels
from textleak.text.leaks.scale import Pencil
from textleak.threat import Observation
from textleak.training import TrainingSettings

TEXTS = ["the dog sat on the mat .", "a small bird sang", "big cat ran"]


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return _wide_model(tmp_path_factory.mktemp("wide-steps"), "classify")


def _exact(target, texts, labels, step):
    cap = textleak.capture_gradients(target, texts, labels=labels, step=step)
    res = textleak.recover(gradients=cap.gradients, model=target, attack="exact", reference=cap.reference,
                           unknown=["labels"], progress=False)
    return cap, res


def test_the_pencil_reads_a_sentences_share_of_a_gradient():
    gen = torch.Generator().manual_seed(0)
    H = 40
    own = torch.randn(3 * H, 4, generator=gen, dtype=torch.float64) @ torch.randn(4, H, generator=gen, dtype=torch.float64)
    other = torch.randn(3 * H, 5, generator=gen, dtype=torch.float64) @ torch.randn(5, H, generator=gen, dtype=torch.float64)
    rest = 0.037 * own + 0.05 * other
    pencil = Pencil.of(rest, 9)
    a = pencil.refine(own, 4, pencil.scale(own))
    assert a == pytest.approx(0.037, rel=1e-9)
    assert torch.linalg.matrix_rank(rest - a * own).item() == 5
    assert pencil.scale(-own) < 0  # the wrong sign (a binary classifier's other label) is no share


def test_the_repeated_eigenvalue_reads_a_share_where_inputs_are_shared():
    # layer 0: [CLS] at position 0 (and other inputs) are shared between sentences, so subtracting
    # the right share removes only the sentence's own inputs; the trace rule is then off
    gen = torch.Generator().manual_seed(0)
    H, m = 40, 120
    x = torch.randn(8, H, generator=gen, dtype=torch.float64)  # inputs 0-3 the sentence's, 0 shared with others
    d_own, d_other = (torch.randn(m, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    d_other[:, 1:4] = 0
    own = d_own[:, :4] @ x[:4]
    rest = 0.021 * own + d_other[:, [0, 4, 5, 6, 7]] @ x[[0, 4, 5, 6, 7]]
    pencil = Pencil.of(rest, None)
    a, drop = pencil.eigen_scale(own)
    assert drop == 3 and pencil.refine(own, drop, a) == pytest.approx(0.021, rel=1e-9)
    assert abs(pencil.scale(own) / 0.021 - 1) > 1e-4  # the trace rule is off far above rounding here
    assert torch.linalg.matrix_rank(rest - a * own).item() == 5


def test_labels_by_the_sign_rule_at_an_unknown_scale(wide):
    layout = layout_for(wide.model)
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(3, 128, generator=gen, dtype=torch.float64)
    probs = torch.softmax(torch.randn(3, 2, generator=gen, dtype=torch.float64), -1)
    labels = torch.tensor([1, 0, 1])
    G = (probs - torch.nn.functional.one_hot(labels, 2)).T @ features / 3
    grads = {layout.classifier().weight: 0.0123 * G}  # clipped: a factor the attacker does not know
    assert assign_class_labels(layout, grads, features, probs, None) == [1, 0, 1]
    assert assign_class_labels(layout, grads, features, probs, 3 / 0.0123) == [1, 0, 1]


def test_a_clipped_capture_is_recovered_exactly_with_its_labels(wide):
    cap, res = _exact(wide, TEXTS, [1, 0, 1], TrainingStep(clip=1e-3))
    assert cap.gradients.metadata["capture"]["clipping"] == {"max_norm": 1e-3, "clipped": True}
    assert res.details["certified"] and res.metrics["mean"]["exact_match"] == 1.0
    assert res.metrics["mean"]["label_accuracy"] == 1.0
    shares = res.details["peel_shares"]
    assert res.details["peeled"] == 3 and len(shares) == 3
    assert max(shares) / min(shares) - 1 < 1e-4 and shares[0] < 0.01  # clipped: far below 1/3, all equal
    _, plain = _exact(wide, TEXTS, [1, 0, 1], TrainingStep())
    assert plain.details["peel_shares"] == pytest.approx([1 / 3] * 3, rel=1e-4)


def test_a_per_layer_clipped_capture_is_recovered_exactly_with_its_labels(minilm3):
    # trained weights: a random model's single Q or K gradient has too steep a spectrum to fit alone
    texts, labels = ["the film was a delight", "a dull , tired story", "great fun"], [1, 0, 1]
    cap, res = _exact(minilm3, texts, labels, TrainingStep(clip_per_layer=1e-4))
    clipping = cap.gradients.metadata["capture"]["clipping"]
    assert clipping == {"max_norm": None, "clipped": True, "per_layer": 1e-4}
    layout = layout_for(minilm3.model)
    obs = Observation.from_file(cap.gradients)
    own = TrainingSettings.of(obs.metadata).clipped_tensors(obs.gradients)
    attacked = layout.qkv_names(0) + layout.qkv_names(1) + [layout.word_embedding_name]
    values = {layout.qkv_names(0)[2], layout.qkv_names(1)[2], layout.word_embedding_name}
    assert values <= own and not set(attacked) <= own  # a mix: some at factors of their own, the rest at 1
    plain = textleak.capture_gradients(minilm3, texts, labels=labels).gradients.gradients
    factors = [float(obs.gradients[n].norm() / plain[n].norm()) for n in attacked]
    assert max(factors) / min(factors) > 1.5  # really different factors, none of them known
    assert res.details["certified"] and res.metrics["mean"]["exact_match"] == 1.0
    assert res.details["peeled"] == 3 and res.metrics["mean"]["label_accuracy"] == 1.0
    assert "sign rule" in res.assumed["labels"]


def test_a_capture_padded_to_a_fixed_length_is_recovered_exactly(wide):
    cap, res = _exact(wide, TEXTS, [0, 1, 1], TrainingStep(pad_to=20))
    assert cap.gradients.metadata["capture"]["padding"]["length"] == 20
    assert res.details["certified"] and res.metrics["mean"]["exact_match"] == 1.0


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_autocast_captures_are_recovered_exactly(minilm3, precision):
    cap, res = _exact(minilm3, ["the film was a delight", "a dull , tired story"], [1, 0],
                      TrainingStep(precision=precision))
    assert cap.gradients.metadata["capture"]["precision"] == precision
    assert res.details["certified"] and res.metrics["mean"]["exact_match"] == 1.0
    assert res.metrics["mean"]["label_accuracy"] == 1.0
    assert res.details["approximate_peels"] == 0  # found in the first round: nothing needed peeling (`Search.stalled`)


def test_in_reduced_precision_a_found_sentence_stops_scoring_low_but_certificates_are_unchanged(minilm3):
    # nothing peels off in fp16, so copies of a found sentence used to keep scoring low (the fp16 CoLA
    # batch-8 miss); once found, the search scores against what the found sentences leave
    from textleak.text.leaks import sequence_residuals
    from textleak.text.leaks.found import LEFT_FLOOR
    from textleak.text.leaks.precision import span_for

    texts = ["the film was a delight", "a dull , tired story", "it is what it is"]
    cap = textleak.capture_gradients(minilm3, texts, labels=[1, 0, 1], step=TrainingStep(precision="float16"))
    layout, truth = layout_for(minilm3.model), cap.reference.token_ids
    span = span_for(layout, cap.gradients.gradients, 1, TrainingSettings.of(cap.gradients.metadata),
                    sum(map(len, truth)))
    rest = span.without(layout, truth[0])

    def inputs(seq):
        ids = torch.tensor([seq])
        with torch.no_grad():
            return layout.layer_inputs(ids, torch.ones_like(ids), 1)[0, 1:-1]

    # the found sentence with a tail (what settling fell into): close to the found inputs, so close to the span
    copy, other = inputs(truth[0][:-1] + truth[2][-3:]), inputs(truth[1])
    n = len(truth[0]) - 2  # its copied tokens: near members before, far once it is found
    assert float(span.score(copy[:n]).max()) < 0.1 and float(rest.score(copy[:n]).min()) > 0.5
    # a sentence not found keeps its score within the floor's bound
    assert float(rest.score(other).max()) <= float(span.score(other).max()) / LEFT_FLOOR + 1e-6
    assert float(rest.score(other).max()) < 1e-2
    whole = sequence_residuals(layout, span, truth)  # certificates read the whole span, as before
    assert torch.allclose(sequence_residuals(layout, rest, truth), whole)
    assert all(span.certifies(float(r), len(t)) for r, t in zip(whole, truth))


def test_in_reduced_precision_an_approximate_peel_narrows_the_tokens_and_the_span(minilm3):
    # nothing subtracts exactly from an fp16 gradient (RT dev batch 8 stalled on near misses): a found
    # sentence's recomputed gradient, at its fitted share, still takes its tokens and inputs out
    from textleak.attacks.exact.peeling_rounded import RoundedPeeler
    from textleak.text.leaks import sequence_residuals

    texts = ["the film was a delight", "a dull , tired story", "it is what it is"]
    cap = textleak.capture_gradients(minilm3, texts, labels=[1, 0, 1], step=TrainingStep(precision="float16"))
    layout, truth = layout_for(minilm3.model), cap.reference.token_ids
    settings = TrainingSettings.of(cap.gradients.metadata)
    obs = Observation.from_file(cap.gradients, unknown=["labels"])
    peeler = RoundedPeeler(obs, layout, [len(t) for t in truth], settings)
    assert not peeler.working  # it certifies nothing
    rest = peeler.peel(truth[0])
    assert peeler.labels == [1] and rest.span1.rank == len(truth[1]) + len(truth[2])
    own = set(truth[0]) - set(truth[1]) - set(truth[2])
    assert own and not own & rest.allowed and set(truth[1]) | set(truth[2]) <= rest.allowed
    left = sequence_residuals(layout, rest.span1, truth)
    assert all(rest.span1.certifies(float(r), len(t)) for r, t in zip(left[1:], truth[1:]))
    assert not rest.span1.certifies(float(left[0]), len(truth[0]))  # the peeled sentence is out of the span
    assert peeler.peel(truth[0]) is None or len(peeler.sentences) == 2  # its length is no longer there


def test_a_train_mode_capture_is_refused_by_exact_and_auto_moves_on(wide):
    cap = textleak.capture_gradients(wide, TEXTS[:2], labels=[1, 0], step=TrainingStep(mode="train"))
    with pytest.raises(MissingKnowledgeError, match="train mode .*hidden_dropout_prob 0.1"):
        textleak.recover(gradients=cap.gradients, model=wide, attack="exact", progress=False)
    auto = ATTACKS.get("auto")()
    obs = Observation.from_file(cap.gradients)
    auto.preflight(obs, wide)  # another stage applies: auto runs that one
    assert [type(s).__name__ for s in auto.stages_for("text")][0] == "Exact"


def test_a_train_mode_step_is_read_off_the_embedding_gradients(wide):
    one = textleak.capture_gradients(wide, TEXTS[:1], labels=[1], step=TrainingStep(mode="train", clip=1e-3), seed=2)
    res = textleak.recover(gradients=one.gradients, model=wide, attack="auto", reference=one.reference,
                           unknown=["labels"], progress=False)
    assert res.method == "positions" and res.details["tried"][0]["attack"] == "exact"
    assert res.details["certified"] and res.metrics["mean"]["exact_match"] == 1.0
    assert res.metrics["mean"]["label_accuracy"] == 1.0

    two = textleak.capture_gradients(wide, TEXTS[:2], labels=[1, 0], step=TrainingStep(mode="train"), seed=3)
    res = textleak.recover(gradients=two.gradients, model=wide, attack="auto", reference=two.reference,
                           progress=False)
    assert res.method == "positions"  # kept even where uncertified: optimisation matches eval-mode gradients
    certain = res.details["certified_sentences"]
    truth = {tuple(t) for t in two.reference.token_ids}
    assert all(tuple(res.prediction["token_ids"][b]) in truth for b in certain)  # certain means right
    assert res.metrics["mean"]["rouge1"] > 0.5
    with pytest.raises(MissingKnowledgeError, match="dropout on"):  # eval mode: exact is the attack
        textleak.recover(gradients=textleak.capture_gradients(wide, TEXTS[:1], labels=[1]).gradients, model=wide,
                         attack="positions", progress=False)


def test_left_padding_is_recorded_and_recovered_exactly(wide):
    # BERT numbers positions from the row's start, so left-padded tokens stand shifted
    # (more in tests/test_padding.py)
    wide.tokenizer.padding_side = "left"
    try:
        cap = textleak.capture_gradients(wide, [TEXTS[0], TEXTS[2]], labels=[1, 0])
    finally:
        wide.tokenizer.padding_side = "right"
    assert cap.gradients.metadata["capture"]["padding"]["side"] == "left"
    assert cap.reference.texts == [TEXTS[0], TEXTS[2]]  # the reference reads each row's tokens where they are
    res = textleak.recover(gradients=cap.gradients, model=wide, attack="exact", reference=cap.reference,
                           progress=False, budget=5)
    assert res.details["certified"] and res.metrics["mean"]["exact_match"] == 1.0


def test_an_older_file_is_attacked_as_before_with_a_note(wide):
    cap = textleak.capture_gradients(wide, TEXTS[:2], labels=[1, 0])
    meta = json.loads(json.dumps(cap.gradients.metadata))
    meta["capture"] = {"source": "capture_gradients"}  # before the protocol was recorded
    old = textleak.GradientFile(cap.gradients.gradients, meta)
    assert TrainingSettings.of(meta).note().startswith("the capture does not record its training settings")
    res = textleak.recover(gradients=old, model=wide, attack="exact", reference=cap.reference, progress=False)
    assert res.metrics["mean"]["exact_match"] == 1.0 and "older file" in res.assumed["training"]


def test_capture_takes_the_training_switches(tiny_bert_wide, tmp_path, capsys):
    out = tmp_path / "g.pt"
    code = main(["capture", "--model", str(tiny_bert_wide), "--text", "the cat sat", "--task", "classify",
                 "--labels", "1", "--train-mode", "--clip", "0.5", "--clip-per-layer", "0.01", "--precision", "bf16",
                 "--pad-to", "12", "--out", str(out)])
    assert code == 0
    shared = textleak.load_gradients(out).metadata["capture"]
    assert shared["mode"] == "train" and shared["precision"] == "bfloat16"
    assert shared["clipping"]["max_norm"] == 0.5 and shared["padding"]["length"] == 12
    assert shared["clipping"]["per_layer"] == 0.01 and TrainingSettings.of({"capture": shared}).per_layer_norm == 0.01
    capsys.readouterr()
    for bad in (["--clip", "-1"], ["--clip", "nan"], ["--pad-to", "0"], ["--clip-per-layer", "0"]):  # refused as the arguments are parsed
        assert main(["capture", "--text", "x", *bad, "--out", str(tmp_path / "h.pt")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"textleak: error: argument {bad[0]}:") and err.count("\n") == 1
    assert not (tmp_path / "h.pt").exists()
