"""Pairs of substitutions at two neighbouring positions in the token repair (`update_repair.BoxRepair.pairs`,
`exact-update`'s option `repair_pairs`, off; session 42).

At a block sweep (`update_repair_blocks.block_sweep`: after a sweep that changed nothing), a sentence of at most
`pairs` tokens whose block moves lowered nothing tries its neighbouring pairs: the tokens at positions p and p + 1
both replaced, each by one of the tokens the repair tries there (`BoxRepair.options`), screened like the block moves
(`update_repair_moves.least_screened`: the `keep` of least [CLS] score weighed on the box misfit). Every move the
repair had before changes one token, or keeps a sentence's (or the batch's) tokens; none puts two new tokens in at once.

Why (ground truth, `recipes/measured/fedavg_small_lr5_s42/probe_pairs.py.txt`): SST-2 dev batch 0 of 4 at K 8, lr
1e-5, the defaults' end at 800 CPU s (session 41, box misfit 2.352e-4, the truth's 0) holds "marvelous documentary
touches ever are the so gracefully - -" for "... touches - - ever so gracefully - -". None of the 3 truthward single
substitutions lowers the misfit; the pair "are the" -> "- ever" does (2.304e-4), ranks 5th of that sentence's 2,086
neighbouring pairs on the [CLS] screen (6.5 CPU s of forwards) and is the only one of the 8 it ranks first that
lowers it; from it one sweep of that sentence's substitutions puts "ever" -> "-" and makes the sentence exact (misfit
1.328e-4, 3 of 4 exact). A sentence of n tokens has about 225 (n - 3) such pairs at width 16: hence the length cap.
But in the repair that pair is refused (`replay_pairs.py.txt`, `cover_check.py.txt` there): it takes "the" out of the
batch, a moved word row's token (`BoxRepair.cover`); with `cover` off the block sweep keeps it (2.304e-4). Side by side
at 800 CPU s (load 13) neither arm reached a stall, so the option never acted. Not supported: off.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..core.budget import now as budget_now
from .update_repair_moves import least_screened


def neighbour_pairs(seq: Sequence[int], options: Sequence[Sequence[int]]) -> list[list[int]]:
    """The sentence `seq` ([CLS] ... [SEP], both kept) with the tokens at two neighbouring inner positions p, p + 1
    both replaced, each by one of `options[p]` / `options[p + 1]` other than the one standing there; distinct, in
    order of p, then the options' order."""
    out, seen = [], {tuple(seq)}
    for p in range(1, len(seq) - 2):
        for u in options[p]:
            for v in options[p + 1]:
                if u == seq[p] or v == seq[p + 1]:
                    continue
                trial = list(seq[:p]) + [u, v] + list(seq[p + 2:])
                if tuple(trial) not in seen:
                    seen.add(tuple(trial))
                    out.append(trial)
    return out


def pair_step(repair: Any, seqs: list[list[int]], b: int) -> bool:
    """Option `repair_pairs` (`repair.pairs`; 0 off): where sentence b of `seqs` holds at most that many tokens and the
    repair has a screen, it is replaced (in place) by its screened neighbouring pair (`neighbour_pairs`) of least box
    misfit where that lowers the batch's (`repair.keep_best`); counted in `repair.pairs_kept`, the pairs the screen
    left out in `repair.pairs_screened`; nothing once the budget has ended. Whether it was."""
    if not 0 < len(seqs[b]) <= getattr(repair, "pairs", 0) or repair.screen is None:
        return False
    if budget_now() >= repair._deadline:
        return False
    kept, left_out = least_screened(repair, neighbour_pairs(seqs[b], repair.options(len(seqs[b]))))
    repair.pairs_screened += left_out
    if repair.keep_best(seqs, b, kept):
        repair.pairs_kept += 1
        return True
    return False
