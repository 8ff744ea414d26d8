"""`likelihood.screen_prior`: a share of a screened sweep's picks taken from the bigram's likeliest between the
neighbours instead of by first-order gain (the s36 probe: at SST-2 dev batch 0's batch-4 end states at 1e-6 the
first-order gain ranks none of the wrong positions' true tokens in its top 16)."""

from __future__ import annotations

import pytest
import torch

from conftest import make_wide_classifier
from textleak.errors import InputError
from textleak.text.layouts import layout_for


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A random 2-layer BERT classifier 128 wide (`conftest.make_wide_classifier`)."""
    return make_wide_classifier(tmp_path_factory.mktemp("wide-bert"))


class _Prior:
    """A stand-in bigram: the same k tokens 15, 16, ... between every pair of neighbours, no frequent tokens."""

    frequent: list[int] = []

    def between(self, seq, k):
        return [list(range(15, 15 + k)) for _ in seq]


def _pools(wide, monkeypatch, screen_prior: float, screen: int):
    """The pool each position of a 7-token guess is offered in one screened sweep (`screen` picks)."""
    from textleak.attacks.likelihood import LikelihoodSearch
    from textleak.attacks.likelihood_state import _Batch, _Guess, _gradient

    layout = layout_for(wide.model)
    trained = [n for n, p in wide.model.named_parameters() if p.requires_grad]
    shared = _gradient(layout, [2, 9, 8, 7, 10, 12, 3], 0, trained)  # the observed gradient: one other sentence
    batch = _Batch(layout, shared, [[2, 9, 20, 7, 21, 22, 3]], [0])
    g = _Guess(batch, 0)
    banned = torch.arange(layout.word_embeddings.num_embeddings) < 5  # the special tokens
    pools = {}
    monkeypatch.setattr(_Guess, "substitute", lambda self, p, pool: pools.setdefault(p, list(pool)) and 0)
    search = LikelihoodSearch(weighted=False, screen_prior=screen_prior, rows=1, flips=16, neighbours=8)
    search._prior, search._sure, search._context = _Prior(), None, None
    search._sweep(batch, g, range(1, 6), [[5, 6]] * 7, banned, layout.word_embedding_name, screen)
    assert sorted(pools) == [1, 2, 3, 4, 5]
    return pools


def test_screen_prior_takes_the_screens_picks_from_the_bigram(wide, monkeypatch):
    """All of the screen's picks (1) or half (0.5) are the bigram's next likeliest between the neighbours; the rest
    by first-order gain as before (0)."""
    full = _pools(wide, monkeypatch, 1.0, 4)
    for p, pool in full.items():  # the best row, the best matched-filter token, then 2 + 4 of the bigram
        assert pool[0] == 5 and pool[2:] == [15, 16, 17, 18, 19, 20], p
    half = _pools(wide, monkeypatch, 0.5, 4)
    for p, pool in half.items():  # 2 + 2 of the bigram, then 2 by first-order gain, none of those named
        assert pool[2:6] == [15, 16, 17, 18] and len(pool) == 8 and not set(pool[6:]) & {15, 16, 17, 18}, p
    off = _pools(wide, monkeypatch, 0.0, 4)
    for p, pool in off.items():  # as before: 2 of the bigram, then 4 by first-order gain
        assert pool[2:4] == [15, 16] and len(pool) == 8, p
    wide16 = _pools(wide, monkeypatch, 1.0, 6)  # a wider screen takes more of the bigram's list
    assert all(pool[2:] == list(range(15, 23)) for pool in wide16.values())


def test_screen_prior_outside_0_1_is_refused():
    from textleak.attacks.base import parse_options
    from textleak.validate import attack_instance

    assert attack_instance("auto", parse_options(["likelihood_batch.screen_prior=1"]), 0).likelihood_batch == \
        {"screen_prior": 1}
    with pytest.raises(InputError, match="screen_prior"):
        attack_instance("auto", parse_options(["likelihood_batch.screen_prior=1.5"]), 0)
