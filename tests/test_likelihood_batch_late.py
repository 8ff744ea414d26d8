"""`likelihood-batch` late: what the final whole-sentence move did, kept in the result (also `auto`'s, whose guess
is the continuation's), and the masked-LM candidates in the last round alone (`late_context`); on the tiny
128-wide classifier."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from conftest import make_wide_classifier
from test_likelihood_batch import _observation


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return make_wide_classifier(tmp_path_factory.mktemp("wide-bert-batch-late"))


def test_relocate_last_records_the_exchanges_kept_and_the_misfit_before_and_after(wide, monkeypatch):
    """`relocate="last"` from two slots holding each other's sentence: the record says one exchange was kept and the
    batch misfit fell, and holds the sentences before and after; from the truth none is kept and the misfit stays;
    with `relocate` off there is no record."""
    import torch

    from textleak.attacks.likelihood_batch import BatchLikelihoodSearch
    from textleak.core.budget import time_budget

    obs, truth = _observation(wide, ["a bird sang", "the dog sat on the mat"], [1, 1])
    pad = wide.tokenizer.convert_tokens_to_ids(".")
    wrong = [[truth[0][0]] + truth[1][1:4] + [truth[0][-1]], truth[0][:-1] + [pad] * 3 + [truth[1][-1]]]
    monkeypatch.setattr(BatchLikelihoodSearch, "_settle", lambda self, batch, i, *args: (0, True))  # no climb

    def run(start, relocate="last"):
        ids = torch.tensor([s + [0] * (len(truth[1]) - len(s)) for s in start])
        with time_budget(30):
            return BatchLikelihoodSearch(prior="none", rounds=1, strong=99.0, exchanges=False, relocate=relocate,
                                         initial_ids=ids, initial_labels=[1, 1]).run(obs, wide).details

    moved = run(wrong)["relocate_last"]
    assert moved["kept"] == 1 and moved["misfit_after"] < moved["misfit_before"] and moved["labels"] == [1, 1]
    # the state before the move (for a probe to take up) and after it
    assert moved["seqs_before"] == wrong and moved["labels_before"] == [1, 1] and moved["seqs_after"][0] == truth[0]
    stayed = run(truth)["relocate_last"]
    assert stayed["kept"] == 0 and stayed["misfit_after"] == stayed["misfit_before"]
    assert run(wrong, relocate=False)["relocate_last"] is None


def test_auto_keeps_the_batch_stages_relocate_record_when_the_continuations_guess_is_chosen(monkeypatch):
    """`auto`'s result is the continuation's guess where that is likelier; the batch stage's `relocate_last` record
    goes with it (before, the result said nothing of the final move); a stage's own record is never overwritten."""
    from textleak.attacks import auto as auto_mod
    from textleak.attacks.base import AttackOutput

    class Stage:  # an uncertified guess with the given details
        modalities = ("text",)

        def __init__(self, name, details):
            self.name, self.details = name, details

        def run(self, observation, target, **kwargs):
            return AttackOutput(prediction={"token_ids": [[1, 2]], "labels": [0]}, method=self.name, assumed={},
                                config={}, details={"certified": False, **self.details})

    record = {"kept": 1, "misfit_before": 2.0, "misfit_after": 1.0, "labels": [0], "cpu_seconds": 0.1}
    monkeypatch.setattr(auto_mod, "_better", lambda observation, target, first, second: second)
    target = SimpleNamespace(modality="text")
    stages = [Stage("likelihood_batch", {"relocate_last": record}), Stage("likelihood", {})]
    out = auto_mod.Auto(stages=stages).run(None, target)
    assert out.method == "likelihood" and out.details["relocate_last"] == record
    own = {"kept": 0}
    stages = [Stage("likelihood_batch", {"relocate_last": record}), Stage("likelihood", {"relocate_last": own})]
    assert auto_mod.Auto(stages=stages).run(None, target).details["relocate_last"] == own


def test_late_context_takes_the_candidates_in_the_last_round_alone(wide, monkeypatch):
    """`late_context`: the masked-LM candidates are built (and their head prepared) though `context` is 0, and the
    climbs see them in the last round only; with `context` they are in every round; with neither, in none; with
    both, the rounds before the last take `context`'s k and the last the larger (it gave every round the larger)."""
    import textleak.text.masked_prior as mp
    from test_likelihood_context import _Ranked

    from textleak.attacks.likelihood_batch import BatchLikelihoodSearch
    from textleak.core.budget import time_budget

    obs, truth = _observation(wide, ["big cat ran", "a dog sat"], [1, 0])
    head = _Ranked({p: truth[0][p:p + 1] for p in range(5)}, wide.model.get_input_embeddings().num_embeddings)
    asked = []
    monkeypatch.setattr(mp, "context_head", lambda target: asked.append(1) or (head, ""))
    seen = []
    monkeypatch.setattr(BatchLikelihoodSearch, "_settle",
                        lambda self, batch, i, *args: seen.append(self._context and self._context.k) or (1, False))
    for options, rounds in (({"late_context": 2}, [None, None, 2]), ({"context": 2}, [2] * 3), ({}, [None] * 3),
                            ({"context": 1, "late_context": 3}, [1, 1, 3]),
                            ({"context": 3, "late_context": 2}, [3] * 3)):
        seen.clear(), asked.clear()
        search = BatchLikelihoodSearch(prior="none", rounds=3, strong=3.0, exchanges=False, relocate=False, **options)
        search.prepare(wide, obs)
        assert bool(asked) is bool(options)
        with time_budget(30):
            out = search.run(obs, wide)
        assert seen == [r for r in rounds for _ in range(2)] and out.details["context"]["used"] is bool(options)
