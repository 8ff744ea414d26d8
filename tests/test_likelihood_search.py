"""The `likelihood` search's sweep schedule and its confident positions, on a tiny model."""

from __future__ import annotations

import pytest
import torch

from conftest import make_wide_classifier
from textleak.text.layouts import layout_for


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A random 2-layer BERT classifier 128 wide (`conftest.make_wide_classifier`)."""
    return make_wide_classifier(tmp_path_factory.mktemp("wide-bert"))


def test_a_strong_row_is_confident_only_at_its_own_position():
    """A token whose row also scores high at a neighbouring position (position rows correlate)
    is confident where it stands, not at the neighbour (`attacks.evidence.confident`)."""
    from textleak.attacks.evidence import CONFIDENT, confidence, confident, row_scores

    gen = torch.Generator().manual_seed(0)
    V, H, sigma = 300, 64, 1e-3
    W, P = sigma * torch.randn(V, H, generator=gen, dtype=torch.float64), \
        sigma * torch.randn(3, H, generator=gen, dtype=torch.float64)
    strong = 0.1 * torch.randn(H, generator=gen, dtype=torch.float64) / H ** 0.5
    weak = 1e-5 * torch.randn(H, generator=gen, dtype=torch.float64)
    W[7] += strong  # token 7 at position 0
    P[0] += strong
    W[9] += 0.7 * strong + weak  # token 9 at position 1, whose row leans on position 0's
    P[1] += 0.7 * strong + weak
    scores = row_scores(W, P, 3, torch.zeros(V, dtype=torch.bool))
    assert int(scores[:, 1].argmax()) == 7 and confidence(scores, W, P, sigma)[1] > CONFIDENT
    assert confident(scores, W, P, sigma).tolist()[:2] == [True, False]


def test_the_climb_moves_then_widens_the_screen_then_sweeps_every_candidate(monkeypatch):
    """Each step is taken once the one before it changed nothing; a change starts again at the
    narrowest screen; the climb settles when the whole pool changes nothing."""
    from textleak.attacks import likelihood as lk
    from textleak.attacks.likelihood_moves import Moves, StretchRebuild

    steps, script = [], iter([0, 1, 0, 0, 0, 0])  # the wide screen changes a token once

    def sweep(self, batch, guess, inner, evidence, banned, word, screen, around=None):
        steps.append(screen)
        return next(script)

    class Guess:
        best, weighted, x = 0.0, False, [0, 0, 0]

        def move(self, inner, homes=None):
            steps.append("move")

        def indel(self, *args):
            steps.append("indel")

    monkeypatch.setattr(lk.LikelihoodSearch, "_sweep", sweep)
    monkeypatch.setattr(Moves, "shortlist", lambda *a: [])
    monkeypatch.setattr(StretchRebuild, "__call__", lambda *a: steps.append("rebuild"))
    search = lk.LikelihoodSearch(screen=4, wide=16, local=0)
    search._begin()
    search._fillers, search._prior = [], None
    assert search._climb(None, Guess(), range(1, 3), None, None, "w") == (1, True)
    assert steps == [4, "move", "indel", "rebuild", 16, 4, "move", "indel", "rebuild", 16, 0]
    steps.clear()
    script = iter([0, 0])
    search = lk.LikelihoodSearch(screen=0, indel=0, rebuild=0)
    search._begin()
    search._prior = None
    assert search._climb(None, Guess(), range(1, 3), None, None, "w") == (0, True)
    assert steps == [0, "move"]  # unscreened: every candidate, then the moves


def test_a_sweep_goes_by_first_order_gain_and_skips_confident_positions(wide, monkeypatch):
    """Positions are tried in order of their best first-order gain; one holding its confident row
    token is not tried."""
    from textleak.attacks.flips import flip_gains, top_flips
    from textleak.attacks.likelihood import LikelihoodSearch
    from textleak.attacks.likelihood_state import _Batch, _Guess, _gradient

    layout = layout_for(wide.model)
    names = [n for n, p in wide.model.named_parameters() if p.requires_grad]
    truth, guess = [2, 11, 12, 13, 14, 15, 3], [2, 11, 20, 13, 21, 22, 3]
    batch = _Batch(layout, _gradient(layout, truth, 1, names), [guess], [1])
    g = _Guess(batch, 0)
    banned = torch.zeros(layout.word_embeddings.num_embeddings, dtype=torch.bool)
    banned[:5] = True
    tried = []
    monkeypatch.setattr(_Guess, "substitute", lambda self, p, pool: tried.append(p) or 0)
    search = LikelihoodSearch(weighted=False)
    search._prior, search._sure = None, [None, None, 20, None, None, None, None]
    assert search._sweep(batch, g, range(1, 6), [[5]] * 7, banned, layout.word_embedding_name, 4) == 0
    gains = flip_gains(layout, g.T, g.x, g.y)
    best = {p: float(gains[p, top_flips(gains, g.x, 1, banned)[p][0]]) for p in range(1, 6)}
    assert tried == sorted([1, 3, 4, 5], key=lambda p: -best[p])  # position 2 holds its confident token
    tried.clear()
    search.local = 1
    search._sweep(batch, g, range(1, 6), [[5]] * 7, banned, layout.word_embedding_name, 4, around=[4])
    assert tried == sorted([3, 4, 5], key=lambda p: -best[p])  # a local sweep: the changed token's neighbours


def test_each_change_notes_the_pool_parts_holding_it_and_its_first_order_rank():
    from textleak.attacks.likelihood import LikelihoodSearch

    search = LikelihoodSearch()
    search._changes = []
    gain = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 1.0, 2.0])
    search._note(6, {"evidence": [5, 6], "flips": [6, 7], "frequent": []}, gain)
    search._note(4, {"evidence": [5]}, None)
    assert search._changes == [["evidence+flips", 2], ["-", None]]  # 5 and 7 rank above 6


def _scripted_sweep(calls, script):
    """A stand-in for `LikelihoodSearch._sweep` that records its screen and changes a token when
    the script says so."""
    def sweep(self, batch, guess, inner, evidence, banned, word, screen, around=None):
        calls.append((screen, around))
        changed = next(script)
        if changed:
            guess.x[2] += 1
        return changed
    return sweep


def test_a_change_is_followed_by_a_local_sweep_then_a_full_one(monkeypatch):
    """After a sweep changes tokens the next one covers their neighbourhoods (`local`); once that
    changes nothing, the same screen sweeps every position before the climb goes on."""
    from textleak.attacks import likelihood as lk

    calls, script = [], iter([1, 0, 0, 0, 0, 0])

    sweep = _scripted_sweep(calls, script)

    class Guess:
        best, weighted, x = 0.0, False, [0, 0, 0, 0]

        def move(self, inner, homes=None):
            calls.append("move")

    monkeypatch.setattr(lk.LikelihoodSearch, "_sweep", sweep)
    search = lk.LikelihoodSearch(screen=4, wide=16, indel=0, rebuild=0, local=2)
    search._begin()
    search._fillers, search._prior = [], None
    assert search._climb(None, Guess(), range(1, 3), None, None, "w") == (1, True)
    assert calls == [(4, None), (4, [2]), (4, None), "move", (16, None), (0, None)]
    assert [s[1] for s in search._steps] == [4, "4~", 4, "move", 16, 0]


def test_a_stretch_rebuild_blanks_the_least_supported_stretch_and_puts_the_truth_back(wide):
    """Two neighbouring wrong tokens, the truth among each slot's row candidates: the rebuild
    blanks their stretch to a filler and rebuilds it jointly to the truth (J's maximum without
    noise); from the rebuilt guess nothing is left to rebuild, and a stretch is not tried twice."""
    from textleak.attacks.likelihood_moves import StretchRebuild
    from textleak.attacks.likelihood_state import _Batch, _Guess, _gradient

    layout = layout_for(wide.model)
    names = [n for n, p in wide.model.named_parameters() if p.requires_grad]
    truth, guess = [2, 11, 12, 13, 14, 15, 16, 3], [2, 11, 12, 20, 21, 15, 16, 3]
    batch = _Batch(layout, _gradient(layout, truth, 1, names), [guess], [1])
    g = _Guess(batch, 0)
    banned = torch.zeros(layout.word_embeddings.num_embeddings, dtype=torch.bool)
    banned[:5] = True
    evidence = [[t, 22 + p] for p, t in enumerate(truth)]
    rebuild = StretchRebuild(width=2)
    support = rebuild.support(g, range(1, 7), [9])
    assert min(range(1, 7), key=lambda p: support[p]) in (3, 4)  # a wrong token supports J least
    moved = None
    for _ in range(5):  # the least supported stretches first, each once
        moved = rebuild(g, range(1, 7), layout.word_embedding_name, banned, evidence, None, [9])
        if moved is not None:
            break
    assert moved is not None and moved[0] == truth and moved[1] > g.best
    assert len(rebuild.tried) == len(set(rebuild.tried))
    sure = [None, 11, 12, None, None, 15, 16, None]  # only the stretch 3-4 may be blanked
    rebuild = StretchRebuild(width=2)
    assert rebuild(g, range(1, 7), layout.word_embedding_name, banned, evidence, None, [9], sure)[0] == truth
    assert rebuild(g, range(1, 7), layout.word_embedding_name, banned, evidence, None, [9], sure) is None


def test_a_local_sweep_that_changes_nothing_is_followed_by_a_stretch_rebuild(monkeypatch):
    """On J, before the full sweep that follows a settled local sweep, one stretch is rebuilt; a rebuild
    that changes tokens is followed by a local sweep around them, one that changes nothing by the
    full sweep."""
    from textleak.attacks import likelihood as lk
    from textleak.attacks.likelihood_moves import Moves

    calls, script, rebuilt = [], iter([1, 0, 0, 0, 0, 0, 0]), iter([True, False, False])

    sweep = _scripted_sweep(calls, script)

    def rebuild(self, guess, inner):
        calls.append("rebuild")
        self.taken = "rebuild"
        return ([0, 5, 5, 0], 1.0, None) if next(rebuilt) else None

    class Guess:
        best, weighted, x = 0.0, False, [0, 0, 0, 0]

        def move(self, inner, homes=None):
            calls.append("move")

    monkeypatch.setattr(lk.LikelihoodSearch, "_sweep", sweep)
    monkeypatch.setattr(Moves, "rebuild", rebuild)
    search = lk.LikelihoodSearch(screen=4, wide=16, indel=0, local=1)
    search._begin()
    search._fillers, search._prior = [], None
    assert search._climb(None, Guess(), range(1, 3), None, None, "w") == (2, True)
    assert calls == [(4, None), (4, [2]), "rebuild", (4, [1, 2]), "rebuild", (4, None), "move", "rebuild",
                     (16, None), (0, None)]
    assert [s[1] for s in search._steps][:4] == [4, "4~", "rebuild", "4~"]
    assert search._steps[2][5] == [["rebuild", None]]
    calls.clear()
    rebuilt = iter([False])
    monkeypatch.setattr(lk.LikelihoodSearch, "_sweep", _scripted_sweep(calls, iter([1, 0, 0, 0, 0, 0])))
    Guess.weighted = True  # J_w: no rebuild after a local sweep, only among the moves
    search._climb(None, Guess(), range(1, 3), None, None, "w")
    assert calls == [(4, None), (4, [2]), (4, None), "move", "rebuild", (16, None), (0, None)]


def test_a_relaxed_stretch_ranks_the_true_tokens_the_wrong_ones_hid(wide):
    """Two neighbouring wrong tokens: freed and moved along J (`attacks.relax`), their slots'
    nearest tokens hold the truth, which the wrong tokens' own neighbourhoods (no steps) do not;
    the stretch rebuild, with neither rows nor matched filter nor prior holding the truth, then
    puts it back from the relaxation alone."""
    from textleak.attacks.likelihood_moves import StretchRebuild
    from textleak.attacks.likelihood_state import _Batch, _Guess, _gradient
    from textleak.attacks.relax import relaxed_candidates

    layout = layout_for(wide.model)
    names = [n for n, p in wide.model.named_parameters() if p.requires_grad]
    truth, guess = [2, 11, 12, 13, 14, 15, 16, 3], [2, 11, 12, 20, 21, 15, 16, 3]
    g = _Guess(_Batch(layout, _gradient(layout, truth, 1, names), [guess], [1]), 0)
    banned = torch.zeros(layout.word_embeddings.num_embeddings, dtype=torch.bool)
    banned[:5] = True
    still = relaxed_candidates(layout, g.T, guess, 1, [3, 4], 3, banned, steps=0)
    moved = relaxed_candidates(layout, g.T, guess, 1, [3, 4], 3, banned, steps=60)
    assert still[0][0] == 20 and 13 not in still[0] and 14 not in still[1]
    assert 13 in moved[0] and 14 in moved[1]
    evidence = [[t] for t in guess]  # rows that hold only the guess
    found = None
    rebuild = StretchRebuild(width=2, matched=0, relaxed=3)
    for _ in range(5):
        found = rebuild(g, range(1, 7), layout.word_embedding_name, banned, evidence, None, [9])
        if found is not None:
            break
    assert found is not None and found[0] == truth
    plain = StretchRebuild(width=2, matched=0, relaxed=0)
    assert all(plain(g, range(1, 7), layout.word_embedding_name, banned, evidence, None, [9]) is None
               for _ in range(5))
