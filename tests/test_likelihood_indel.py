"""The likelihood search's insertion/deletion past 16 tokens (`_Guess.indel`'s `weak` positions,
`likelihood_moves.Moves.weak`), on a tiny random classifier against a noise-free target."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from conftest import make_wide_classifier
from textleak.text.layouts import layout_for


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A random 2-layer BERT classifier 128 wide (`conftest.make_wide_classifier`)."""
    return make_wide_classifier(tmp_path_factory.mktemp("wide-bert-indel"))


TRUTH = [2] + list(range(7, 27)) + [3]  # 20 tokens between [CLS] and [SEP], each once
SHIFTED = TRUTH[:14] + [30] + TRUTH[14:-2] + [3]  # a wrong token in at 14, the body after it one place on


def _guess(wide, seq):
    from textleak.attacks.likelihood_state import _Batch, _Guess, _gradient

    layout = layout_for(wide.model)
    names = [n for n, p in wide.model.named_parameters() if p.requires_grad]
    return _Guess(_Batch(layout, _gradient(layout, TRUTH, 1, names), [seq], [1]), 0)


def test_past_16_tokens_a_weak_position_is_deleted_to_undo_a_shifted_body(wide):
    """Past 16 tokens the move deleted only fillers and repeated tokens, so a wrong token standing
    once in front of a shifted body stayed (the old code); named weak, it is deleted and the
    missing token inserted at the end of the body (6 places on)."""
    g = _guess(wide, SHIFTED)
    inner = range(1, len(TRUTH) - 1)
    shortlist = [[] for _ in TRUTH]
    shortlist[20] = [26]
    old = g.indel(inner, shortlist)
    assert old is None or old[0] != TRUTH
    found = g.indel(inner, shortlist, weak={14})
    assert found is not None and found[0] == TRUTH and found[1] > g.best


def test_the_weak_positions_are_the_least_supported_and_the_support_is_read_once(wide):
    """`Moves.weak` names the `indel_weak` least supported positions (the rebuild's support,
    computed once per guess), none where off or at 16 tokens or fewer, and not a confident row's."""
    from textleak.attacks.evidence import filler_ids
    from textleak.attacks.likelihood_moves import Moves, StretchRebuild

    g = _guess(wide, SHIFTED)
    inner = range(1, len(TRUTH) - 1)
    rebuild = StretchRebuild()
    search = SimpleNamespace(indel_weak=4, _rebuild=rebuild, _fillers=filler_ids(wide.tokenizer), _sure=None)
    moves = Moves(search, None, None, "")
    weak = moves.weak(g, inner)
    support = rebuild.support(g, inner, search._fillers)
    assert weak == set(sorted(inner, key=lambda p: support[p])[:4])
    assert 14 in weak  # the wrong token in front of the shifted body
    calls = []
    rebuild._support = lambda *a: calls.append(a) or [0.0] * len(TRUTH)
    assert rebuild.support(g, inner, search._fillers) == support and not calls  # read once per guess
    search._sure = [None] * 14 + [30] + [None] * 7
    assert 14 not in moves.weak(g, inner)
    search.indel_weak = 0
    assert moves.weak(g, inner) is None
    search.indel_weak = 4
    assert moves.weak(g, range(1, 17)) is None


MOVED = TRUTH[:6] + TRUTH[7:12] + [TRUTH[6]] + TRUTH[12:]  # the token of position 6 standing 5 places late


def test_past_16_tokens_a_token_moves_to_where_its_embedding_row_fits_best(wide):
    """At batch 1 `Moves.far` names, per position, the positions 4 to `indel` places away whose rows
    fit its token better than its own position's (the run's row scores); the insertion/deletion
    moves the token there (deleted and put back). The old code deleted only fillers and repeated
    tokens past 16 tokens, and its swaps and rotations move a token 3 places at most."""
    import torch

    from textleak.attacks.likelihood_moves import Moves

    g = _guess(wide, MOVED)
    inner = range(1, len(TRUTH) - 1)
    empty = [[] for _ in TRUTH]
    old = g.indel(inner, empty)
    assert old is None or old[0] != TRUTH
    assert g.move(inner) is None or g.move(inner)[0] != TRUTH
    rows = torch.zeros(40, len(TRUTH), dtype=torch.float64)
    for p, v in enumerate(TRUTH):
        rows[v, p] = 5.0  # each token's row fits its true position
    search = SimpleNamespace(indel_far=2, indel=8, _rows=rows)
    far = Moves(search, None, None, "").far(g, inner)
    assert far[11][0] == 6 and all(abs(a - b) >= 4 for a, bs in far.items() for b in bs)
    found = g.indel(inner, empty, 8, None, None, far)
    assert found is not None and found[0] == TRUTH and found[1] > g.best
    for off in (SimpleNamespace(indel_far=0, indel=8, _rows=rows), SimpleNamespace(indel_far=2, indel=8, _rows=None)):
        assert Moves(off, None, None, "").far(g, inner) is None
    assert Moves(search, None, None, "").far(g, range(1, 17)) is None
