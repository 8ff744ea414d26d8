"""`leaks.pooled` and `attacks.beyond_rank_targets` (#16) on the tiny 2-layer BERT classifier 32 wide of
test_bags (6 sentences, 40 tokens: past the rank limit): the pooler's gradient gives back every sentence's
last-layer [CLS] state and label from random starts, and a track a few tokens off descends onto its
state to the true sentence. (On MiniLM, CoLA batch 64: recipes/measured/large_batch_cls_s22/.)"""

from __future__ import annotations

import random

import pytest
import torch

import textleak
from conftest import make_word_bert
from test_bags import LABELS, TEXTS, WORDS
from textleak.attacks.beyond_rank_targets import TargetDescent
from textleak.text.layouts import layout_for
from textleak.text.leaks import embedding_token_set
from textleak.text.leaks.pooled import pooled_states
from textleak.text.leaks.positions import token_positions
from textleak.text.leaks.residuals import padded


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    torch.set_num_threads(1)
    target = make_word_bert(tmp_path_factory.mktemp("pooled-bert"), WORDS, "classify", layers=2, positions=16)
    cap = textleak.capture_gradients(target, TEXTS, labels=LABELS, seed=0)
    layout, grads = layout_for(target.model), cap.gradients.gradients
    truth = [list(s) for s in cap.reference.token_ids]
    ids, mask = padded(truth)
    with torch.no_grad():
        states = layout.hidden_states(ids, mask)[:, 0].double()
    return target, layout, grads, truth, states


def _random_starts(layout, truth, rng):
    tokens = sorted({t for s in truth for t in s[1:-1]})

    def starts(n):
        seqs = [[s[0]] + [rng.choice(tokens) for _ in s[1:-1]] + [s[-1]] for s in rng.choices(truth, k=n)]
        ids, mask = padded(seqs)
        with torch.no_grad():
            return layout.hidden_states(ids, mask)[:, 0]
    return starts


def test_the_pooler_gradient_gives_every_sentence_state_and_label(batch):
    _, layout, grads, truth, states = batch
    got = pooled_states(layout, grads, len(truth), _random_starts(layout, truth, random.Random(0)), first=64, later=32)
    assert got is not None and got.complete
    rel = torch.cdist(got.states, states) / states.norm(dim=1)[None]
    near, which = rel.min(1)
    assert float(near.max()) < 1e-3 and sorted(which.tolist()) == list(range(len(truth)))
    assert [got.labels[j] for j in torch.argsort(which).tolist()] == LABELS


def test_no_pooler_state_without_the_pooler_gradient(batch):
    _, layout, grads, truth, _ = batch
    name = layout.name(layout.base.pooler.dense.weight)
    rest = {k: v for k, v in grads.items() if k != name}
    assert pooled_states(layout, rest, len(truth), _random_starts(layout, truth, random.Random(0))) is None


def test_tracks_two_tokens_off_descend_onto_their_states(batch):
    target, layout, grads, truth, _ = batch
    tok = target.tokenizer
    lengths = [len(s) for s in truth]
    pins = token_positions(layout, grads, embedding_token_set(layout, grads).tolist(), max(lengths))
    tracks = _two_off(truth, 1)
    assert sum(t == s for t, s in zip(tracks, truth)) < len(truth)
    descent = TargetDescent(layout, grads, len(truth), {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id})
    out = descent.run(tracks, [], pins.allowed)
    assert out == truth and descent.report["reached"] == len(truth)


def test_the_finish_descends_onto_the_states_unless_told_not_to(batch):
    from types import SimpleNamespace

    from textleak.attacks import ATTACKS

    target = batch[0]
    obs = SimpleNamespace(task="classify", knowledge=SimpleNamespace(seq_lengths=(30, 30)), gradients={"g": 1})
    layout = SimpleNamespace(hidden_size=32)
    assert ATTACKS.get("beyond_rank")(targets=False)._finisher(obs, layout, [30, 30], target.tokenizer, 2).targets is None
    got = ATTACKS.get("beyond_rank")()._finisher(obs, layout, [30, 30], target.tokenizer, 2)  # on by default
    assert got.targets == ({"g": 1}, 2)
    assert got.lengths  # the descent's length moves: on by default (session 25)
    assert not ATTACKS.get("beyond_rank")(lengths=False)._finisher(obs, layout, [30, 30], target.tokenizer, 2).lengths
    # without a rank to read the states against, nothing to descend onto
    assert ATTACKS.get("beyond_rank")()._finisher(obs, layout, [30, 30], target.tokenizer, 0).targets is None


def test_short_sentences_are_inverted_from_their_states_at_every_missing_length(batch):
    from textleak.attacks.beyond_rank_invert import StateInversion

    target, layout, grads, truth, _ = batch
    tok = target.tokenizer
    lengths = [len(s) for s in truth]
    pins = token_positions(layout, grads, embedding_token_set(layout, grads).tolist(), max(lengths))
    rng = random.Random(2)
    # tracks of the right lengths, every content token drawn at random from its column, and given in an order
    # that pairs no track with its sentence's length: only an inversion at each length can reach the states
    options = [sorted(t for t in a if t not in {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id}) for a in pins.allowed]
    tracks = [[s[0]] + [rng.choice(options[p]) for p in range(1, len(s) - 1)] + [s[-1]] for s in truth[::-1]]
    invert = StateInversion(layout, tok.cls_token_id, tok.sep_token_id, longest=max(lengths), tries=len(truth))
    descent = TargetDescent(layout, grads, len(truth), {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id},
                            invert=invert, sweeps=0)
    out = descent.run(tracks, [], pins.allowed)
    assert sorted(map(len, out)) == sorted(lengths)
    assert invert.report["found"] >= len(truth) // 2
    assert all(s in truth for s in out[len(out) - invert.report["found"]:])


def test_tracks_of_another_length_descend_onto_their_states_with_length_moves(batch):
    target, layout, grads, truth, _ = batch
    tok = target.tokenizer
    pins = token_positions(layout, grads, embedding_token_set(layout, grads).tolist(), max(map(len, truth)))
    tracks = [list(s) for s in truth]
    tracks[0] = truth[0][:2] + truth[0][3:]  # one token short
    tracks[1] = truth[1][:3] + [truth[1][2]] + truth[1][3:]  # one token long (its neighbour twice)
    specials = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id}
    off = TargetDescent(layout, grads, len(truth), specials).run([list(t) for t in tracks], [], pins.allowed)
    assert off[0] != truth[0] and off[1] != truth[1]  # no single change reaches a sentence of another length
    on = TargetDescent(layout, grads, len(truth), specials, lengths=True)
    assert on.run([list(t) for t in tracks], [], pins.allowed) == truth and on.report["reached"] == len(truth)


def test_the_finish_places_a_track_of_another_length_in_the_nearest_missing_slot():
    from textleak.attacks.beyond_rank_finish import finished

    guesses = [[1, 9, 2], [1, 9, 9, 9, 2], [1, 9, 9, 9, 9, 9, 9, 2]]
    found, tracks = [[1, 5, 2]], [[1, 6, 6, 6, 6, 6, 6, 6, 2], [1, 7, 7, 7, 2]]
    assert finished([3, 5, 8], guesses, found, tracks) == [[1, 5, 2], [1, 7, 7, 7, 2], tracks[0]]
    assert finished([3, 5, 8, 4], guesses + [[1, 9, 9, 2]], found, tracks[1:]) == \
        [[1, 5, 2], [1, 7, 7, 7, 2], guesses[2], [1, 9, 9, 2]]


def _two_off(truth, seed):
    rng = random.Random(seed)
    tracks = []
    for s in truth:  # two content tokens swapped with another sentence's at the same position
        t = list(s)
        for p in rng.sample(range(1, len(s) - 1), 2):
            t[p] = rng.choice([o[p] for o in truth if len(o) - 1 > p and o[p] != s[p]] or [s[p]])
        tracks.append(t)
    return tracks


def _two_off_setting(batch, seed: int):
    """The batch's layout, gradients and truth, its token positions, tracks two tokens off (`_two_off`) and the
    special tokens."""
    target, layout, grads, truth, _ = batch
    tok = target.tokenizer
    pins = token_positions(layout, grads, embedding_token_set(layout, grads).tolist(), max(map(len, truth)))
    return layout, grads, truth, pins, _two_off(truth, seed), {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id}


def test_guided_steps_descend_tracks_onto_their_states(batch):
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 1)
    descent = TargetDescent(layout, grads, len(truth), specials, guided=8)
    out = descent.run([list(t) for t in tracks], [], pins.allowed)
    assert out == truth and descent.report["reached"] == len(truth)
    assert descent.report["guided"]["steps"] > 0  # the old exhaustive sweeps report no guided steps


def test_a_chained_guided_step_puts_several_tokens_right_at_once(batch):
    from textleak.attacks.beyond_rank_invert import GuidedDescent

    target, layout, grads, truth, states = batch
    tok = target.tokenizer
    pins = token_positions(layout, grads, embedding_token_set(layout, grads).tolist(), max(map(len, truth)))
    options = [sorted(t for t in a if t not in {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id})
               for a in pins.allowed]
    tracks = _two_off(truth, 3)
    wrong = [sum(a != b for a, b in zip(t, s)) for t, s in zip(tracks, truth)]
    for chain, most in ((0, 1), (8, 2)):
        guide = GuidedDescent(layout, options, chain=chain)
        changed = []
        for n in sorted(set(map(len, tracks))):  # a step takes sentences of one length
            rows = [i for i, t in enumerate(tracks) if len(t) == n]
            seqs, T = [list(tracks[i]) for i in rows], states[rows].double()
            best = guide.dist(seqs, T)
            guide.step(seqs, T, best, list(range(len(seqs))))
            changed += [sum(a != b for a, b in zip(s, tracks[i])) for s, i in zip(seqs, rows)]
        assert max(changed) == most  # one change a step without a chain; two at once with one
    assert max(wrong) == 2


def test_a_state_solved_twice_a_little_apart_is_one_state(batch, monkeypatch):
    """Far past the limit a state can be solved twice a few 1e-3 apart, both under ACCEPT (MiniLM, RT batch 64):
    kept as two (as under SAME = 1e-3), the deflation takes out one direction too many and no later round solves
    anything; within SAME, or `merge`, the two are one state, the better fit kept, and every state comes back."""
    import textleak.text.leaks.pooled as pl
    _, layout, grads, truth, states = batch
    real, calls = pl._levenberg, []

    def twice(eq, a, iters=80):  # the first round: a slightly worse solution of its first state, ahead of it
        out = real(eq, a, iters)
        if not calls:
            h = out[0] @ eq.Q.T
            out = torch.cat([((h + 5e-3 * h.norm() * eq.Q[:, -1] / eq.Q[:, -1].norm()) @ eq.Q)[None], out])
        calls.append(len(out))
        return out
    monkeypatch.setattr(pl, "_levenberg", twice)
    monkeypatch.setattr(pl, "ACCEPT", 1e-2)
    starts = lambda: _random_starts(layout, truth, random.Random(0))  # noqa: E731
    runs = {}
    for name, kw, same in (("tight", {}, 1e-3), ("default", {}, pl.SAME), ("merge", {"merge": 2e-2}, pl.SAME)):
        monkeypatch.setattr(pl, "SAME", same)
        calls.clear()
        runs[name] = pooled_states(layout, grads, len(truth), starts(), first=64, later=32, **kw)
    assert len(runs["tight"].states) == len(truth) + 1 and not runs["tight"].complete  # one state counted twice
    for name in ("default", "merge"):
        assert runs[name].complete
        rel = torch.cdist(runs[name].states, states) / states.norm(dim=1)[None]
        near, which = rel.min(1)
        assert float(near.max()) < 1e-3 and sorted(which.tolist()) == list(range(len(truth)))


def test_with_pairing_a_track_pairs_with_a_state_of_its_length(batch, monkeypatch):
    """Each track holds the words of the next sentence (another length) at its own length: on distance alone it
    pairs with that sentence's state, which no track of its length can reach; with `pairing` and a length
    estimate that is right (here the truth's, in place of the discriminant) each pairs with a state of its own
    length."""
    import textleak.attacks.beyond_rank_targets as tg
    target, layout, grads, truth, states = batch
    tok = target.tokenizer
    specials = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id}
    pins = token_positions(layout, grads, embedding_token_set(layout, grads).tolist(), max(map(len, truth)))
    nxt = [truth[(i + 1) % len(truth)] for i in range(len(truth))]
    tracks = [[s[0]] + (n[1:-1] * 2)[:len(s) - 2] + [s[-1]] for s, n in zip(truth, nxt)]
    lengths = [len(s) for s in truth]

    def oracle(drawn, found, wanted):
        which = (torch.cdist(found, states) / states.norm(dim=1)[None]).argmin(1).tolist()
        return torch.tensor([[0.0 if lengths[j] == n else -5.0 for n in wanted] for j in which], dtype=found.dtype)
    monkeypatch.setattr(tg, "length_logp", oracle, raising=False)
    runs = {}
    for w in (0.0, 1.0):
        d = TargetDescent(layout, grads, len(truth), specials, sweeps=0, pairing=w)
        d.run([list(t) for t in tracks], [], pins.allowed)
        assert d.report["states"] == len(truth)
        runs[w] = d

    def same_length(d):
        which = (torch.cdist(d.paired, states) / states.norm(dim=1)[None]).argmin(1).tolist()
        return sum(len(tracks[r]) == lengths[which[c]] for r, c in d.pairs)
    assert same_length(runs[0.0]) < len(truth)
    assert same_length(runs[1.0]) == len(truth)


def test_pooled_rounds_and_iters_reach_the_states_reading(batch, monkeypatch):
    """`pooled_rounds` (with `merge`: one round a sentence, without: 8) and `pooled_iters` (80) reach
    `pooled_states` from the attack's options through the finish and the descent."""
    from types import SimpleNamespace

    import textleak.attacks.beyond_rank_targets as tg
    from textleak.attacks import ATTACKS
    target, layout, grads, truth, _ = batch
    asked = []
    monkeypatch.setattr(tg, "pooled_states", lambda *a, **k: asked.append((k["rounds"], k.get("iters", 80))))
    obs = SimpleNamespace(task="classify", knowledge=SimpleNamespace(seq_lengths=(30, 30)), gradients=grads)
    small = SimpleNamespace(hidden_size=32)
    for opts in ({}, {"merge": 0.01}, {"merge": 0.01, "pooled_rounds": 3}, {"pooled_rounds": 2, "pairing": 0.5},
                 {"pooled_iters": 30}):
        finish = ATTACKS.get("beyond_rank")(**opts)._finisher(obs, small, [30, 30], target.tokenizer, len(truth))
        assert finish.pairing == opts.get("pairing", 0.0)
        TargetDescent(layout, grads, len(truth), set(), merge=finish.merge, rounds=finish.rounds,
                      iters=finish.iters).run(
            [list(s) for s in truth], [], [set()] * max(map(len, truth)))
    assert asked == [(8, 80), (len(truth), 80), (3, 80), (2, 80), (8, 30)]


def _wide_finisher(batch, **opts):
    """beyond_rank's finisher with `opts`, for two declared 30-token sentences on a 32-wide model (past the limit)."""
    from types import SimpleNamespace

    from textleak.attacks import ATTACKS

    obs = SimpleNamespace(task="classify", knowledge=SimpleNamespace(seq_lengths=(30, 30)), gradients={"g": 1})
    return ATTACKS.get("beyond_rank")(**opts)._finisher(obs, SimpleNamespace(hidden_size=32), [30, 30],
                                                         batch[0].tokenizer, 2)


def test_drafts_redraw_tracks_from_their_own_states(batch):
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 4)
    far = []
    for drafts in (0, 60):  # no sweeps: the drafts alone
        descent = TargetDescent(layout, grads, len(truth), specials, sweeps=0, drafts=drafts)
        out = descent.run([list(t) for t in tracks], [], pins.allowed)
        H = descent.states([out[r] for r, _ in descent.pairs])
        T = descent.paired[[c for _, c in descent.pairs]]
        far.append(float(((H - T).norm(dim=1) / T.norm(dim=1)).sum()))
    assert descent.report["drafts"]["kept"] > 0 and far[1] < far[0]  # redrawn nearer their own states
    assert _wide_finisher(batch, drafts=30).drafts == 30
    assert _wide_finisher(batch).drafts == 60 and _wide_finisher(batch, drafts=0).drafts == 0  # on (session 31)


def test_a_track_within_hit_of_its_state_is_done(batch):
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 1)
    descent = TargetDescent(layout, grads, len(truth), specials, hit=10.0)  # every track counts as reached at once
    assert descent.run([list(t) for t in tracks], [], pins.allowed) == tracks  # (the default descends onto truth)
    assert descent.report["reached"] == len(truth)
    assert _wide_finisher(batch, hit=1e-3).hit == 1e-3


def test_with_draft_keep_a_draft_replaces_its_track_only_where_its_distance_falls_that_far(batch):
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 4)
    kept = []
    for keep in (0.0, 1e-9):  # 0: wherever nearer; 1e-9: none is that much nearer
        descent = TargetDescent(layout, grads, len(truth), specials, sweeps=0, drafts=30, draft_keep=keep)
        out = descent.run([list(t) for t in tracks], [], pins.allowed)
        kept.append(descent.report["drafts"]["kept"])
    assert kept[0] > 0 and kept[1] == 0 and out == tracks  # no sweeps: the tracks as assembled
    assert _wide_finisher(batch, drafts=30, draft_keep=0.5).draft_keep == 0.5
    assert _wide_finisher(batch).draft_keep == 0.5  # the default since session 31


def test_a_padded_relaxation_draws_each_row_as_its_own_length_alone(batch):
    from textleak.attacks.beyond_rank_invert import columns, relax

    target, layout, grads, truth, states = batch
    tok = target.tokenizer
    rows = sorted(range(len(truth)), key=lambda k: len(truth[k]))[:3]
    options = [sorted({s[p] for s in truth if p < len(s) - 1}) for p in range(max(map(len, truth)))]
    n = [len(truth[k]) + d for k, d in zip(rows, (0, 1, 3))]  # three lengths
    cols = columns(options, max(n), tok.sep_token_id, torch.device("cpu"))
    Z0 = [0.5 * torch.randn(3, len(c), generator=torch.Generator().manual_seed(p)) for p, c in enumerate(cols)]
    together, _ = relax(layout, [z.clone().requires_grad_(True) for z in Z0], cols, tok.cls_token_id,
                        tok.sep_token_id, states[rows], 12, n)
    for j, k in enumerate(rows):
        alone, _ = relax(layout, [z[j:j + 1].clone().requires_grad_(True) for z in Z0[:n[j] - 2]], cols[:n[j] - 2],
                         tok.cls_token_id, tok.sep_token_id, states[k:k + 1], 12)
        assert len(together[j]) == n[j] and together[j] == alone[0]


def test_packed_drafts_relax_nearby_lengths_in_one_batch(batch):
    from textleak.attacks.beyond_rank_drafts import packed

    assert packed({5: 1, 6: 1, 40: 1}, overhead=60) == [[5, 6], [40]]  # 5 and 6 together: one overhead saved
    assert packed({5: 1, 6: 1, 40: 1}, overhead=0) == [[5], [6], [40]]  # no overhead: no padding worth it
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 4)
    reports = []
    for pack in (False, True):
        descent = TargetDescent(layout, grads, len(truth), specials, sweeps=0, drafts=30, draft_pack=pack)
        descent.run([list(t) for t in tracks], [], pins.allowed)
        reports.append(descent.report["drafts"])
    lengths = len({len(t) for t in tracks})
    assert reports[0]["batches"] == lengths > reports[1]["batches"] and reports[1]["drawn"] == len(truth)
    assert reports[1]["kept"] > 0
    assert _wide_finisher(batch, draft_pack=True).draft_pack and not _wide_finisher(batch).draft_pack


def test_the_descent_reports_each_stages_seconds_and_its_sweeps(batch):
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 4)
    descent = TargetDescent(layout, grads, len(truth), specials, drafts=30, draft_pack=True)
    descent.run([list(t) for t in tracks], [], pins.allowed)
    rep = descent.report
    assert set(rep["seconds"]) == {"states", "drafts", "sweeps"} and rep["seconds"]["drafts"] > 0
    assert rep["rounds"] >= 1 and rep["swept"] >= len(truth) - rep["reached"] and rep["unswept"] == 0
    assert 0 <= rep["again"] < rep["swept"]


def test_with_draft_spend_packed_drafts_take_the_steps_their_saving_pays_for(batch):
    from textleak.attacks.beyond_rank_drafts import spent

    assert spent(60, {5: 1, 6: 1}, overhead=60) == 109  # 60 x (65 + 66) / (60 + 2 x 6)
    assert spent(60, {7: 3}, overhead=60) == 60  # one length: nothing saved
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 4)
    reports = []
    for spend in (False, True):
        descent = TargetDescent(layout, grads, len(truth), specials, sweeps=0, drafts=30, draft_pack=True,
                                draft_spend=spend)
        descent.run([list(t) for t in tracks], [], pins.allowed)
        reports.append(descent.report["drafts"])
    assert reports[0]["batches"] == reports[1]["batches"] and reports[1]["steps"] > reports[0]["steps"]
    assert _wide_finisher(batch, draft_pack=True, draft_spend=True).draft_spend
    assert not _wide_finisher(batch).draft_spend


def test_packed_drafts_are_the_drafts_drawn_one_length_at_a_time(batch):
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 4)
    outs, reports = [], []
    for pack in (False, True):  # the same start noise a track, packed or not: the same drafts
        descent = TargetDescent(layout, grads, len(truth), specials, sweeps=0, drafts=30, draft_pack=pack)
        outs.append(descent.run([list(t) for t in tracks], [], pins.allowed))
        reports.append(descent.report["drafts"])
    assert reports[0]["batches"] > reports[1]["batches"] and reports[0]["kept"] == reports[1]["kept"] > 0
    assert outs[0] == outs[1] != tracks
