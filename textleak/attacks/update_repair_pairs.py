"""Pairs of substitutions at two neighbouring positions in the token repair (`update_repair.BoxRepair.pairs`,
`exact-update`'s option `repair_pairs`; session 42, with `refill` 16 by default since session 43).

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
In the repair that pair was refused (`replay_pairs.py.txt`, `cover_check.py.txt` there): it takes "the" out of the
batch, a moved word row's token (`BoxRepair.cover`), whose true place is in another sentence. So a pair that takes
one token of `cover` out is weighed with that token put back elsewhere (`refill`, session 43): on that end the pair
with "the" put into slot 0 reaches 2.209e-4 (the lowest of slot 0's 42 placements), and 150 CPU s of the repair on
from there 1.005e-4, 3 of 4 exact, 0.971 / 0.835 (`recipes/measured/fedavg_pairs_s43/`).
"""

from __future__ import annotations

from typing import Any, Sequence

from ..core.budget import now as budget_now
from .update_repair_keep import fresh_mean
from .update_repair_moves import KEEP, least_screened, missing


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
    misfit where that lowers the batch's (`repair.keep_best`); where none does and a screened pair takes a token of
    `repair.cover` out of the batch, that token is put back into another sentence with it (`refill`). Counted in
    `repair.pairs_kept` (`pairs_refilled`), the pairs the screen left out in `repair.pairs_screened`; nothing once
    the budget has ended. Whether it was."""
    if not 0 < len(seqs[b]) <= getattr(repair, "pairs", 0) or repair.screen is None:
        return False
    if budget_now() >= repair._deadline:
        return False
    kept, left_out = least_screened(repair, neighbour_pairs(seqs[b], repair.options(len(seqs[b]))))
    repair.pairs_screened += left_out
    if repair.keep_best(seqs, b, kept) or (repair.cover and refill(repair, seqs, b, kept)):
        repair.pairs_kept += 1
        return True
    return False


def refill(repair: Any, seqs: list[list[int]], b: int, trials: list[list[int]]) -> bool:
    """Of sentence b's `trials` that take exactly one token of `repair.cover` out of the batch (`keep_best` refuses
    them), the one of least box misfit alone, where that lowers the batch's, kept together with the token put back in
    place of one token of another sentence: of those placements (where the pins allow the token, leaving no more of
    `cover` out), the `keep` of least rise in that sentence's [CLS] score are weighed, and the least box misfit below
    the batch's is kept (changing `seqs` in place; `repair.pairs_refilled` counts them). Whether one was.
    SST-2 dev batch 0 of 4, K 8, lr 1e-5 (session 43, `recipes/measured/fedavg_pairs_s43/`): "are the" -> "- ever"
    takes "the" out; alone 2.352e-4 -> 2.304e-4, with "the" put back into slot 0 2.209e-4."""
    labels, own = repair._labels, repair._own
    others = {t for i, s in enumerate(seqs) if i != b for t in s}  # the tokens the other sentences hold
    absent = repair.cover - others - set(seqs[b])
    best = None
    for trial in trials:
        gone = repair.cover - others - set(trial)
        if len(gone) != len(absent) + 1 or budget_now() >= repair._deadline:
            continue
        g = repair.gradient(trial, labels[b])
        value = repair.misfit(fresh_mean(repair._total, [(g, own[b])], repair._B))
        if value < repair._best and (best is None or value < best[0]):
            best = (value, trial, g, next(iter(gone - absent)))
    if best is None:
        return False
    _, trial, g, token = best
    below: list[tuple] = []
    for c, x in _placements(repair, seqs, b, trial, token):
        if budget_now() >= repair._deadline:
            break
        gc = repair.gradient(x, labels[c])
        total = fresh_mean(repair._total, [(g, own[b]), (gc, own[c])], repair._B)
        value = repair.misfit(total)
        if value < repair._best:
            repair._offer(below, (value, c, x, gc, total))
    found = repair._guarded(below, lambda f: {b: trial, f[1]: f[2]})
    if found is None:
        return False
    value, c, x, gc, total = found
    repair._keep_change(seqs, value, {b: (trial, g), c: (x, gc)}, total)
    repair.pairs_refilled += 1
    return True


def _placements(repair: Any, seqs: list[list[int]], b: int, trial: list[int], token: int) -> list[tuple[int, list]]:
    """`refill`'s placements of `token` into a sentence c other than b (sentence b as `trial`): (c, the new sentence
    c), each an inner position where the pins allow `token` and whose own token stays in the batch where `cover` holds
    it; the `keep` (`KEEP` where 0) of least rise in c's [CLS] score over its sentence's score."""
    allowed = getattr(repair.pins, "allowed", None) or []
    lacking, out = missing(seqs, repair.cover), []
    for c in range(len(seqs)):
        for q in range(1, len(seqs[c]) - 1):
            if c == b or seqs[c][q] == token or (q < len(allowed) and allowed[q] and token not in allowed[q]):
                continue
            x = seqs[c][:q] + [token] + seqs[c][q + 1:]
            batch = [trial if i == b else x if i == c else s for i, s in enumerate(seqs)]
            if missing(batch, repair.cover) <= lacking:
                out.append((c, x))
    if len(out) <= (repair.keep or KEEP):
        return out
    rows = sorted({c for c, _ in out})
    now = dict(zip(rows, repair.screen([seqs[c] for c in rows])))
    scores = repair.screen([x for _, x in out])
    order = sorted(range(len(out)), key=lambda i: scores[i] - now[out[i][0]])
    return [out[i] for i in order[:repair.keep or KEEP]]
