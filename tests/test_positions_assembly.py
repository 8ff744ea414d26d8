"""The `positions` attack's assembly (issue #14): the span score runs each sentence once and
reads every span layer in one forward; the descent finds the batch where the spans are exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_attacks_text import _wide_model

import textleak
from textleak.attacks.positions.assembly import Assembly, PermuteHeads, PermuteWindow, Settle, SwapTails, _assign
from textleak.attacks.positions.score import SpanScore, span_basis
from textleak.capturing import TrainingStep
from textleak.core.budget import time_budget
from textleak.errors import InputError
from textleak.text.layouts import layout_for
from textleak.text.leaks import padded

TEXTS = ["the dog sat on the mat .", "a small bird sang", "big cat ran"]


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return _wide_model(tmp_path_factory.mktemp("wide-assembly"), "classify")


@pytest.fixture(scope="module")
def eval_capture(wide):
    """An eval-mode step: its spans are exact, so the true batch costs ~0."""
    return textleak.capture_gradients(wide, TEXTS, labels=[1, 0, 1])


def _score(wide, capture, layers=(1,)):
    layout, grads = layout_for(wide.model), capture.gradients.gradients
    truth = capture.reference.token_ids
    return SpanScore(layout, {k: span_basis(layout, grads, k, sum(map(len, truth))) for k in layers}), truth


def test_one_forward_reads_every_span_layer_and_each_sentence_runs_once(wide, eval_capture):
    score, truth = _score(wide, eval_capture, layers=(0, 1))
    layout = score.layout
    ids, mask = padded(truth)
    with torch.no_grad():
        seen = score.inputs(ids, mask)
        for k in (0, 1):
            assert torch.equal(seen[k], layout.layer_inputs(ids, mask, k))
    first = score.cost(truth + truth[:1])
    assert score.evaluated == len(truth)  # the repeat is run once
    assert torch.equal(score.cost(truth), first[:len(truth)]) and score.evaluated == len(truth)
    assert float(first.max()) < 1e-6  # eval mode: the true sentences lie in the spans
    wrong = [truth[1][:1] + truth[0][1:3] + truth[1][3:]]
    assert float(score.cost(wrong)[0]) > 100 * float(first.max()) + 1e-5


def test_the_descent_assembles_the_batch_from_each_positions_tokens(wide, eval_capture):
    score, truth = _score(wide, eval_capture)
    lengths = [len(s) for s in truth]
    allowed = [{s[i] for s in truth if len(s) > i} for i in range(max(lengths))]
    state = Assembly(score, allowed, lengths, torch.Generator().manual_seed(1))
    state.descend(6)
    assert state.seqs == truth
    assert not Settle(2).apply(state) and not SwapTails(0, 1).apply(state)  # nothing changed since: skipped
    assert state.total() < 1e-6

    grown = Assembly(score, allowed, lengths)
    grown.grow()  # the left-to-right first guess, then the descent
    assert [len(s) for s in grown.seqs] == lengths
    grown.descend(6)
    assert grown.seqs == truth


def test_the_descent_stops_when_the_budget_runs_out(wide, eval_capture):
    score, truth = _score(wide, eval_capture)
    lengths = [len(s) for s in truth]
    allowed = [{s[i] for s in truth if len(s) > i} for i in range(max(lengths))]
    with time_budget(1e-9) as limit:
        assert Assembly(score, allowed, lengths).descend(6) == 1
    assert limit.ran_out


def test_a_train_mode_batch_records_its_search(wide):
    cap = textleak.capture_gradients(wide, TEXTS[:2], labels=[1, 0], step=TrainingStep(mode="train"), seed=3)
    res = textleak.recover(gradients=cap.gradients, model=wide, attack="positions", reference=cap.reference,
                           progress=False, budget=60)
    assert res.details["sentences_scored"] > 0 and res.details["span_layers"] == [1]
    assert res.details["budget"]["seconds"] == 60 and 1 <= res.details["descents"] <= 3
    for bad in ({"seconds": 0}, {"shortlist": -1}, {"window": -1}):
        with pytest.raises(InputError, match=next(iter(bad))):
            textleak.recover(gradients=cap.gradients, model=wide, attack="positions", options=bad, progress=False)


class _Toy:
    """A toy score: a sentence (known by its length) costs its tokens differing from the true one
    of that length, or, with `heads` (first body token -> whose head it is), `heads[own][whose]`."""

    spans = {1: None}

    def __init__(self, truth, heads=None):
        self.truth, self.heads = {len(t): (b, t) for b, t in enumerate(truth)}, heads

    def cost(self, seqs):
        out = []
        for s in seqs:
            b, t = self.truth[len(s)]
            if self.heads is None:
                out.append(float(sum(x != y for x, y in zip(s, t))))
            else:
                whose = next(c for c, u in self.truth.values() if u[1] == s[1])
                out.append(self.heads[b][whose])
        return torch.tensor(out, dtype=torch.double)

    def local(self, seq, i, cands):
        return None


def test_heads_dealt_round_a_cycle_of_three_come_home_in_one_move():
    truth = [[0, 11, 12, 9], [0, 21, 22, 23, 9], [0, 31, 32, 33, 34, 9]]
    # a head costs 0 at home, 1 where the cycle put it, 5 in the third sentence: no swap of two helps
    score = _Toy(truth, heads=[[0, 5, 1], [1, 0, 5], [5, 1, 0]])
    state = Assembly(score, [set()] * 6, [len(t) for t in truth], ends=(0, 9))
    state.seqs = [[0, 31, 32, 9], [0, 11, 12, 23, 9], [0, 21, 22, 33, 34, 9]]  # heads (1..2) dealt round a cycle
    assert not SwapTails(0, 1, heads=True).apply(state) and not SwapTails(0, 2, heads=True).apply(state)
    assert PermuteHeads(2).apply(state) and state.seqs == truth


class _MiddleToy(_Toy):
    """A toy score: a sentence costs each token outside positions 2..3 that differs from the true
    one of its length, plus `mix[own][whose]` for the run at 2..3 (whose true run it is; 5 for a
    run that is no sentence's)."""

    def __init__(self, truth, mix):
        super().__init__(truth)
        self.mix = mix

    def cost(self, seqs):
        out = []
        for s in seqs:
            b, t = self.truth[len(s)]
            whose = next((c for c, u in self.truth.values() if u[2:4] == s[2:4]), None)
            run = 5 if whose is None else self.mix[b][whose]
            out.append(sum(x != y for i, (x, y) in enumerate(zip(s, t)) if i not in (2, 3)) + run)
        return torch.tensor(out, dtype=torch.double)


def test_middle_runs_dealt_round_a_cycle_of_three_come_home_by_a_window():
    truth = [[0, 11, 12, 13, 14, 9], [0, 21, 22, 23, 24, 25, 9], [0, 31, 32, 33, 34, 35, 36, 9]]
    # a run costs 0 at home, 1 where the cycle put it, 5 in the third sentence
    score = _MiddleToy(truth, mix=[[0, 5, 1], [1, 0, 5], [5, 1, 0]])
    allowed = [{s[i] for s in truth if len(s) > i} for i in range(8)]
    state = Assembly(score, allowed, [len(t) for t in truth], ends=(0, 9), window=2)
    wrong = [[0, 11, 32, 33, 14, 9], [0, 21, 12, 13, 24, 25, 9], [0, 31, 22, 23, 34, 35, 36, 9]]
    state.seqs = [list(s) for s in wrong]
    # neither the heads (the first tokens move too) nor a swap of two sentences' tails lowers the cost
    assert not any(PermuteHeads(k).apply(state) for k in range(1, 5))
    assert not any(SwapTails(b1, b2).apply(state) for b1, b2 in ((0, 1), (0, 2), (1, 2)))
    assert not any(move.apply(state) for move in state.moves()) and state.seqs == wrong
    assert [(m.a, m.b) for m in state.window_moves()][:2] == [(2, 4), (3, 5)]
    assert PermuteWindow(2, 4).apply(state) and state.seqs == truth
    for b, s in enumerate(wrong):
        state.set(b, s)  # a new version: the moves look again
    state.descend(3)  # the descent reaches it once the other moves stall
    assert state.seqs == truth
    assert Assembly(score, allowed, [len(t) for t in truth], ends=(0, 9), window=1).window_moves() == []


def test_settle_takes_every_placed_token_and_lets_frequent_ones_repeat():
    truth = [[0, 5, 9], [0, 5, 1, 9], [0, 7, 1, 2, 9]]
    allowed = [set(), {5, 7, 8}, {1, 2}, {2}, set()]
    # 7 placed at 1; 5 (a frequent word) stands there twice; 8 nowhere
    state = Assembly(_Toy(truth), allowed, [3, 4, 5], ends=(0, 9), required=[set(), {7}, set(), set(), set()],
                     once={7, 8})
    state.seqs = [[0, 8, 9], [0, 7, 1, 9], [0, 5, 1, 2, 9]]
    assert Settle(1).apply(state) and state.seqs == truth
    assert _assign(np.array([[0.0, 1.0], [0.0, 1.0]]), forced=[1]) in ({0: 0, 1: 1}, {0: 1, 1: 0})
    assert _assign(np.array([[0.0, 1.0], [0.0, 1.0]])) == {0: 0, 1: 0}  # a token may repeat
