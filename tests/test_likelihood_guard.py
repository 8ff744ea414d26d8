"""The likelihood search's guard (`LikelihoodSearch.guard`, `_Guess.guarded`): the J climb takes only
changes that do not lower J_w, on a tiny random classifier against a noise-free target."""

from __future__ import annotations

import pytest
import torch

from conftest import make_wide_classifier
from textleak.text.layouts import layout_for


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A random 2-layer BERT classifier 128 wide (`conftest.make_wide_classifier`)."""
    return make_wide_classifier(tmp_path_factory.mktemp("wide-bert-guard"))


TRUTH = [2, 5, 7, 8, 9, 11, 12, 20, 18, 25, 30, 3]
GUESS = [2, 6, 7, 13, 9, 11, 12, 21, 18, 25, 30, 3]  # three wrong tokens
#: at position 6 token 5 raises J (by ~1e-5) and lowers J_w (by ~5e-3) from GUESS (found by scanning
#: every token at every position: 13 such changes from three guesses)
AT, TOKEN = 6, 5


def _guess(wide, **kw):
    from textleak.attacks.likelihood_state import _Batch, _Guess, _gradient

    layout = layout_for(wide.model)
    names = [n for n, p in wide.model.named_parameters() if p.requires_grad]
    return _Guess(_Batch(layout, _gradient(layout, TRUTH, 1, names), [GUESS], [1]), 0, **kw)


def test_the_guards_jw_is_the_weighted_climbs_objective(wide):
    """The guard's J_w, read off the J scorer's per-group parts, equals J_w as the weighted climb
    scores it (the same weights: both at GUESS)."""
    plain, weighted = _guess(wide, guard=True), _guess(wide, weighted=True)
    assert torch.allclose(plain.guard, weighted.weights)
    trials = [TRUTH, GUESS[:AT] + [TOKEN] + GUESS[AT + 1:]]
    plain.score(trials)
    assert torch.allclose(plain._guard_jw(), weighted.score(trials)[0], rtol=1e-9, atol=1e-12)


def test_the_guard_refuses_a_change_that_raises_j_and_lowers_jw(wide):
    """Without the guard the J climb takes the change (the old code); with it, not; a true token
    that raises both is taken either way."""
    trial = GUESS[:AT] + [TOKEN] + GUESS[AT + 1:]
    free, guarded = _guess(wide), _guess(wide, guard=True)
    assert free.best == pytest.approx(guarded.best)
    assert guarded.floor() > -float("inf")
    assert free.substitute(AT, [TOKEN]) == 1 and free.x == trial
    assert guarded.substitute(AT, [TOKEN]) == 0 and guarded.x == GUESS
    assert guarded.best_of([trial]) is None and _guess(wide).best_of([trial]) is not None
    assert guarded.substitute(1, [5]) == 1 and guarded.x[1] == 5  # J and J_w both rise
    assert guarded.admits(guarded.x)


def test_the_search_guards_only_its_j_climb(wide, monkeypatch):
    """`guard` reaches the J climb's guess (after J_w's), never J_w's own."""
    from textleak.attacks import likelihood_climb
    from textleak.attacks.likelihood import LikelihoodSearch

    made = []
    real = likelihood_climb._Guess

    def spy(batch, i, weighted=False, guard=False, keep=None):
        g = real(batch, i, weighted, guard, keep)
        made.append((weighted, g.guard is not None))
        return g

    monkeypatch.setattr(likelihood_climb, "_Guess", spy)
    monkeypatch.setattr(LikelihoodSearch, "_climb", lambda self, *a: (0, True))
    from textleak.attacks.likelihood_state import _Batch, _gradient

    layout = layout_for(wide.model)
    names = [n for n, p in wide.model.named_parameters() if p.requires_grad]
    batch = _Batch(layout, _gradient(layout, TRUTH, 1, names), [GUESS], [1])
    LikelihoodSearch(guard=True)._settle(batch, 0, [[t] for t in GUESS], None, "w", True)
    assert made == [(True, False), (False, True)]
    made.clear()
    LikelihoodSearch()._settle(batch, 0, [[t] for t in GUESS], None, "w", True)
    assert made == [(True, False), (False, False)]
