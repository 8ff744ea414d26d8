"""`beyond_rank --option sweep_order=NAME` (#16, session 34): the order the target descent sweeps its pairs in each
round (`beyond_rank_targets.TargetDescent._ordered`), and `sweep_defer=D` (session 35): long tracks far from their
states held back (`TargetDescent._held`); on the tiny 2-layer BERT classifier of test_pooled_states."""

from __future__ import annotations

import pytest

from test_pooled_states import _two_off_setting, _wide_finisher, batch
from textleak.attacks import ATTACKS
from textleak.attacks import beyond_rank_targets as targets
from textleak.attacks.beyond_rank_targets import TargetDescent
from textleak.core import device as device_module
from textleak.errors import InputError
from textleak.validate import attack_instance

SWEEP = TargetDescent._sweep  # the unpatched sweep
FIXTURES = (batch,)  # test_pooled_states' module fixture, used here by name


def _swept(batch, monkeypatch, order, sweeps=1, **kw):
    """The (distance, length) of each track as one round of sweeps reaches it, and the descent's output; with
    `sweeps` rounds and `kw` (`defer`, `defer_length`): the descent's `_sweeps`."""
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 1)
    seen = []

    def sweep(self, seq, target, options, best):
        seen.append((best, len(seq)))
        return SWEEP(self, seq, target, options, best)
    monkeypatch.setattr(TargetDescent, "_sweep", sweep)
    kw.update({} if order is None else {"order": order})
    descent = TargetDescent(layout, grads, len(truth), specials, sweeps=sweeps, **kw)
    out = descent.run([list(t) for t in tracks], [], pins.allowed)
    return (seen, out, truth) if not kw.get("defer") else (seen, descent)


def test_sweep_order_near_sweeps_the_pairs_nearest_their_states_first(batch, monkeypatch):
    seen, _, truth = _swept(batch, monkeypatch, "near")
    assert len(seen) == len(truth) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    seen, _, _ = _swept(batch, monkeypatch, "short")
    assert [n for _, n in seen] == sorted(n for _, n in seen)
    batch_order, out, _ = _swept(batch, monkeypatch, None)  # the default: the pairs as paired
    assert [d for d, _ in batch_order] != sorted(d for d, _ in batch_order)
    seen, again, _ = _swept(batch, monkeypatch, "batch")
    assert seen == batch_order and again == out


def test_sweep_order_reaches_the_descent_and_a_wrong_name_is_refused(batch):
    assert _wide_finisher(batch, sweep_order="near").sweep_order == "near"
    assert _wide_finisher(batch).sweep_order == "near"  # the default since session 35
    assert ATTACKS.get("beyond_rank")().sweep_order == "near" and ATTACKS.get("beyond_rank")().sweep_defer == 0.3
    with pytest.raises(InputError, match="sweep_order"):
        ATTACKS.get("beyond_rank")(sweep_order="far").check_options()


def _firsts(seen, initial):
    """Where each pair's first sweep stands in `seen`, by its distance before any sweep (`initial`: distinct)."""
    at = [d for d, _ in seen]
    return {d: at.index(d) for d in initial}


def test_sweep_defer_holds_long_far_tracks_until_the_others_settle(batch, monkeypatch):
    first, _, _ = _swept(batch, monkeypatch, None)  # one round as paired: each pair's distance before any sweep
    initial = [d for d, _ in first]
    far = sorted(initial)[len(initial) // 2]  # half the pairs this far or farther: held (every track long enough)
    shortest = min(n for _, n in first)
    was = _firsts(first, initial)
    assert max(was[d] for d in initial if d < far) > min(was[d] for d in initial if d >= far)  # as paired: mixed
    seen, descent = _swept(batch, monkeypatch, None, sweeps=8, defer=far - 1e-9, defer_length=shortest)
    at = _firsts(seen, initial)
    assert max(at[d] for d in initial if d < far) < min(at[d] for d in initial if d >= far)  # the near ones first
    assert descent.report["unswept"] == 0 and "held" in descent.swept  # the held ones swept once the rest settled
    _, descent = _swept(batch, monkeypatch, None, sweeps=8, defer=far - 1e-9)  # tracks all under 10 tokens
    assert descent.swept["held"] == 0
    assert _wide_finisher(batch, sweep_defer=0.3).sweep_defer == 0.3 and _wide_finisher(batch).sweep_defer == 0.3
    with pytest.raises(InputError, match="sweep_defer"):
        ATTACKS.get("beyond_rank")(sweep_defer=-1.0).check_options()


def test_sweep_screen_rescores_only_the_screened_nearest_at_float32(batch):
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 1)
    plain = TargetDescent(layout, grads, len(truth), specials, sweeps=8)
    out = plain.run([list(t) for t in tracks], [], pins.allowed)
    screened = TargetDescent(layout, grads, len(truth), specials, sweeps=8, screen=2)
    got = screened.run([list(t) for t in tracks], [], pins.allowed)
    assert out == truth and got == truth and screened.report["reached"] == len(truth)
    rough, exact = screened.scored["rough"], screened.scored["exact"]
    assert rough > 0 and exact < plain.scored["exact"] and exact < rough / 2  # the screen spared float32 scoring
    seq, target = truth[0], screened.paired[0]
    trial = [seq[:p] + [t] + seq[p + 1:] for p in range(1, len(seq) - 1) for t in (seq[p], seq[-1] - 1)]
    k, d = screened._nearest(trial, target, 2)
    exact_d = (screened.states(trial) - target).norm(dim=1) / target.norm()
    assert d == sorted(d) and d == [float(exact_d[i]) for i in k]  # the distances kept are the float32 ones
    assert _wide_finisher(batch, sweep_screen=4).sweep_screen == 4
    with pytest.raises(InputError, match="sweep_screen"):
        ATTACKS.get("beyond_rank")(sweep_screen=-1).check_options()


def test_sweep_screen_auto_is_the_default_and_screens_only_where_bfloat16_is_fast(batch, monkeypatch):
    # session 36: on by default where the device has fast bfloat16 (AMX, CUDA), off where it would be emulated
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 1)
    assert ATTACKS.get("beyond_rank")().sweep_screen == "auto" and _wide_finisher(batch).sweep_screen == "auto"
    for value in ("auto", 0, 4):  # as `--option sweep_screen=...` gives them
        assert attack_instance("beyond_rank", {"sweep_screen": value}, 0).sweep_screen == value
        assert attack_instance("auto", {"beyond_rank": {"sweep_screen": value}}, 0) is not None
    for value in ("fast", 2.5, -1, True):
        with pytest.raises(InputError, match="sweep_screen"):
            attack_instance("beyond_rank", {"sweep_screen": value}, 0)
    for fast, want in ((True, targets.SCREEN), (False, 0)):
        monkeypatch.setattr(device_module, "fast_bfloat16", lambda device, fast=fast: fast)
        descent = TargetDescent(layout, grads, len(truth), specials, sweeps=8, screen="auto")
        assert descent.screen == want
        assert descent.run([list(t) for t in tracks], [], pins.allowed) == truth
        assert descent.report["screen"] == want and (descent.scored["rough"] > 0) == fast


def test_sweep_release_lets_the_held_pairs_go_once_its_share_of_the_time_is_spent(batch, monkeypatch):
    # session 37: at 450 CPU s the others never settle, so `defer` alone held its pairs to the end (large_batch_s36/)
    from textleak.core import budget

    first, _, _ = _swept(batch, monkeypatch, None)
    initial = [d for d, _ in first]
    far, shortest = sorted(initial)[len(initial) // 2], min(n for _, n in first)
    kw = dict(sweeps=8, defer=far - 1e-9, defer_length=shortest)
    with budget.time_budget(1e6):  # a share of 1e-15 of the time: spent at once
        seen, descent = _swept(batch, monkeypatch, None, release=1e-15, **kw)
    assert _firsts(seen, initial) == _firsts(first, initial)  # no pair held: swept as paired
    assert descent.swept["released"] == descent.swept["swept"] > 0 and descent.swept["held"] == 0
    with budget.time_budget(1e6):  # half of a long budget: never spent here, the pairs held as without
        seen, descent = _swept(batch, monkeypatch, None, release=0.5, **kw)
    at = _firsts(seen, initial)
    assert max(at[d] for d in initial if d < far) < min(at[d] for d in initial if d >= far)
    assert descent.swept["released"] == 0
    assert _wide_finisher(batch, sweep_release=0.5).sweep_release == 0.5 and _wide_finisher(batch).sweep_release == 0
    with pytest.raises(InputError, match="sweep_release"):
        ATTACKS.get("beyond_rank")(sweep_release=1.5).check_options()


def test_sweeps_go_on_until_a_round_changes_nothing_unless_capped(batch, monkeypatch):
    """Session 38: the descent's rounds were capped at 8, which a 1200 CPU s batch-64 run reached with 140 CPU s left
    and its pairs still changing; now they go on until a round changes nothing (`sweeps` still caps them where set)."""
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 1)
    calls = []

    def sweep(self, seq, target, options, best):  # every pair gains in each of the first 12 rounds, then none
        calls.append(1)
        return seq, best * (0.99 if len(calls) <= 12 * len(truth) else 1.0)
    monkeypatch.setattr(TargetDescent, "_sweep", sweep)
    rounds = {}
    for cap in (None, 8):
        calls.clear()
        descent = TargetDescent(layout, grads, len(truth), specials, **({} if cap is None else {"sweeps": cap}))
        descent.run([list(t) for t in tracks], [], pins.allowed)
        rounds[cap] = descent.report["rounds"]
    assert rounds == {None: 13, 8: 8}


def test_held_pairs_are_swept_from_the_release_round_on(batch, monkeypatch):
    """With `defer`, the rounds that went on past 8 kept holding the long far tracks while the others still changed
    (CoLA 0 batch 64 at 1200 CPU s: 25 pairs never swept, ROUGE-1 61.4 against the capped 67.0): from round
    RELEASE_ROUND on no pair is held."""
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 1)
    calls = []

    def sweep(self, seq, target, options, best):  # every pair swept gains, for 12 rounds' worth of sweeps
        calls.append(tuple(seq))
        return seq, best * (0.99 if len(calls) <= 12 * len(truth) else 1.0)
    monkeypatch.setattr(TargetDescent, "_sweep", sweep)
    monkeypatch.setattr(TargetDescent, "_held", lambda self, tracks, best: {min(best)})  # always the first row held
    descent = TargetDescent(layout, grads, len(truth), specials, defer=0.3)
    descent.run([list(t) for t in tracks], [], pins.allowed)
    held = tuple(tracks[min(r for r, _ in descent.pairs)])
    first = calls.index(held)
    assert first == (targets.RELEASE_ROUND - 1) * (len(truth) - 1)  # not before the release round, then every round
    assert descent.report["unswept"] == 0 and descent.report["rounds"] > targets.RELEASE_ROUND


def test_sweep_revert_puts_back_a_released_pair_its_sweeps_left_far(batch, monkeypatch):
    """`sweep_revert=D` (session 39): a pair held back and then released whose sweeps leave it D or farther from its
    state is put back as it was first swept (SST-2 0 batch 64 at 1200 CPU s, every held pair released from round 8:
    ROUGE-2 29.4 against 37.2 at 450 CPU s, where 32 stay held); one its sweeps bring nearer than D keeps them."""
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 1)

    def sweep(self, seq, target, options, best):  # a held track's sweeps reorder it and bring it to `reach`
        if seq[1:-1] in (held_content, held_content[::-1]):
            return [seq[0]] + held_content[::-1] + [seq[-1]], max(reach, best * 0.9)
        return seq, best
    monkeypatch.setattr(TargetDescent, "_sweep", sweep)
    monkeypatch.setattr(TargetDescent, "_held", lambda self, tracks, best: {min(best)})  # the first row held
    row = 0
    held_content = list(tracks[row][1:-1])
    assert held_content != held_content[::-1]
    for revert, reach, back in ((0.0, 0.5, False), (0.4, 0.5, True), (0.4, 0.3, False)):
        descent = TargetDescent(layout, grads, len(truth), specials, sweeps=9, defer=0.3, revert=revert)
        out = descent.run([list(t) for t in tracks], [], pins.allowed)
        assert min(r for r, _ in descent.pairs) == row
        assert (out[row] == tracks[row]) == back
        assert descent.report.get("reverted", 0) == int(back) and ("reverted" in descent.report) == (revert > 0)
    assert _wide_finisher(batch, sweep_revert=0.4).sweep_revert == 0.4 and _wide_finisher(batch).sweep_revert == 0.3
    assert attack_instance("beyond_rank", {"sweep_revert": 0.4}, 0).sweep_revert == 0.4
    assert ATTACKS.get("beyond_rank")().sweep_revert == 0.3  # the default since session 39
    with pytest.raises(InputError, match="sweep_revert"):
        ATTACKS.get("beyond_rank")(sweep_revert=-1.0).check_options()
