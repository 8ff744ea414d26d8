"""`exact-update` at batch > 1 narrows each position's candidates to where the update's embedding rows place
tokens (`attacks.update_batch_positions`): a least-squares split of the position rows over the word rows
places tokens; a position whose row the placed tokens' rows fill inside the rounding box is closed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import textleak
from conftest import make_wide_classifier
from textleak.attacks.exact.search import Search
from textleak.attacks.update import UpdateExact, midpoint_model
from textleak.attacks.update_batch_positions import batch_positions, ranked_fill, ranked_start
from textleak.attacks.update_repair import BoxRepair
from textleak.attacks.update_rounding import RoundingFits
from textleak.attacks.update_sim import update_facts
from textleak.text.layouts import layout_for
from textleak.text.leaks.tokens import embedding_token_set
from textleak.threat import Observation

# "the" at three positions of two sentences, [SEP] at three: positions 0, 2 and 6 hold only tokens standing once
TEXTS = ["the dog sat on the mat", "a bird sang", "the film was good"]
LR, STEPS = 1e-4, 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    wide = make_wide_classifier(tmp_path_factory.mktemp("wide-bert-batch-positions"))
    cap = textleak.capture_gradients(wide, TEXTS, labels=[1, 0, 1], defence=f"fedavg:{STEPS},{LR:g}")
    return wide, cap


def _occupants(ids, p):
    return {s[p] for s in ids if len(s) > p}


def test_every_true_token_stays_allowed_and_closed_positions_hold_their_occupants_alone(setup):
    wide, cap = setup
    grads, ids = cap.gradients.gradients, cap.reference.token_ids
    layout = layout_for(wide.model)
    pins, report = batch_positions(layout, grads, LR, STEPS, embedding_token_set(layout, grads).tolist(),
                                   [len(s) for s in ids])
    assert all(t in pins.allowed[p] for s in ids for p, t in enumerate(s))
    assert pins.closed == {0, 2, 6} and report["closed_positions"] == 3
    assert all(pins.allowed[p] == _occupants(ids, p) for p in pins.closed)
    assert all(_occupants(ids, p) >= {t} for t, where in pins.placed.items() for p in where)
    # a complete token (standing at a closed position only) leaves every other position's candidates
    assert all(t not in pins.allowed[q] for t in pins.complete for q in range(len(pins.allowed))
               if q not in pins.placed[t])


def test_the_search_reads_the_update_placements_where_the_rounding_is_wide(setup, monkeypatch):
    wide, cap = setup
    seen = {}
    run = Search.run

    def spy(self):
        seen["pins"] = self.cands.pins
        return run(self)

    monkeypatch.setattr(Search, "run", spy)
    small = textleak.capture_gradients(wide, TEXTS, labels=[1, 0, 1], defence=f"fedavg:{STEPS},1e-5")
    res = textleak.recover(gradients=small.gradients, model=wide, attack="exact-update", reference=small.reference,
                           unknown=["labels"], progress=False)
    grads, ids = small.gradients.gradients, small.reference.token_ids
    layout = layout_for(wide.model)
    pins, report = batch_positions(layout, grads, 1e-5, STEPS, embedding_token_set(layout, grads).tolist(),
                                   [len(s) for s in ids])
    assert res.details["batch_placement"] == report and report["closed_positions"] >= 1
    assert seen["pins"].allowed == pins.allowed
    # this model's rounding at lr 1e-4 is narrow: the search certifies alone there, unnarrowed
    res = textleak.recover(gradients=cap.gradients, model=wide, attack="exact-update", reference=cap.reference,
                           unknown=["labels"], progress=False)
    assert res.details["batch_placement"]["reason"].startswith("the rounding is narrow")
    observation = Observation.from_file(cap.gradients, unknown=["labels"])
    off = UpdateExact(batch_placement=False)
    assert off._batch_pins(observation, layout_for(wide.model), update_facts(observation.metadata)) is None
    assert off._pinned[1]["reason"] == "option batch_placement off"


def test_the_box_repair_tries_only_the_occupants_at_a_closed_position(setup):
    wide, cap = setup
    grads, ids = cap.gradients.gradients, cap.reference.token_ids
    observation = Observation.from_file(cap.gradients, unknown=["labels"])
    facts = update_facts(observation.metadata)
    layout = layout_for(wide.model)
    pins, _ = batch_positions(layout, grads, LR, STEPS, embedding_token_set(layout, grads).tolist(),
                              [len(s) for s in ids])
    moved = layout_for(midpoint_model(wide.model, grads, facts))
    fits = RoundingFits(layout, grads, LR, STEPS)
    span0 = UpdateExact()._reader(observation)(moved, grads, 0)
    vocab = torch.tensor(embedding_token_set(layout, grads).tolist())
    options = BoxRepair(moved, fits, span0, vocab, width=len(vocab), pins=pins).options(len(ids[0]))
    for p in pins.closed:
        assert set(options[p]) == _occupants(ids, p)
    wide_open = BoxRepair(moved, fits, span0, vocab, width=len(vocab)).options(len(ids[0]))
    assert all(len(wide_open[p]) == len(vocab) for p in pins.closed)


def test_nothing_is_placed_where_the_rounding_box_is_wider_than_the_position_rows(setup):
    wide, _ = setup
    cap = textleak.capture_gradients(wide, TEXTS, labels=[1, 0, 1], defence=f"fedavg:{STEPS},1e-7")
    grads, ids = cap.gradients.gradients, cap.reference.token_ids
    layout = layout_for(wide.model)
    pins, report = batch_positions(layout, grads, 1e-7, STEPS, embedding_token_set(layout, grads).tolist(),
                                   [len(s) for s in ids])
    assert pins is None and report["reason"].startswith("the rounding box is")


def test_each_position_ranks_its_allowed_tokens_by_their_weight_and_the_repair_tries_them_so(setup):
    # session 20: the layer-0 ranking left the true token out of the repair's 16 at 8 of 42 positions of SST-2
    # dev batch 0's long sentence (lr 1e-4, K 8); the embedding rows' least-squares weight at none
    wide, cap = setup
    grads, ids = cap.gradients.gradients, cap.reference.token_ids
    observation = Observation.from_file(cap.gradients, unknown=["labels"])
    layout = layout_for(wide.model)
    pins, _ = batch_positions(layout, grads, LR, STEPS, embedding_token_set(layout, grads).tolist(),
                              [len(s) for s in ids])
    assert all(set(pins.order[p]) == pins.allowed[p] for p in range(len(pins.allowed)))
    assert all(pins.order[p].index(t) < 4 for s in ids for p, t in enumerate(s))  # (3 at most measured)
    for t, where in pins.placed.items():  # placed tokens first
        assert all(pins.order[p].index(t) < len(pins.placed) for p in where)
    moved = layout_for(midpoint_model(wide.model, grads, update_facts(observation.metadata)))
    span0 = UpdateExact()._reader(observation)(moved, grads, 0)
    vocab = torch.tensor(embedding_token_set(layout, grads).tolist())
    options = BoxRepair(moved, RoundingFits(layout, grads, LR, STEPS), span0, vocab, width=3, pins=pins).options(
        len(ids[0]))
    assert options == [pins.order[p][:3] for p in range(len(ids[0]))]


def test_past_the_box_limit_the_ranking_alone_reaches_the_repairs_and_not_the_search(setup):
    wide, _ = setup
    cap = textleak.capture_gradients(wide, TEXTS, labels=[1, 0, 1], defence=f"fedavg:{STEPS},5e-6")  # box 0.71
    grads, ids = cap.gradients.gradients, cap.reference.token_ids
    layout = layout_for(wide.model)
    tokens = embedding_token_set(layout, grads).tolist()
    hard, report = batch_positions(layout, grads, 5e-6, STEPS, tokens, [len(s) for s in ids])
    assert hard is None and report["reason"].startswith("the rounding box is")
    soft, report = batch_positions(layout, grads, 5e-6, STEPS, tokens, [len(s) for s in ids], soft=True)
    assert soft.soft and report["ranking_only"] and not soft.placed and not soft.closed
    assert all(soft.allowed[p] == set(tokens) and sorted(soft.order[p]) == sorted(tokens) for p in range(len(soft.order)))
    assert set(soft.rows) == set(tokens) and all(abs(float(r.norm()) - 1) < 1e-9 for r in soft.rows.values())
    observation = Observation.from_file(cap.gradients, unknown=["labels"])
    attack = UpdateExact()
    attack._start = (layout, update_facts(observation.metadata))
    attack._fits = RoundingFits(layout, grads, 5e-6, STEPS)
    assert attack._pins(observation, None) is None and attack._pinned[0].soft  # the search reads nothing
    off = UpdateExact(row_ranking=False)
    off._start, off._fits = attack._start, attack._fits
    assert off._batch_pins(observation, layout, attack._start[1]) is None


def test_the_ranked_fill_gives_each_standing_slot_the_next_ranked_token():
    order = [[], [5, 6, 7], [8, 9], [10], [11, 12]]
    seqs = [[1, 0, 0, 2], [1, 0, 0, 0, 0, 2], [1, 2]]
    assert ranked_fill(seqs, order) == [[1, 6, 9, 2], [1, 5, 8, 10, 11, 2], [1, 2]]


def test_with_ranked_pins_no_repair_trial_leaves_a_moved_word_rows_token_out_of_the_batch():
    box = BoxRepair.__new__(BoxRepair)  # the descent alone: a sentence's "gradient" is its id sum, U = 0
    box.cover, box.trials, box.guard = {1, 2, 3, 4}, 0, None  # no [CLS] guard (option `repair_cls_guard` off)
    box.inplace = False  # the plain trial misfit (option `repair_inplace` off)
    box.U, box.half = torch.zeros(1, dtype=torch.double), torch.zeros(1, dtype=torch.double)
    box.gradient = lambda seq, label: torch.tensor([float(sum(seq))], dtype=torch.double)
    seqs, _ = box.begin([[1, 2, 3], [1, 4, 3]], [0, 0], float("inf"))
    assert not box.keep_best(seqs, 0, [[1, 1, 3]])  # lower misfit, but 2 would stand nowhere
    assert box.keep_best(seqs, 0, [[1, 1, 3], [1, 2, 1]]) and seqs[0] == [1, 2, 1]  # 3 still stands in slot 1
    box.cover = None
    assert box.keep_best(seqs, 0, [[1, 1, 1]])


def test_the_fill_replaces_the_search_guess_only_at_a_lower_box_misfit_with_its_own_labels():
    # session 20: taking the fill wherever it left fewer of the update's tokens out lost SST-2 dev batch 1 at
    # lr 1e-4 (the search had a sentence exact there, at a lower misfit)
    class Stub:  # a sentence's "gradient" is its id sum plus its label; the misfit its distance to `target`
        cover = {1, 2, 3, 4, 9}
        layout = SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(num_labels=2)))

        def gradient(self, seq, label):
            return torch.tensor([float(sum(seq) + label)], dtype=torch.double)

        def misfit(self, G):
            return float((G - self.target).abs().sum())

    box, order = Stub(), [[], [4], [3]]
    box.target = 14.0  # the search's [1, 2, 2, 9] (3 and 4 left out) fits; the fill [1, 4, 3, 9] (2 left out) does not
    pred = {"token_ids": [[1, 2, 2, 9]], "labels": [0]}
    assert ranked_start(box, pred, order)["kept"] == "search" and pred["token_ids"] == [[1, 2, 2, 9]]
    box.target = 18.0  # the fill fits, with label 1
    report = ranked_start(box, pred, order)
    assert report["kept"] == "filled" and pred == {"token_ids": [[1, 4, 3, 9]], "labels": [1]}
    assert report["filled"] == [0.0, 1] and report["search"] == [4.0, 2]


def test_past_sixteen_label_assignments_the_labels_come_from_single_flips_not_every_assignment():
    # batch 8 of two classes: the 256 assignments x 6 batches took 232 s of a 435 s run (session 22); one label
    # flipped at a time from the search's reaches the least misfit here in a few dozen calls
    from textleak.attacks.update_batch_positions import LABEL_CHOICES, least_labels as _labels

    truth = [1, 0, 1, 1, 0, 0, 1, 0]
    calls = []

    def misfit(batch, labels):
        calls.append(list(labels))
        return float(sum(a != b for a, b in zip(labels, truth)))

    assert 2 ** len(truth) > LABEL_CHOICES
    assert _labels([[0]] * 8, [[0] * 8], 2, misfit) == truth
    assert len(calls) < 40
    calls.clear()  # within the limit every assignment is still tried (batch 4, two classes)
    assert _labels([[0]] * 4, [[0] * 4], 2, lambda b, ys: misfit(b, list(ys) + truth[4:])) == truth[:4]
    assert len(calls) == 17
    calls.clear()  # a start nearer the truth is tried too; the least misfit of all starts is taken

    def bumpy(batch, labels):  # single flips from all-zero stall: the truth needs its 1s together
        calls.append(list(labels))
        return 0.0 if list(labels) == truth else 1.0 + (sum(labels) > 0)

    assert _labels([[0]] * 8, [[0] * 8], 2, bumpy) == [0] * 8
    assert _labels([[0]] * 8, [[0] * 8, truth], 2, bumpy) == truth


def test_strict_closure_keeps_a_token_the_box_hides_where_a_position_has_fewer_placed_tokens_than_sentences(
        setup, monkeypatch):
    # session 27 (RT dev batch 0 of 4, K 8, lr 1e-5): the box held a missing token's whole share, so positions closed
    # with 3 placed tokens for 4 sentences and shut "how", "may", "is" out; here a box that hides everything
    from textleak.attacks import update_batch_positions as module
    wide, cap = setup
    grads, ids = cap.gradients.gradients, cap.reference.token_ids
    layout = layout_for(wide.model)
    tokens, lengths = embedding_token_set(layout, grads).tolist(), [len(s) for s in ids]
    monkeypatch.setattr(module, "THRESHOLD", 1e9)
    loose, _ = batch_positions(layout, grads, LR, STEPS, tokens, lengths)
    assert any(t not in loose.allowed[p] for s in ids for p, t in enumerate(s))  # the old closure loses a true token
    pins, _ = batch_positions(layout, grads, LR, STEPS, tokens, lengths, strict=True)
    assert all(t in pins.allowed[p] for s in ids for p, t in enumerate(s))
    placed_at = {p: [t for t, where in pins.placed.items() if p in where] for p in range(len(pins.allowed))}
    assert pins.closed and all(p == 0 or len(placed_at[p]) == len(_occupants(ids, p)) for p in pins.closed)
    assert pins.closed < loose.closed and pins.complete <= loose.complete


def test_strict_closure_completes_a_placed_token_only_at_the_complete_weight(setup, monkeypatch):
    # session 27: "," placed at weight 0.503 at a closed position stood at the next position too
    from textleak.attacks import update_batch_positions as module
    wide, cap = setup
    grads, ids = cap.gradients.gradients, cap.reference.token_ids
    layout = layout_for(wide.model)
    tokens, lengths = embedding_token_set(layout, grads).tolist(), [len(s) for s in ids]
    old, _ = batch_positions(layout, grads, LR, STEPS, tokens, lengths)
    assert old.complete
    monkeypatch.setattr(module, "COMPLETE", 2.0)  # no weight reaches it: nothing complete, the same positions closed
    pins, _ = batch_positions(layout, grads, LR, STEPS, tokens, lengths, strict=True)
    assert pins.closed == old.closed and not pins.complete
    assert all(pins.allowed[p] >= old.allowed[p] for p in range(len(old.allowed)))
