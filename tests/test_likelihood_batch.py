"""`likelihood-batch`: strong rows, same-position swaps between sentences and the batch search, on
the tiny 128-wide classifier."""

from __future__ import annotations

import pytest
import torch

import textleak
from conftest import make_wide_classifier


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return make_wide_classifier(tmp_path_factory.mktemp("wide-bert-batch"))


def _observation(wide, texts, labels, noise="noise:1e-8"):
    from textleak.threat import Knowledge, Observation

    cap = textleak.capture_gradients(wide, texts, labels=labels, defence=noise)
    know = Knowledge.from_dict(cap.gradients.metadata["knowledge"]).without("labels")
    return Observation(cap.gradients.gradients, cap.gradients.metadata, know), cap.reference.token_ids


def test_strong_rows_find_a_token_at_its_position_and_leave_the_noise():
    from textleak.attacks.evidence import strong_rows

    torch.manual_seed(0)
    V, L, H, sigma = 50, 6, 16, 1e-2
    W, P = sigma * torch.randn(V, H, dtype=torch.float64), sigma * torch.randn(L, H, dtype=torch.float64)
    e = torch.randn(H, dtype=torch.float64)
    W[7] += e  # token 7 stands at position 3 (its row and the position's row share e)
    P[3] += e
    W[9] += 2e-3 * e / e.norm()  # a faint row (within the noise): not strong
    scores = W @ P.T
    rows = strong_rows(scores, W, P, sigma, 5.0)
    assert rows[0][:2] == (7, 3) and rows[0][2] > 5
    assert all(v != 9 for v, _, _ in rows) and len(rows) == 1


def test_gains_are_the_batch_misfit_change_and_a_swap_never_raises_it(wide):
    """Sentence i's J gain with the others fixed is -B^2 times the change of the batch misfit
    ||G - mean g||^2 (two such steps make a swap exact); a swap pass keeps only what lowers it."""
    from textleak.attacks.likelihood import misfit
    from textleak.attacks.likelihood_batch import BatchLikelihoodSearch
    from textleak.attacks.likelihood_state import _Batch, clip_norm
    from textleak.text.layouts import layout_for

    obs, truth = _observation(wide, ["the dog sat on the mat", "a bird sang"], [1, 1], noise="noise:1e-6")
    wrong = [list(s) for s in truth]
    wrong[0][2], wrong[1][2] = truth[1][2], truth[0][2]  # "dog" and "bird" in each other's sentence
    batch = _Batch(layout_for(wide.model), obs.gradients, wrong, [1, 1], clip_norm(obs.metadata))
    search = BatchLikelihoodSearch()
    trial = list(wrong[0])
    trial[2] = truth[0][2]
    gain = search._gain(batch, 0, [trial])[0]
    change = misfit(obs, wide, [trial, wrong[1]], [1, 1]) - misfit(obs, wide, wrong, [1, 1])
    # both sides are float32 differences of nearby misfits: they agree to ~1e-3 (2e-4 on one
    # machine, 1.0e-3 on another); a wrong factor or sign is off by 100% or more
    assert gain == pytest.approx(-4 * change, rel=5e-3)
    before = batch.misfit()
    inner = [range(1, len(s) - 1) for s in truth]
    search._swap_pair(batch, 0, 1, inner, fill=[], strong=set(truth[0] + truth[1]))
    assert batch.misfit() <= before and [len(s) for s in batch.seqs] == [len(s) for s in truth]


def test_the_batch_search_refuses_one_sentence_and_climbs_a_batch(wide):
    from textleak.attacks.likelihood import misfit
    from textleak.attacks.likelihood_batch import BatchLikelihoodSearch
    from textleak.core.budget import time_budget
    from textleak.errors import MissingKnowledgeError

    one, _ = _observation(wide, ["a bird sang"], [1])
    with pytest.raises(MissingKnowledgeError, match="one sentence"):
        BatchLikelihoodSearch().preflight(one, wide)
    obs, truth = _observation(wide, ["big cat ran", "a dog sat"], [1, 0])
    search = BatchLikelihoodSearch(prior="none", rounds=2, sweeps=2, strong=3.0)
    with time_budget(30):
        out = search.run(obs, wide)
    pred = out.prediction
    start = [[s[0]] + [wide.tokenizer.convert_tokens_to_ids(".")] * (len(s) - 2) + [s[-1]] for s in truth]
    assert [len(s) for s in pred["token_ids"]] == [len(s) for s in truth]
    assert misfit(obs, wide, pred["token_ids"], pred["labels"]) < misfit(obs, wide, start, pred["labels"])
    assert sorted(pred["labels"]) == [0, 1] and not out.details["certified"]
    assert out.details["cpu_seconds"] > 0 and len(out.details["changes_per_round"]) >= 1


def test_a_batch_started_past_its_deadline_keeps_a_guess_instead_of_failing(wide):
    # auto hands likelihood_batch whatever exact-noisy left: at SST-2 batch 4, noise 1e-10, nothing
    # ("a time budget must be a positive number of seconds, got 0.0" ended the unit)
    import time

    from textleak.attacks.likelihood_batch import BatchLikelihoodSearch
    from textleak.core.budget import time_budget

    obs, truth = _observation(wide, ["big cat ran", "a dog sat"], [1, 0])
    with time_budget(0.01):
        time.sleep(0.02)
        out = BatchLikelihoodSearch(prior="none", rounds=2, sweeps=2, strong=3.0).run(obs, wide)
    assert [len(s) for s in out.prediction["token_ids"]] == [len(s) for s in truth]
    assert not out.details["certified"]



def test_a_block_swap_moves_two_neighbours_that_one_position_swaps_cannot():
    """`block` 2: two neighbouring tokens of two sentences, each pair in the other's sentence, where
    only a whole sentence scores (so no single-position swap raises the objective): one exchange
    of the span puts both back; `block` 1 (the old behaviour) leaves them."""
    from textleak.attacks.likelihood_batch import BatchLikelihoodSearch

    truth = [[0, 5, 6, 7, 8, 1], [0, 15, 16, 17, 18, 1]]

    class Whole(BatchLikelihoodSearch):
        @staticmethod
        def _gain(batch, i, trials):
            def score(seq):
                return 10.0 * (list(seq) == truth[i])
            return [score(t) - score(batch.seqs[i]) for t in trials]

    class Stub:
        def __init__(self, seqs):
            self.seqs, self.labels = [list(s) for s in seqs], [1, 1]

        def set(self, i, seq, label):
            self.seqs[i], self.labels[i] = list(seq), label

    wrong = [[0, 5, 16, 17, 8, 1], [0, 15, 6, 7, 18, 1]]
    inner = [range(1, 5), range(1, 5)]
    for block, fixed in ((1, False), (2, True)):
        batch = Stub(wrong)
        kept = Whole(block=block, swaps=20)._swap_pair(batch, 0, 1, inner, fill=[], strong=set())
        assert (batch.seqs == truth) is fixed and kept == int(fixed)


def test_the_batch_search_climbs_with_context_candidates_and_blocks(wide, monkeypatch):
    """`context` > 0: each sentence's climb takes the masked-LM candidates (sweeps, `blocks`, `deep`) as at
    batch 1 (before session 25 the batch search built none, whatever `context` said)."""
    import textleak.text.masked_prior as mp
    from test_likelihood_context import _Ranked

    from textleak.attacks.likelihood_batch import BatchLikelihoodSearch
    from textleak.core.budget import time_budget

    obs, truth = _observation(wide, ["big cat ran", "a dog sat"], [1, 0])
    class Head(_Ranked):  # counts the masked-LM calls
        def log_probs(self, seq, groups):
            self.calls.append(groups)
            return super().log_probs(seq, groups)

    head = Head({p: truth[0][p:p + 1] for p in range(5)}, wide.model.get_input_embeddings().num_embeddings)
    monkeypatch.setattr(mp, "context_head", lambda target: (head, ""))
    with time_budget(30):
        out = BatchLikelihoodSearch(prior="none", rounds=1, sweeps=2, strong=3.0, context=2).run(obs, wide)
    assert out.details["context"]["used"] and head.calls


def test_pinned_tokens_stay_at_their_positions(wide):
    """`pin`: a hypothesis that moves a pinned token scores -inf (`_Guess.pins`), so no sweep or move
    takes it; the batch search ends with every placed strong token at its row position."""
    from textleak.attacks.likelihood_batch import BatchLikelihoodSearch
    from textleak.attacks.likelihood_state import _Batch, _Guess, clip_norm
    from textleak.core.budget import time_budget
    from textleak.text.layouts import layout_for

    obs, truth = _observation(wide, ["the dog sat on the mat", "a bird sang"], [1, 1], noise="noise:1e-6")
    batch = _Batch(layout_for(wide.model), obs.gradients, truth, [1, 1], clip_norm(obs.metadata))
    batch.pins = [{2: truth[0][2]}, {}]
    g = _Guess(batch, 0)
    moved = list(truth[0])
    moved[2], moved[3] = moved[3], moved[2]
    J, _ = g.score([truth[0], moved])
    assert J[1] == -float("inf") and float(J[0]) == pytest.approx(g.best, rel=1e-4) and g.substitute(2, [truth[1][2], 20]) == 0
    with time_budget(30):  # the same batch: "a" is strong at position 1 and placed
        out = BatchLikelihoodSearch(prior="none", rounds=2, sweeps=2, strong=3.0, pin=True).run(obs, wide)
    pred = out.prediction["token_ids"]
    assert out.details["placed"] and all(any(s[c["position"]] == c["token"] for s in pred) for c in out.details["placed"])


def test_free_labels_score_each_hypothesis_at_its_likelier_label_and_the_counts_go_where_they_fit(wide):
    """`relabel`: a binary classifier's gradient at the other label is r times the scored one (`_Guess._other`),
    so a guess scored at a wrong label reads the J of its right one and takes that label; `_Batch.assign` puts
    the counts ([0, 1], in order) where the batch likelihood prefers them ([1, 0], the truth)."""
    from textleak.attacks.likelihood_batch import BatchLikelihoodSearch
    from textleak.attacks.likelihood_state import _J, _Batch, _Guess, clip_norm
    from textleak.core.budget import time_budget
    from textleak.text.ghost import GhostScorer
    from textleak.text.layouts import layout_for

    obs, truth = _observation(wide, ["big cat ran", "a dog sat"], [1, 0], noise="noise:1e-6")
    layout = layout_for(wide.model)
    batch = _Batch(layout, obs.gradients, truth, [0, 0], clip_norm(obs.metadata))  # sentence 0's label wrong
    direct = _J(GhostScorer(layout, batch.target(0))(torch.tensor([truth[0]]), torch.tensor([1])), batch.clip)
    fixed = _Guess(batch, 0)
    batch.free = True
    free = _Guess(batch, 0)
    assert fixed.y == 0 and free.y == 1 and free.best == pytest.approx(float(direct[0]), rel=1e-4)
    assert free.best > fixed.best
    batch.free = False
    batch.set(1, truth[1], 1)  # the counts in order: [0, 1]
    assert batch.assign([0, 1]) and batch.labels == [1, 0]
    assert batch.misfit() == pytest.approx(_Batch(layout, obs.gradients, truth, [1, 0]).misfit(), rel=1e-6)
    with time_budget(10):
        out = BatchLikelihoodSearch(prior="none", rounds=2, sweeps=2, strong=3.0, relabel=True).run(obs, wide)
    assert out.details["relabel"] and out.details["early"] == 1 and sorted(out.prediction["labels"]) == [0, 1]


def test_early_rounds_weigh_the_embeddings_and_first_layers_alone(wide):
    """`early`: a guess with `keep` k scores J_w with the later layers and the head at weight 0; the batch
    search's first `early` rounds climb that, the rest J_w then J."""
    from textleak.attacks.likelihood_batch import BatchLikelihoodSearch
    from textleak.attacks.likelihood_state import _Batch, _Guess, clip_norm
    from textleak.core.budget import time_budget
    from textleak.text.layouts import layout_for

    obs, truth = _observation(wide, ["big cat ran", "a dog sat"], [1, 1], noise="noise:1e-6")
    batch = _Batch(layout_for(wide.model), obs.gradients, truth, [1, 1], clip_norm(obs.metadata))
    full, early = _Guess(batch, 0, True), _Guess(batch, 0, True, keep=0)
    assert bool((early.weights[1:] == 0).all()) and float(early.weights[0]) == pytest.approx(float(full.weights[0]))
    assert early.best != pytest.approx(full.best)
    with time_budget(10):
        out = BatchLikelihoodSearch(prior="none", rounds=2, sweeps=2, strong=3.0, early=1).run(obs, wide)
    assert out.details["early"] == 1 and not out.details["relabel"]  # one label: nothing to place


def test_placements_are_every_distinct_order_of_the_counts():
    """`placements`: the labels read as counts put on the sentences every distinct way (the multinomial count),
    the order read among them; past `most` only the order read."""
    from math import factorial

    from textleak.attacks.likelihood_state import placements

    assert placements([0, 0, 0, 1]) == [[0, 0, 0, 1], [0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0]]
    three = placements([2, 0, 1, 0])
    assert len(three) == factorial(4) // 2 and len({tuple(p) for p in three}) == len(three)
    assert all(sorted(p) == [0, 0, 1, 2] for p in three) and placements([1, 1]) == [[1, 1]]
    assert placements([0] * 8 + [1] * 8) == [[0] * 8 + [1] * 8]  # 12,870 placements: not tried


def test_the_start_is_built_under_every_placement_of_the_counts_and_the_likeliest_kept(wide):
    """`place_labels`: labels [1, 0] read as counts are assigned [0, 1] in order; "first" builds the start
    (fillers, strong rows) under both placements and keeps the one of least batch misfit, "rounds" also puts
    the counts where they fit after each round; `auto` hands the placed labels to `likelihood`."""
    from textleak.attacks.likelihood_batch import BatchLikelihoodSearch
    from textleak.core.budget import time_budget
    from textleak.errors import InputError

    obs, truth = _observation(wide, ["big cat ran", "a dog sat"], [1, 0], noise="noise:1e-6")
    with time_budget(10):
        out = BatchLikelihoodSearch(prior="none", rounds=1, sweeps=1, strong=3.0, place_labels="first").run(obs, wide)
    tried = out.details["placements"]
    assert [ys for ys, _ in tried] == [[0, 1], [1, 0]] and out.details["labels_placed"] == "first"
    assert out.prediction["labels"] == min(tried, key=lambda t: t[1])[0]
    with time_budget(10):
        order = BatchLikelihoodSearch(prior="none", rounds=1, sweeps=1, strong=3.0).run(obs, wide)
    assert order.prediction["labels"] == [0, 1] and order.details["placements"] == []
    assert order.details["labels_placed"] is None
    with time_budget(10):
        rounds = BatchLikelihoodSearch(prior="none", rounds=2, sweeps=1, strong=3.0, place_labels="rounds").run(obs, wide)
    assert rounds.details["labels_placed"] == "rounds" and sorted(rounds.prediction["labels"]) == [0, 1]
    with pytest.raises(InputError, match="place_labels"):
        BatchLikelihoodSearch(prior="none", place_labels="best").run(obs, wide)


def test_carry_moves_each_guess_with_its_label_and_keeps_the_likeliest_placement(wide):
    """`place_labels="carry"`: a slot losing a label hands its guess to the slot gaining it (cut or padded to
    that slot's length, the ends kept); after the early round every placement is tried that way and the one of
    least batch misfit kept; `auto` hands its labels on (`labels_placed`)."""
    from textleak.attacks.likelihood_batch import BatchLikelihoodSearch
    from textleak.attacks.likelihood_state import carried
    from textleak.core.budget import time_budget

    seqs = [[101, 5, 6, 7, 102], [101, 8, 102], [101, 4, 102]]
    assert carried(seqs, [1, 0, 0], [0, 1, 0], [5, 3, 3], 9, True) == [[101, 8, 9, 9, 102], [101, 5, 102], [101, 4, 102]]
    assert carried(seqs, [1, 0, 0], [1, 0, 0], [5, 3, 3], 9, True) == seqs
    assert carried([[5, 6, 7], [8]], [1, 0], [0, 1], [3, 1], 9, False) == [[8, 9, 9], [5]]
    obs, truth = _observation(wide, ["big cat ran", "a dog sat"], [1, 0], noise="noise:1e-6")
    with time_budget(60):  # ends on its own in ~1 s alone; 10 s ran out at load 9 (session 32)
        out = BatchLikelihoodSearch(prior="none", rounds=1, sweeps=1, strong=3.0, place_labels="carry").run(obs, wide)
    d = out.details
    assert d["labels_placed"] == "carry" and [ys for ys, _ in d["placements"]] == [[0, 1], [1, 0]]
    assert d["carried"] == [out.prediction["labels"]] == [min(d["placements"], key=lambda t: t[1])[0]]


def test_auto_hands_the_placed_labels_to_the_likelihood_continuation():
    """`auto`: the labels `likelihood_batch` placed (free labels, `place_labels` or `relocate`) start `likelihood`'s
    search."""
    from textleak.attacks.auto import Auto
    from textleak.attacks.base import AttackOutput
    from textleak.attacks.likelihood import LikelihoodSearch

    def guess(**details):
        return AttackOutput(prediction={"token_ids": [[1, 5, 2], [1, 6, 2]], "labels": [1, 0]}, method="likelihood_batch",
                            assumed={}, config={}, details=details)

    auto = Auto()
    placed = auto._adapted(LikelihoodSearch(prior="none"), None, guess(labels_placed="first"), [])
    assert placed.initial_labels == [1, 0] and placed.initial_ids.tolist() == [[1, 5, 2], [1, 6, 2]]
    assert auto._adapted(LikelihoodSearch(prior="none"), None, guess(labels_placed=None), []).initial_labels is None
    # labels carried with their sentences by `relocate` are handed on too
    relocated = auto._adapted(LikelihoodSearch(prior="none"), None, guess(labels_relocated=True), [])
    assert relocated.initial_labels == [1, 0]


def test_stand_ins_are_training_means_of_the_declared_length_until_each_sentence_is_climbed(wide, tmp_path, monkeypatch):
    """`stand_in`: a sentence not yet climbed in one of the first `early` + 1 rounds stands in the others' targets
    as the mean gradient of training sentences of its length (cut from longer ones where none has it)."""
    from textleak.attacks import likelihood_standin
    from textleak.attacks.likelihood_batch import BatchLikelihoodSearch
    from textleak.attacks.likelihood_state import _Batch, clip_norm
    from textleak.core.budget import time_budget
    from textleak.text.layouts import layout_for

    train = tmp_path / "train_tiny.tsv"
    train.write_text("sentence\tlabel\na dog sat\t1\nthe cat ran\t0\nbig bird sang loud\t1\n", encoding="utf-8")
    monkeypatch.setenv("TEXTLEAK_PRIOR_DATA", str(train))
    tok = wide.tokenizer
    obs, truth = _observation(wide, ["big cat ran", "a dog sat on"], [1, 0], noise="noise:1e-6")
    batch = _Batch(layout_for(wide.model), obs.gradients, truth, [1, 0], clip_norm(obs.metadata))
    means = likelihood_standin.stand_ins(batch, tok, [len(s) for s in truth], 2, True)
    ids = [tok(t)["input_ids"] for t in ("a dog sat", "the cat ran", "big bird sang loud")]
    assert len(ids[0]) == len(truth[0]) and len(ids[2]) == len(truth[1])  # 3 words -> 5 tokens, 4 -> 6
    want0 = [batch._own(x, 1) for x in ids[:2]]  # both of sentence 0's length, at its label
    for n in batch.names:
        assert torch.allclose(means[0][n], (want0[0][n] + want0[1][n]) / 2, atol=1e-7)
        assert torch.allclose(means[1][n], batch._own(ids[2], 0)[n], atol=1e-7)  # the one of length 6
    batch.stand = [None, means[1]]
    for n in batch.names:  # sentence 0's target subtracts sentence 1's stand-in, not its guess
        assert torch.allclose(batch.target(0)[n], 2 * obs.gradients[n].float() - means[1][n], atol=1e-6)
    seen = []

    def settle(self, batch, i, *args):
        seen.append((i, [s is not None for s in batch.stand] if batch.stand else None))
        return 1, False  # a change: every round runs

    monkeypatch.setattr(BatchLikelihoodSearch, "_settle", settle)
    with time_budget(30):
        out = BatchLikelihoodSearch(prior="none", rounds=3, strong=3.0, early=1, stand_in=2,
                                    exchanges=False).run(obs, wide)
    assert out.details["stand_in"] == [True, True]
    # rounds 0 (early) and 1 (the first on the whole J): sentence 1 stands in sentence 0's target; round 2: none
    assert seen == [(0, [False, True]), (1, [False, False])] * 2 + [(0, None), (1, None)]


def test_share_power_splits_a_round_by_the_sentences_lengths(wide, monkeypatch):
    """`share_power` p: a round's climbs get what is left in proportion to (inner tokens)^p among the sentences still
    to climb; 0 (the default) splits it evenly, as before."""
    import textleak.attacks.likelihood_batch as lb
    from textleak.core.budget import time_budget

    obs, truth = _observation(wide, ["the dog sat on the mat", "a bird sang"], [1, 1], noise="noise:1e-6")
    n0, n1 = len(truth[0]) - 2, len(truth[1]) - 2
    assert n0 != n1
    asked = []

    def spy(seconds):
        asked.append(seconds)
        return time_budget(seconds)

    class Instant(lb.BatchLikelihoodSearch):
        def _settle(self, batch, i, *args):
            return 0, True  # no climb: each slice is what the split asks for

    monkeypatch.setattr(lb, "time_budget", spy)
    for power, first in ((0.0, 0.5), (1.0, n0 / (n0 + n1)), (-1.0, (1 / n0) / (1 / n0 + 1 / n1))):
        asked.clear()
        with time_budget(100):
            Instant(prior="none", rounds=1, sweeps=1, strong=3.0, exchanges=False, share=1.0,
                    share_power=power).run(obs, wide)
        # the second sentence, the last of the round, takes all that is left (~ what the round began with)
        assert asked[0] / asked[1] == pytest.approx(first, rel=0.02)


def test_relocate_moves_a_sentence_into_the_slot_of_its_length(wide, monkeypatch):
    """`relocate`: two slots of different lengths holding each other's sentence (cut or padded to the wrong
    length) exchange their contents, each fitted to its new length, where the batch misfit falls; from the
    truth nothing moves. The batch search calls it after every round's climbs only when it is on."""
    from textleak.attacks.likelihood_batch import BatchLikelihoodSearch
    from textleak.attacks.likelihood_relocate import fitted
    from textleak.attacks.likelihood_state import _Batch, clip_norm
    from textleak.core.budget import time_budget
    from textleak.text.layouts import layout_for

    assert fitted([5, 6], 4, 0) == [[0, 0, 5, 6], [5, 0, 0, 6], [5, 6, 0, 0]]
    assert fitted([5, 6, 7], 2, 0) == [[6, 7], [5, 7], [5, 6]]
    obs, truth = _observation(wide, ["a bird sang", "the dog sat on the mat"], [1, 1])
    pad = wide.tokenizer.convert_tokens_to_ids(".")
    inner = [range(1, len(s) - 1) for s in truth]
    wrong = [[truth[0][0]] + truth[1][1:4] + [truth[0][-1]], truth[0][:-1] + [pad] * 3 + [truth[1][-1]]]
    batch = _Batch(layout_for(wide.model), obs.gradients, wrong, [1, 1], clip_norm(obs.metadata))
    before = batch.misfit()
    search = BatchLikelihoodSearch()
    assert search._relocate(batch, inner, pad) == 1
    assert batch.seqs[0] == truth[0] and batch.seqs[1][:4] == truth[1][:4] and batch.misfit() < before
    batch = _Batch(layout_for(wide.model), obs.gradients, truth, [1, 1], clip_norm(obs.metadata))
    assert search._relocate(batch, inner, pad) == 0 and batch.seqs == truth
    calls = []
    monkeypatch.setattr(BatchLikelihoodSearch, "_settle", lambda self, batch, i, *args: (1, False))
    monkeypatch.setattr(BatchLikelihoodSearch, "_relocate", lambda self, *args: calls.append(1) or 0)
    for on in (False, True):
        with time_budget(30):
            out = BatchLikelihoodSearch(prior="none", rounds=2, strong=3.0, exchanges=False, relocate=on).run(obs, wide)
        assert len(calls) == 2 * on and out.details["relocated"] == 0


def test_relocate_carries_labels_read_as_counts_with_their_sentences(wide):
    """With `labels_move` (labels read as counts), two slots of different labels and lengths holding each other's
    sentence at the sentence's own label exchange contents and labels together; labels known, they stay."""
    from textleak.attacks.likelihood_batch import BatchLikelihoodSearch
    from textleak.attacks.likelihood_state import _Batch, clip_norm
    from textleak.text.layouts import layout_for

    obs, truth = _observation(wide, ["a bird sang", "the dog sat on the mat"], [1, 0])
    pad = wide.tokenizer.convert_tokens_to_ids(".")
    inner = [range(1, len(s) - 1) for s in truth]
    wrong = [[truth[0][0]] + truth[1][1:4] + [truth[0][-1]], truth[0][:-1] + [pad] * 3 + [truth[1][-1]]]
    for move in (True, False):
        batch = _Batch(layout_for(wide.model), obs.gradients, wrong, [0, 1], clip_norm(obs.metadata))
        before = batch.misfit()
        BatchLikelihoodSearch()._relocate(batch, inner, pad, labels_move=move)
        assert (batch.labels == [1, 0]) is move
        if move:  # each sentence in the slot of its length at its label (slot 0's last token fits slot 1's pads)
            assert batch.seqs[0][:3] == truth[0][:3] and batch.seqs[1][:4] == truth[1][:4] and batch.misfit() < before


def test_relocate_last_moves_once_after_the_last_round_past_the_stage_deadline(wide, monkeypatch):
    """`relocate="last"`: no move after the early rounds, one pass after the last round's climbs, and that pass
    tries every pair of slots of different lengths though the last climb spent the stage's own budget (only the
    enclosing deadline stops it); a value it does not know is refused."""
    from textleak.attacks import likelihood_batch as lb
    from textleak.core.budget import current, time_budget
    from textleak.errors import InputError

    obs, _ = _observation(wide, ["a bird sang", "the dog sat on the mat", "the cat"], [1, 1, 1])
    events = []

    def spent(self, batch, i, *args):  # each climb takes its whole slice, as a climb that does not settle
        while not current().expired():
            pass
        events.append("climb")
        return 1, False

    def tried(self, batch, a, b, *args):
        events.append("pair")
        return float("inf")  # never kept: every pair is tried

    monkeypatch.setattr(lb.BatchLikelihoodSearch, "_settle", spent)
    monkeypatch.setattr(lb.BatchLikelihoodSearch, "_exchanged", tried)
    with time_budget(10.0):  # the climbs spend the stage's 1 s; the move and its record have the 9 s left (at load
        # ~11 the 3 s it had did not always reach the third pair, session 35)
        out = lb.BatchLikelihoodSearch(prior="none", rounds=2, strong=3.0, exchanges=False, share=0.1,
                                       relocate="last").run(obs, wide)
    assert events == ["climb"] * 6 + ["pair"] * 3 and out.details["relocated"] == 0
    with pytest.raises(InputError):
        with time_budget(3.0):
            lb.BatchLikelihoodSearch(prior="none", rounds=1, strong=3.0, relocate="first").run(obs, wide)


def test_relocate_fill_offers_each_slot_its_fillers(wide, monkeypatch):
    """`relocate_fill`: each slot of a pair is offered, besides the other's contents fitted to its length, every
    filler in all its inner positions (a slot giving its sentence away need not take the other's fragments), the
    likeliest kept: the move still lands the sentence in the slot of its length, at a misfit no higher than
    without the fillers. The batch search passes its fillers only with the option on."""
    from textleak.attacks.evidence import filler_ids
    from textleak.attacks.likelihood import LikelihoodSearch
    from textleak.attacks.likelihood_batch import BatchLikelihoodSearch
    from textleak.attacks.likelihood_state import _Batch, clip_norm
    from textleak.text.layouts import layout_for

    obs, truth = _observation(wide, ["a bird sang", "the dog sat on the mat"], [1, 1])
    tok = wide.tokenizer
    fill = filler_ids(tok)
    inner = [range(1, len(s) - 1) for s in truth]
    junk = tok.convert_tokens_to_ids(["happy", "sad", "good"])
    wrong = [[truth[0][0]] + junk + [truth[0][-1]], truth[0][:-1] + [fill[0]] * 3 + [truth[1][-1]]]
    seeded, after = [], {}
    seed = LikelihoodSearch._seed
    monkeypatch.setattr(BatchLikelihoodSearch, "_seed", staticmethod(lambda batch, i, options: seeded.append(options)
                                                                    or seed(batch, i, options)))
    for fillers in ((), tuple(fill)):
        seeded.clear()
        batch = _Batch(layout_for(wide.model), obs.gradients, wrong, [1, 1], clip_norm(obs.metadata))
        assert BatchLikelihoodSearch()._relocate(batch, inner, fill[0], fillers=fillers) == 1
        assert batch.seqs[0] == truth[0]
        after[fillers] = batch.misfit()
        for i, options in zip((0, 1), seeded):  # slot 0 then slot 1; the fillers last, one option each
            tail = options[len(options) - len(fillers):] if fillers else []
            assert tail == [[truth[i][0]] + [f] * len(inner[i]) + [truth[i][-1]] for f in fillers]
    assert after[tuple(fill)] <= after[()]
    calls = []
    search = BatchLikelihoodSearch(relocate_fill=True)
    monkeypatch.setattr(search, "_relocate", lambda batch, inner, pad, counted, stop, fillers: calls.append(fillers))
    monkeypatch.setattr(search, "_pin", lambda *args: None)
    search._relocated(batch, inner, fill, False, [])
    assert calls == [tuple(fill)]


def test_option_values_are_checked_before_any_work_alone_and_as_autos_stage():
    """`validate.attack_instance` (`textleak recover --option`): `relocate` takes true, false or "last" (its default
    is the string "last", so a bool must still pass), a true/false option takes nothing else, a count only an
    integer, and `auto`'s stage options are checked as the stage's own, named by the stage."""
    from textleak.errors import InputError
    from textleak.validate import attack_instance
    for value in (True, False, "last"):
        assert attack_instance("likelihood_batch", {"relocate": value}, 0).relocate == value
        assert attack_instance("auto", {"likelihood_batch": {"relocate": value}}, 0)
    bad = [("likelihood_batch", {"relocate": "lst"}, "relocate"),
           ("likelihood_batch", {"relocate_fill": "yes"}, "relocate_fill must be true or false"),
           ("auto", {"likelihood_batch": {"relocate_fill": "yes"}}, "likelihood_batch.relocate_fill"),
           ("auto", {"likelihood_batch": {"relocate": "lst"}}, "relocate"),
           ("exact-update", {"repair_cls_guard": "x"}, "true or false or auto"),
           ("auto", {"likelihood_batch": {"rounds": "x"}}, "likelihood_batch.rounds must be an integer"),
           ("likelihood", {"context": 2.5}, "context must be an integer")]
    for name, options, message in bad:
        with pytest.raises(InputError, match=message):
            attack_instance(name, options, 0)
