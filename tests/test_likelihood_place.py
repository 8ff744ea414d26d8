"""`likelihood_place`: the batch search's start, the strong rows placed on the whole J or (`place_layers`) on J of
the embeddings and the first layers alone, on the tiny 128-wide classifier."""

from __future__ import annotations

import pytest

from conftest import make_wide_classifier
from test_likelihood_batch import _observation


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return make_wide_classifier(tmp_path_factory.mktemp("wide-bert-place"))


def _wrong_batch(wide):
    from textleak.attacks.likelihood_state import _Batch, clip_norm
    from textleak.text.layouts import layout_for

    obs, truth = _observation(wide, ["the dog sat on the mat", "a bird sang"], [1, 1], noise="noise:1e-6")
    wrong = [list(s) for s in truth]
    wrong[0][2], wrong[1][2] = truth[1][2], truth[0][2]  # "dog" and "bird" in each other's sentence
    return obs, truth, _Batch(layout_for(wide.model), obs.gradients, wrong, [1, 1], clip_norm(obs.metadata))


def test_place_layers_scores_a_placement_on_the_first_layers_objective(wide, monkeypatch):
    """`place_layers` 0: a row's gain is the whole J's (`_gain`, the batch likelihood's change); N > 0: J of the
    embeddings and the first N layers alone (`_Guess(..., keep=N)`), a different number, and `_place` scores every
    row's placement so."""
    from textleak.attacks import likelihood_place
    from textleak.attacks.likelihood_batch import BatchLikelihoodSearch
    from textleak.attacks.likelihood_state import _Guess

    obs, truth, batch = _wrong_batch(wide)
    trial = list(batch.seqs[0])
    trial[2] = truth[0][2]
    full = BatchLikelihoodSearch()._place_gain(batch, 0, trial)
    assert full == pytest.approx(BatchLikelihoodSearch()._gain(batch, 0, [trial])[0])
    early = BatchLikelihoodSearch(place_layers=1)._place_gain(batch, 0, trial)
    guess = _Guess(batch, 0, keep=1)
    assert early == pytest.approx(float(guess.score([trial])[0][0]) - guess.best)
    assert early != pytest.approx(full, rel=1e-3)

    keeps = []

    def spy(batch, i, *args, keep=None, **kwargs):
        keeps.append(keep)
        return _Guess(batch, i, *args, keep=keep, **kwargs)

    monkeypatch.setattr(likelihood_place, "_Guess", spy)
    rows = [(truth[0][2], 2, 9.0), (truth[1][1], 1, 8.0)]
    inner = [range(1, len(s) - 1) for s in truth]
    BatchLikelihoodSearch()._place(batch, rows, inner, [truth[0][1]])
    assert keeps == []
    BatchLikelihoodSearch(place_layers=1)._place(batch, rows, inner, [truth[0][1]])
    assert keeps and set(keeps) == {1}  # one guess per row and sentence tried, each on the first layer's J


def test_place_layers_is_a_checked_count_and_the_search_runs_with_it(wide):
    """`--option likelihood_batch.place_layers=N`: a count >= 0, alone and as `auto`'s stage; the search runs from
    the start it places."""
    from textleak.core.budget import time_budget
    from textleak.errors import InputError
    from textleak.validate import attack_instance

    assert attack_instance("likelihood_batch", {"place_layers": 4}, 0).place_layers == 4
    assert attack_instance("auto", {"likelihood_batch": {"place_layers": 4}}, 0)
    for options, message in [({"place_layers": -1}, "place_layers"), ({"place_layers": 2.5}, "integer")]:
        with pytest.raises(InputError, match=message):
            attack_instance("likelihood_batch", options, 0)
    obs, _ = _observation(wide, ["big cat ran", "a dog sat"], [1, 1], noise="noise:1e-6")
    search = attack_instance("likelihood_batch", {"place_layers": 1, "prior": "none", "rounds": 1, "sweeps": 1,
                                                  "strong": 3.0}, 0)
    with time_budget(10):
        out = search.run(obs, wide)
    assert len(out.prediction["token_ids"]) == 2 and isinstance(out.details["placed"], list)
