"""`exact-update` at batch 1 places the sentence by its embedding rows (`attacks.update_positions`): each
word row of U is the sum of the position rows where its token stands, inside the client's rounding box."""

from __future__ import annotations

import pytest

import textleak
from conftest import make_wide_classifier
from textleak.attacks.update import UpdateExact
from textleak.attacks.update_positions import Placement, RowPlacer, placement_for
from textleak.attacks.update_sim import update_facts
from textleak.text.layouts import layout_for
from textleak.text.leaks.tokens import embedding_token_set
from textleak.errors import MissingKnowledgeError
from textleak.threat import Observation

TEXT = "the dog sat on the mat under the log ."  # "the" three times: positions shared out by the split
LR, STEPS = 1e-5, 4


def _recover(wide, cap):
    return textleak.recover(gradients=cap.gradients, model=wide, attack="exact-update", reference=cap.reference,
                            unknown=["labels"], progress=False)


def _swapped(cap) -> tuple[list[int], list[int]]:
    """The true ids and the same with two words swapped (the replay refuses it)."""
    truth = list(cap.reference.token_ids[0])
    return truth, truth[:2] + truth[3:4] + truth[2:3] + truth[4:]


def _refuse(*_a, **_k):
    raise MissingKnowledgeError("no signal above the plateau")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    wide = make_wide_classifier(tmp_path_factory.mktemp("wide-bert-positions"))
    cap = textleak.capture_gradients(wide, [TEXT], labels=[1], defence=f"fedavg:{STEPS},{LR:g}")
    return wide, cap


def test_the_rows_place_a_sentence_with_a_repeated_word_first_among_the_candidates(setup):
    wide, cap = setup
    grads = cap.gradients.gradients
    layout = layout_for(wide.model)
    truth = list(cap.reference.token_ids[0])
    tokens = embedding_token_set(layout, grads).tolist()
    placement = RowPlacer(layout, grads, LR, STEPS, tokens, len(truth)).run()
    assert placement.candidates and placement.candidates[0] == truth
    assert placement.placed == len(set(truth)) - 1 and placement.left == truth.count(truth[1])


def test_a_single_sentence_is_certified_from_its_rows_without_the_span_search(setup, monkeypatch):
    wide, cap = setup

    def no_search(*_a, **_k):
        raise AssertionError("the span search ran")

    monkeypatch.setattr(UpdateExact, "_attempt", no_search)
    res = _recover(wide, cap)
    assert res.metrics["mean"]["exact_match"] == 1.0 and res.details["certified"]
    assert res.details["placement"]["certified_rank"] == 0
    assert res.metrics["mean"]["label_accuracy"] == 1.0


def test_an_uncertified_placement_hands_the_update_to_the_span_search(setup, monkeypatch):
    wide, _ = setup
    cap = textleak.capture_gradients(wide, [TEXT], labels=[1], defence=f"fedavg:{STEPS},1e-2")  # the search reads it
    truth, wrong = _swapped(cap)
    monkeypatch.setattr(RowPlacer, "run", lambda self: Placement(candidates=[wrong], placed=len(truth)))
    res = _recover(wide, cap)
    assert res.metrics["mean"]["exact_match"] == 1.0 and res.details["certified"]
    assert res.details["placement"]["candidates"] == 1 and "layer0_allowance" in res.details


def test_the_placement_applies_to_single_sentences_only(setup):
    wide, _ = setup
    cap = textleak.capture_gradients(wide, [TEXT, "a bird sang"], labels=[1, 0], defence=f"fedavg:{STEPS},{LR:g}")
    observation = Observation.from_file(cap.gradients, unknown=["labels"])
    placement = placement_for(UpdateExact(), observation, wide, update_facts(observation.metadata))
    assert placement.candidates == [] and placement.reason == "batch 1 only"
    off = placement_for(UpdateExact(placement=False), observation, wide, update_facts(observation.metadata))
    assert off.reason == "option placement off"


def test_an_undeclared_length_is_read_off_the_position_rows_that_moved(setup):
    wide, cap = setup
    observation = Observation.from_file(cap.gradients, unknown=["labels", "seq_lengths"])
    assert observation.knowledge.seq_lengths is None and observation.knowledge.batch_size == 1
    placement = placement_for(UpdateExact(), observation, wide, update_facts(observation.metadata))
    assert placement.candidates[0] == list(cap.reference.token_ids[0])


def test_rows_that_place_a_sentence_carry_an_update_whose_layer_0_shows_no_span(setup, monkeypatch):
    wide, cap = setup

    monkeypatch.setattr(UpdateExact, "_layer0", _refuse)
    res = _recover(wide, cap)
    assert res.metrics["mean"]["exact_match"] == 1.0 and res.details["certified"]
    truth, wrong = _swapped(cap)
    monkeypatch.setattr(RowPlacer, "run", lambda self: Placement(candidates=[wrong], placed=len(truth)))
    res = _recover(wide, cap)
    assert res.prediction["token_ids"] == [wrong] and not res.details["certified"]
    monkeypatch.setattr(RowPlacer, "run", lambda self: Placement(reason="nothing fits"))
    with pytest.raises(MissingKnowledgeError):
        UpdateExact().preflight(Observation.from_file(cap.gradients, unknown=["labels"]), wide)


def test_the_walk_over_single_position_tokens_stops_at_its_step_cap(monkeypatch):
    from textleak.attacks import update_positions

    placer = RowPlacer.__new__(RowPlacer)
    # 18 tokens free to take either of two positions each, then three that share two positions: no placement,
    # found only after every earlier choice is revisited (2^18 of them)
    options = {i: [2 * i, 2 * i + 1] for i in range(18)} | {i: [99, 100] for i in (18, 19, 20)}
    monkeypatch.setattr(update_positions, "NODES", 500)
    assert list(placer.singles(options, 8)) == [] and placer.nodes == 501
