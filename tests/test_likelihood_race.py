"""`likelihood_race`: `likelihood_batch.race`, the batch search's starts (the strong rows placed on the whole J and on
the first layers' J) each climbed briefly, the least misfit kept and climbed on; on the tiny 128-wide classifier."""

from __future__ import annotations

import pytest

from conftest import make_wide_classifier
from test_likelihood_batch import _observation


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return make_wide_classifier(tmp_path_factory.mktemp("wide-bert-race"))


def test_race_is_checked_seconds_off_by_default():
    """`--option likelihood_batch.race=SECONDS` (and `race_margin`, nats): numbers >= 0, alone and as `auto`'s stage;
    0 (one start) by default."""
    from textleak.attacks.likelihood_batch import BatchLikelihoodSearch
    from textleak.errors import InputError
    from textleak.validate import attack_instance

    assert BatchLikelihoodSearch().race == 0
    assert attack_instance("likelihood_batch", {"race": 40}, 0).race == 40
    assert attack_instance("auto", {"likelihood_batch": {"race": 2.5}}, 0)
    for name, bad in [("race", -1), ("race", "fast"), ("race_margin", -5.0)]:
        with pytest.raises(InputError, match=name):
            attack_instance("likelihood_batch", {name: bad}, 0)


def test_race_climbs_each_start_and_goes_on_from_the_least_misfit(wide, monkeypatch):
    """Both starts (`place_layers` 0 and `early_layers`) climbed in turn, each on its own short budget; the one of
    least batch misfit (the attack's objective, no truth) is kept and the search goes on from its guess and labels."""
    from textleak.attacks import likelihood_race
    from textleak.attacks.auto import HANDED_ON
    from textleak.attacks.likelihood_batch import BatchLikelihoodSearch
    from textleak.attacks.likelihood_state import misfit
    from textleak.core.budget import time_budget
    from textleak.validate import attack_instance

    obs, _ = _observation(wide, ["big cat ran", "a dog sat"], [1, 0], noise="noise:1e-6")
    search = attack_instance("likelihood_batch", {"race": 2, "early_layers": 1, "prior": "none", "rounds": 1,
                                                  "sweeps": 1, "strong": 3.0}, 0)
    raced, goes_on = [], []
    run, inner = BatchLikelihoodSearch.run, BatchLikelihoodSearch._run

    def spy_run(self, observation, target, **kw):
        out = run(self, observation, target, **kw)
        raced.append((self.place_layers, self.race, out))
        return out

    def spy_inner(self, observation, target):
        if self.initial_ids is not None:
            goes_on.append((self.place_layers, self.initial_ids.tolist(), list(self.initial_labels)))
        return inner(self, observation, target)

    monkeypatch.setattr(BatchLikelihoodSearch, "run", spy_run)
    monkeypatch.setattr(BatchLikelihoodSearch, "_run", spy_inner)
    with time_budget(30):
        out = run(search, obs, wide)
    race = out.details["race"]
    assert [s["place_layers"] for s in race["starts"]] == [0, 1] and [r[:2] for r in raced] == [(0, 0.0), (1, 0.0)]
    fits = [misfit(obs, wide, r[2].prediction["token_ids"], r[2].prediction["labels"]) for r in raced]
    assert [s["misfit"] for s in race["starts"]] == pytest.approx(fits)
    kept = min(range(2), key=fits.__getitem__)
    assert race["kept"] == kept and len(goes_on) == 1 and goes_on[0][0] == kept
    winner = raced[kept][2].prediction
    assert [row[:len(s)] for row, s in zip(goes_on[0][1], winner["token_ids"])] == winner["token_ids"]
    assert goes_on[0][2] == list(winner["labels"]) and len(out.prediction["token_ids"]) == 2
    assert "race" in HANDED_ON  # `auto` keeps the race's record where `likelihood` goes on from its guess
    assert likelihood_race._padded([[1, 2], [3]]).tolist() == [[1, 2], [3, 0]]


def test_race_margin_keeps_the_first_start_unless_another_leads_by_that_many_nats(wide):
    """`race_margin`: a later start is kept only where its misfit (nats) is below the best before it by more than the
    margin; a margin no lead can reach keeps the first start (`place_layers`' own), whatever the misfits."""
    from textleak.core.budget import time_budget
    from textleak.validate import attack_instance

    obs, _ = _observation(wide, ["big cat ran", "a dog sat"], [1, 0], noise="noise:1e-6")
    search = attack_instance("likelihood_batch", {"race": 1, "race_margin": 1e15, "early_layers": 1, "prior": "none",
                                                  "rounds": 1, "sweeps": 1, "strong": 3.0}, 0)
    with time_budget(20):
        race = search.run(obs, wide).details["race"]
    assert race["kept"] == 0 and [s["place_layers"] for s in race["starts"]] == [0, 1]
    assert all(s["nats"] > 0 for s in race["starts"])
