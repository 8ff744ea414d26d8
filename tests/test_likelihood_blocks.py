"""The likelihood search's two-token block move on J_w (`Moves.blocks`, `LikelihoodSearch.blocks`): each
position's deeper context candidates scored alone, then pairs of them at neighbouring positions, on a
tiny random classifier against a noise-free target (whose J_w is highest at the truth)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conftest import make_wide_classifier
from test_likelihood_context import _Ranked  # a head favouring given tokens in order
from textleak.text.layouts import layout_for

TRUTH = [2, 11, 12, 13, 14, 15, 16, 3]
GUESS = [2, 11, 12, 20, 21, 15, 16, 3]  # two neighbouring wrong tokens


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A random 2-layer BERT classifier 128 wide (`conftest.make_wide_classifier`)."""
    return make_wide_classifier(tmp_path_factory.mktemp("wide-bert-blocks"))


def _setup(wide, weighted=True):
    from textleak.attacks.evidence import ContextCandidates
    from textleak.attacks.likelihood_state import _Batch, _Guess, _gradient

    layout = layout_for(wide.model)
    names = [n for n, p in wide.model.named_parameters() if p.requires_grad]
    g = _Guess(_Batch(layout, _gradient(layout, TRUTH, 1, names), [GUESS], [1]), 0, weighted)
    V = layout.word_embeddings.num_embeddings
    banned = torch.zeros(V, dtype=torch.bool)
    banned[:5] = True
    # decoys first: the true tokens rank second at positions 3 and 4
    context = ContextCandidates(_Ranked({3: [30, 13], 4: [31, 14]}, V), torch.zeros(V, len(TRUTH)), banned, 1)
    return g, banned, context, layout.word_embedding_name


def test_best_of_returns_every_trials_score_in_order(wide):
    """`best_of(scores=True)`: J of each trial as given (duplicates too), the same as `score`'s."""
    g, *_ = _setup(wide)
    trials = [TRUTH, GUESS[:3] + [13] + GUESS[4:], TRUTH]
    best, J = g.best_of(trials, scores=True)
    assert best[0] == TRUTH and len(J) == 3 and J[0] == J[2]
    assert torch.allclose(torch.tensor(J), g.score(trials)[0].double().cpu().to(torch.tensor(J).dtype))


def test_the_block_move_sets_two_neighbouring_tokens_together(wide):
    """From two wrong neighbours, the move (2 context candidates a slot) puts both true tokens in at once:
    the pair of second-ranked candidates is among the pairs it scores, and the truth is J_w's maximum."""
    from textleak.attacks.likelihood_moves import Moves

    g, banned, context, word = _setup(wide)
    search = SimpleNamespace(_sure=None, _context=context, blocks=2, block_pairs=8, rows=2, _prior=None)
    moved = Moves(search, [[t] for t in GUESS], banned, word).blocks(g, range(1, 7))
    assert moved is not None and moved[0] == TRUTH and moved[1] > g.best


def test_the_search_tries_blocks_first_on_jw_only(wide, monkeypatch):
    """`blocks` > 0: the moves try the block move first on J_w; on J (and with `blocks` 0) never."""
    from textleak.attacks.likelihood import LikelihoodSearch
    from textleak.attacks.likelihood_moves import Moves

    called = []
    monkeypatch.setattr(Moves, "blocks", lambda self, guess, inner: called.append(guess.weighted))
    for blocks, weighted in ((8, True), (8, False), (0, True)):
        g, banned, context, word = _setup(wide, weighted)
        search = LikelihoodSearch(blocks=blocks, pairs=0, indel=0, rebuild=0)
        search._begin()
        search._prior, search._context, search._sure, search._fillers = None, context, None, []
        Moves(search, [[t] for t in GUESS], banned, word)(g, range(1, 7))
    assert called == [True]
