"""`likelihood.runs` / `likelihood_batch.runs`: whole runs of a guess rewritten by the bigram (and the masked LM)
between their fixed neighbours, scored by the search's objective, kept only where it rises (`likelihood_runs`; s37:
at SST-2 dev batch 0's batch-4 end states whole true runs pay where their tokens alone do not)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_wide_classifier
from test_likelihood_batch import _observation
from textleak.text.layouts import layout_for


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A random 2-layer BERT classifier 128 wide (`conftest.make_wide_classifier`)."""
    return make_wide_classifier(tmp_path_factory.mktemp("wide-bert-runs"))


class _Chain:
    """A stand-in bigram (`evidence.PriorCandidates`' interface): after token v the likeliest next is `succ[v]`,
    then v + 1, v + 2, ...; the right neighbour adds nothing."""

    def __init__(self, vocab: int, succ: dict[int, int]):
        self.vocab, self.succ, self.banned = vocab, succ, torch.arange(vocab) < 5

    def _log_next(self, v: int) -> torch.Tensor:
        s = torch.full((self.vocab,), -20.0, dtype=torch.float64)
        for k, w in enumerate(range(v + 1, min(v + 4, self.vocab))):
            s[w] = -3.0 - k
        if v in self.succ:
            s[self.succ[v]] = -0.1
        return s

    def _log_prev(self, w: int) -> torch.Tensor:
        return torch.zeros(self.vocab, dtype=torch.float64)


def test_bigram_runs_follow_the_chain_between_the_neighbours():
    from textleak.attacks.likelihood_runs import bigram_runs

    prior = _Chain(40, {9: 20, 20: 21, 21: 22})
    runs = bigram_runs(prior, 9, 30, 3, beam=4, expand=3)
    assert runs[0] == [20, 21, 22] and len(runs) == 4 and all(len(r) == 3 for r in runs)
    assert all(t >= 5 for r in runs for t in r)  # banned (special) tokens never proposed


def test_run_move_takes_the_run_that_raises_the_objective_and_nothing_from_the_truth(wide):
    """A guess with a wrong run of three tokens against the gradient of the truth: the bigram names the true run,
    the move puts it in whole (the objective rises); from the truth no proposal beats it."""
    from textleak.attacks.likelihood_runs import RunMove
    from textleak.attacks.likelihood_state import _Batch, _Guess, _gradient

    layout = layout_for(wide.model)
    V = layout.word_embeddings.num_embeddings
    trained = [n for n, p in wide.model.named_parameters() if p.requires_grad]
    truth = [2, 9, 8, 7, 10, 12, 3]
    shared = _gradient(layout, truth, 0, trained)  # the observed gradient: the true sentence alone
    prior = _Chain(V, {9: 8, 8: 7, 7: 10})
    wrong = [2, 9, 20, 21, 22, 12, 3]
    guess = _Guess(_Batch(layout, shared, [wrong], [0]), 0)
    support = [math.inf, 5.0, -1.0, -1.0, -1.0, 5.0, math.inf]  # the wrong run least supported
    mover = RunMove(widths=(3,), beam=4, expand=3)
    moved = mover(guess, range(1, 6), support, prior, None, layout.word_embedding_name)
    assert moved is not None and moved[0] == truth and moved[1] > guess.best
    assert mover.last["taken"] == [2, 3, "bigram"] and mover.last["windows"][0] == [2, 3]
    # from the same guess the windows tried (the run and the whole inner sentence) are not tried again
    assert mover.windows(guess, range(1, 6), support) == [(1, 3)]
    at_truth = _Guess(_Batch(layout, shared, [truth], [0]), 0)
    assert RunMove(widths=(3,), beam=4, expand=3)(at_truth, range(1, 6), support, prior, None,
                                                  layout.word_embedding_name) is None


def test_the_batch_search_tries_runs_after_its_early_rounds_and_records_them(wide, monkeypatch):
    """`likelihood_batch.runs`: each climb on J_w of every layer (not the early rounds') starts with the move, and
    the result records its calls; off (0) it is never called and nothing is recorded."""
    from textleak.attacks.likelihood_batch import BatchLikelihoodSearch
    from textleak.attacks.likelihood_runs import RunMove
    from textleak.core.budget import time_budget

    obs, _ = _observation(wide, ["a bird sang", "the dog sat on the mat"], [1, 1])
    calls = []

    def fake(self, guess, inner, support, prior, context, word):
        calls.append((len(guess.x), guess.weighted))
        self.last = {"windows": [], "scored": 0, "taken": None}
        return None

    monkeypatch.setattr(RunMove, "__call__", fake)

    def run(runs, rounds=2):
        calls.clear()
        with time_budget(60):
            return BatchLikelihoodSearch(prior="none", context=0, rounds=rounds, early=1, runs=runs,
                                         relocate=False, exchanges=False).run(obs, wide).details

    details = run(4)
    assert details["runs"]["tried"] == len(calls) > 0 and all(weighted for _, weighted in calls)
    assert sorted({n for n, _ in calls}) == [5, 8]  # both sentences, in the round after the early one
    assert run(4, rounds=1)["runs"]["tried"] == 0 and not calls  # the early round alone: never
    assert run(0)["runs"] is None and not calls


def test_runs_must_be_a_count_of_zero_or_more():
    """`--option likelihood_batch.runs=-1` is refused before any work (a negative count would read as off)."""
    from textleak.attacks.base import parse_options
    from textleak.errors import InputError
    from textleak.validate import attack_instance

    assert attack_instance("auto", parse_options(["likelihood_batch.runs=8"]), 0).likelihood_batch == {"runs": 8}
    for bad in ("-1", "2.5", "x"):
        with pytest.raises(InputError, match="runs"):
            attack_instance("auto", parse_options([f"likelihood_batch.runs={bad}"]), 0)
