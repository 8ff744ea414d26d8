"""Where the token repair's kick comes (`update_repair_kick.Kick.at`, `exact-update`'s option `repair_kick_at`): "stall"
(session 42) before the stall's block sweep, "block" (session 43, the default since session 44) only after that block
sweep kept nothing, and never in the race's traded start (`traded_kick_off`). Why: SST-2 b4 K 8 lr 1e-5 dev 1 at 800 CPU
s (session 42's lead pair) read 0.865 / 0.673 with the kick before the block sweep against the defaults' 0.994 / 0.980:
the kicks took the block moves' place and kept the traded start going, so the race never ran the untraded one."""

from __future__ import annotations

import time

import pytest

import test_update_repair_blocks as blocks_tests
from test_update_repair_kick import TRUTH, WORSE, WRONG, _Spans
from test_update_repair_slide import toy_box
from textleak.attacks import update_small_lr
from textleak.attacks.update_repair_kick import Kick

#: two tokens wrong where the toy's options offer only these: no substitution and no block move can help
OFF = [[101, 5, 6, 7, 8, 99, 102], [101, 11, 12, 14, 102]]


class _Watch(_Spans):
    """`_Spans` that records, at each descent, the block moves the repair's screen had left out by then (0: no block
    sweep ran before the kick)."""

    def descend(self, seqs, options, cover, deadline, sweeps=8, relocate=True):
        self.screened = getattr(self, "screened", []) + [self.repair.block_screened]
        return super().descend(seqs, options, cover, deadline, sweeps, relocate)


def _toy(kick: Kick, wrong: list[list[int]]):
    """The kick tests' toy repair (`toy_box`) with block sweeps at the stall (runs up to 4 tokens), a screen that
    ranks the true sentences first, and 2 block moves weighed per sentence."""
    def screen(trials):
        return [0.0 if t in TRUTH else 1.0 for t in trials]
    return toy_box(TRUTH, wrong, screen=screen, keep=2, kick=kick, block=4, block_at="stall", block_screened=0,
                   blocks_kept=0)


@pytest.mark.parametrize("at", ["stall", "block"])
def test_a_kick_at_block_leaves_the_stall_to_its_block_sweep(at):
    """From `WRONG` a block move per sentence reaches the truth: "block" kicks never (the block sweep moved the
    repair on), "stall" kicks first (to `WORSE`, a stall too; then the stalls repeat and it restores `WRONG`)."""
    spans = _Watch(WORSE)
    box = _toy(Kick(spans, 3, at), WRONG)
    spans.box = spans.repair = box
    got, report = box.run(WRONG, [0, 0], time.monotonic() + 600, exchange=False)
    assert got == TRUTH and report["misfit_after"] == 0 and report["blocks_kept"] == 2
    assert (spans.calls, box.kick.report()["kicks"]) == ((0, 0) if at == "block" else (2, 1))
    assert box.kick.report().get("at") == ("block" if at == "block" else None)


@pytest.mark.parametrize("at", ["stall", "block"])
def test_a_kick_at_block_comes_after_a_block_sweep_that_kept_nothing(at):
    """From `OFF` no block move helps: both kick once, to the truth; "block" after the block sweep screened its moves
    (moves left out by then), "stall" before it (none)."""
    spans = _Watch(TRUTH)
    box = _toy(Kick(spans, 3, at), OFF)
    spans.repair = box
    got, report = box.run(OFF, [0, 0], time.monotonic() + 600, exchange=False)
    assert got == TRUTH and report["misfit_after"] == 0 and box.kick.report()["kicks"] == 1
    assert report["blocks_kept"] == 0 and (spans.screened[0] > 0) == (at == "block")


@pytest.mark.parametrize("at", ["stall", "block"])
def test_a_kick_at_block_stays_out_of_the_races_traded_start(monkeypatch, at):
    """`update_small_lr.repair_guess` on `test_update_repair_blocks`' stubs (`cls_lengths="race"`: the traded start
    repaired first, then the untraded one): "block" repairs the traded start without the kick, the untraded with it,
    and the kick is back after; "stall" (session 42) kicks in both."""
    blocks_tests._race(monkeypatch)
    spy, seen = update_small_lr.BoxRepair, []
    run = spy.run

    def watched(self, sequences, *args, **kw):
        seen.append((sequences[0][1], self.kick))
        return run(self, sequences, *args, **kw)
    monkeypatch.setattr(spy, "run", watched)
    monkeypatch.setattr(update_small_lr, "_cls_scores",
                        lambda attack, repair, *a: setattr(repair, "kick", Kick(None, 3, attack.repair_kick_at)))
    blocks_tests._guess(monkeypatch, "stall", repair_kick=3, repair_kick_at=at)
    kick = seen[1][1]
    assert isinstance(kick, Kick) and kick.at == at and [s[0] for s in seen] == [1, 7]  # traded, then untraded
    assert seen[0][1] is (None if at == "block" else kick)


def test_repair_kick_at_is_stall_or_block():
    from textleak.errors import InputError
    from textleak.validate import attack_instance

    assert attack_instance("exact-update", {}, 0).repair_kick_at == "block"  # the default since session 44
    assert attack_instance("exact-update", {"repair_kick": 3, "repair_kick_at": "block"}, 0).repair_kick_at == "block"
    with pytest.raises(InputError, match="repair_kick_at"):
        attack_instance("exact-update", {"repair_kick_at": "full"}, 0)
