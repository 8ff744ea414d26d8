"""`beyond_rank`'s `search_stop` (#16, `beyond_rank_search.SearchStop`): past the limit the search ends once it
has found nothing new for `ratio` times the time its finds took, and the finish gets the rest of its share. On the
tiny BERT of `test_beyond_rank` (8 sentences, 55 tokens against a width of 32: the finish applies), with a fake
budget clock that only the search's rounds move (10 s a round; the first rounds each find the batch's next sentence)."""

from __future__ import annotations

import pytest
import torch

import textleak
from test_beyond_rank import FAST, LABELS, TEXTS, _model, _observation
from textleak.attacks import ATTACKS
from textleak.attacks.beyond_rank import SentenceSearch
from textleak.core import budget
from textleak.errors import InputError

ROUND = 10.0  # fake budget-clock seconds a search round takes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(the tiny BERT past the rank limit, its capture of TEXTS)."""
    torch.set_num_threads(1)
    model = _model(tmp_path_factory.mktemp("stop-bert"), "classify")
    return model, textleak.capture_gradients(model, TEXTS, labels=LABELS, seed=1)


def _run(tiny, monkeypatch, finds: int = 1, **options):
    """beyond_rank under a 100 s budget on the fake clock (the search's share: 50 s), finish 0.5, `targets` off; the
    search's first `finds` rounds each take the batch's next sentence."""
    target, capture = tiny
    clock = [0.0]
    monkeypatch.setitem(budget.CLOCKS, "wall", lambda: clock[0])
    truth = [list(s) for s in capture.reference.token_ids]

    def seed_round(self, widen):
        clock[0] += ROUND
        if len(self.found) < finds:
            seq = truth[len(self.found)]
            return self.take(seq, float(self.residuals([seq])[0]))
        return False

    monkeypatch.setattr(SentenceSearch, "seed_round", seed_round)
    attack = ATTACKS.get("beyond_rank")(**{**FAST, "widen": 1 << 20}, prior="none", finish=0.5, targets=False,
                                        **options)
    with budget.time_budget(100):
        return attack.run(_observation(capture), target, progress=False)


def test_the_search_stops_once_it_has_found_nothing_for_as_long_again_and_the_finish_gets_the_rest(tiny, monkeypatch):
    out = _run(tiny, monkeypatch, search_stop=1.0)
    searched = out.details["search"]
    # found at 10 s: nothing new by 20 s (1 + 1 times 10) ends it, 30 s before its share of 50 s ends
    assert searched["finds"] == [ROUND] and searched["share"] == 50.0
    assert searched["ended"] == 2 * ROUND and searched["stopped"]
    assert out.details["finish"]["left"][0] == 100 - 2 * ROUND  # the finish starts with all the time left
    assert out.details["peeled"] == 1 and out.details["finish"]["sentences"] == 7


def test_each_find_moves_the_stop_on(tiny, monkeypatch):
    out = _run(tiny, monkeypatch, finds=2, search_stop=1.0)
    searched = out.details["search"]
    # found at 10 and 20 s: the second moves the end from 20 to 40 s (the rounds found nothing after)
    assert searched["finds"] == [ROUND, 2 * ROUND] and searched["ended"] == 4 * ROUND and searched["stopped"]
    assert out.details["peeled"] == 2 and out.details["finish"]["left"][0] == 100 - 4 * ROUND


def test_off_the_search_spends_its_whole_share(tiny, monkeypatch):
    out = _run(tiny, monkeypatch)
    searched = out.details["search"]
    assert searched["finds"] == [ROUND] and searched["ended"] == 50.0 and not searched["stopped"]
    assert out.details["finish"]["left"][0] == 50.0


def test_search_stop_is_refused_negative():
    with pytest.raises(InputError):
        ATTACKS.get("beyond_rank")(search_stop=-1).check_options()
