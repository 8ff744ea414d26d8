"""The token repair's block moves (`update_repair_blocks`, `BoxRepair.block`, `exact-update`'s option `repair_block`):
a run of up to `block` inner tokens cut out of a sentence and put back anywhere else in it, each sentence's moves
screened by the repair's `screen` (the [CLS] score in the attack) and the least-scored weighed on the misfit. A sentence
whose run of three tokens stands at the wrong end is repaired by one block move, where no substitution, swap or slide
of one token can (SST-2 dev batch 1 of 4 at K 8, lr 1e-5: "of the characters must" eight places off; session 37).
The option reaching the repair is tested with `repair_slide`'s, in `test_update_repair_slide`."""

from __future__ import annotations

import time

from test_update_repair_slide import _toy as slide_toy
from textleak.attacks.update_repair import BoxRepair
from textleak.attacks.update_repair_blocks import KEEP, blocks

TRUTH = [[101, 1, 2, 3, 4, 5, 6, 102], [101, 11, 12, 13, 102]]


def test_blocks_move_one_run_anywhere_and_keep_the_ends():
    seq = [101, 1, 2, 3, 4, 5, 102]
    got = blocks(seq, 2)
    assert [101, 3, 4, 5, 1, 2, 102] in got  # the run "1 2" to the end
    assert [101, 5, 1, 2, 3, 4, 102] in got  # one token four places back: beyond a slide of width 2
    assert [101, 4, 5, 1, 2, 3, 102] in got  # "4 5" to the front (equally "1 2 3" to the end)
    assert [101, 5, 4, 1, 2, 3, 102] not in got  # two runs moved
    assert [101, 1, 5, 2, 3, 4, 102] in got and [101, 2, 3, 4, 5, 1, 102] in got
    assert all(s[0] == 101 and s[-1] == 102 and sorted(s) == sorted(seq) for s in got)
    assert seq not in got and len({tuple(s) for s in got}) == len(got)
    assert len(blocks(seq, 3)) == len(got)  # a run of 3 of 5 moved is a run of 2 moved the other way
    six = [101, 1, 2, 3, 4, 5, 6, 102]
    assert [101, 4, 5, 6, 1, 2, 3, 102] in blocks(six, 3) and [101, 4, 5, 6, 1, 2, 3, 102] not in blocks(six, 2)
    assert blocks([101, 7, 102], 4) == []
    assert blocks([101, 1, 1, 102], 4) == []  # moving a token among copies of itself changes nothing


def _toy(block: int, screened: bool = True) -> BoxRepair:
    """The slide tests' toy descent (a sentence's gradient one-hot in (position, token), the box 0, no slides) on this
    module's batch: each position offers only the token standing there in the wrong batch (no substitution can help);
    the screen counts the positions a trial holds off the true sentence of its length."""
    box = slide_toy(0)
    box.block, box.blocks_kept, box.block_screened = block, 0, 0
    box.U = sum(box.gradient(s, 0) for s in TRUTH) / len(TRUTH)
    wrong = _wrong()
    box.options = lambda n: [[t] for t in next(s for s in wrong if len(s) == n)]
    if screened:
        truth = {len(s): s for s in TRUTH}
        box.screen = lambda trials: [float(sum(a != b for a, b in zip(t, truth[len(t)]))) for t in trials]
    return box


def _wrong():
    """The truth with the run "4 5 6" moved to the front of sentence 0 ("4 5 6 1 2 3")."""
    return [[101, 4, 5, 6, 1, 2, 3, 102], [101, 11, 12, 13, 102]]


def test_a_block_move_repairs_a_run_at_the_wrong_end_where_one_token_moves_cannot():
    got, off = _toy(0).run(_wrong(), [0, 0], time.monotonic() + 600, exchange=False)
    assert got == _wrong() and off["changes"] == 0 and "block" not in off
    box = _toy(3)
    made = box.trials  # the toy's U made
    got, on = box.run(_wrong(), [0, 0], time.monotonic() + 600, exchange=False)
    assert got == TRUTH and on["misfit_after"] == 0 and on["changes"] == 1
    assert on["block"] == 3 and on["blocks_kept"] == 1 and on["block_screened"] == len(blocks(_wrong()[0], 3)) - KEEP
    # the batch, KEEP moves of sentence 0, all 4 of sentence 1
    assert box.trials - made == 2 + KEEP + len(blocks(_wrong()[1], 3))
    # without a screen no block move is weighed (each would cost a gradient)
    got, bare = _toy(3, screened=False).run(_wrong(), [0, 0], time.monotonic() + 600, exchange=False)
    assert got == _wrong() and bare["blocks_kept"] == 0 and bare["block_screened"] == 0


def test_a_sentence_changed_by_a_substitution_tries_no_block_move_in_that_sweep():
    box = _toy(3)
    wrong = _wrong()
    wrong[1][2] = 14  # "11 14 13": the substitution 14 -> 12 repairs it
    box.options = lambda n: [[t] for t in wrong[0]] if n == len(wrong[0]) else [[101], [11], [14, 12], [13], [102]]
    made = box.trials
    got, on = box.run(wrong, [0, 0], time.monotonic() + 600, exchange=False)
    assert got == TRUTH and on["changes"] == 2 and on["blocks_kept"] == 1
    # the batch, KEEP moves of sentence 0; sentence 1: its substitution and the two swaps of the changed token, no block
    assert box.trials - made == 2 + KEEP + 1 + 2
