"""Where whole sentences come from: one beam search over prefixes (`beam`), random draws from the
per-position candidates (`draw`), and settling (`settle`), which turns a seed into a fixed point
of the layer-1 residual."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from ...core import budget
from ...text.leaks import slot_residuals
from ...text.leaks import slots
from .sequences import follows, resembles

if TYPE_CHECKING:
    from .search import Search


def beam(search: "Search", wanted: dict[int, int], widen: int = 1) -> dict[int, list[tuple[float, list[int]]]]:
    """One beam search over prefixes, left to right, shared by the sentences still wanted.

    A prefix is scored by the sum, over its tokens, of each token's layer-1 residual when it
    was appended (attending to the prefix before it; the unknown rest left out), the way a
    decoder's beam sums log-probabilities; `slot_residuals` makes each step cost one token
    per (prefix, candidate). Early tokens see little context, so the beam loses many true
    prefixes: its completions are seeds for `settle`, not answers. Prefixes that retrace a
    found sentence (up to one token, or from 6 tokens on with 80% of its tokens in its
    order) or grow it past its end are dropped: they would crowd the beam. Wherever a prefix
    could end a wanted length, its completion (with [SEP]) is scored on the whole-sentence
    residual."""
    cfg, free, ends, dev = search.config, search.free, search.ends, search.layout.device
    widest = max(len(free(p)) for p in range(max(wanted)))
    # at least `trials` candidates per step: cheap where layer 0 left few tokens per position
    width = max(cfg.beam * len(search.missing), cfg.trials // max(widest, 1)) * widen
    stems = [f[:-1] if ends else f for f in search.found]
    beams: list[list[int]] = [[search.cls_id]] if ends else [[]]
    scores = torch.zeros(1, dtype=torch.double, device=dev)
    finished: dict[int, list[tuple[float, list[int]]]] = {n: [] for n in wanted}
    for p in range(len(beams[0]), max(wanted) - (1 if ends else 0)):
        if budget.expired():  # (#16) past the rank limit one step can take minutes
            break
        keep = [i for i, b in enumerate(beams) if not any(resembles(b, s) for s in stems)]
        beams, scores = [beams[i] for i in keep], scores[keep]
        options = free(p)
        if not beams:
            break
        trials = [prefix + [t] for prefix in beams for t in options]
        barred = torch.tensor([any(follows(t, s) for s in stems) for t in trials], dtype=torch.bool, device=dev) \
            if stems else torch.zeros(len(trials), dtype=torch.bool, device=dev)
        total = step_totals(search, torch.tensor(beams, device=dev), scores, torch.tensor(options, device=dev), width,
                            barred)
        top = torch.argsort(total)[:width]
        order = top[total[top] < float("inf")].tolist()
        if not order:
            break
        beams, scores = [trials[i] for i in order], total[order]
        n = p + 2 if ends else p + 1
        if n in wanted:
            done = [b + [search.sep_id] if ends else b for b in beams]
            finished[n] += [(float(r), d) for r, d in zip(search.residuals(done).tolist(), done)]
    if ends and 2 in wanted:
        pair = [search.cls_id, search.sep_id]
        finished[2] = [(float(search.residuals([pair])[0]), pair)]
    return finished


def step_totals(search: "Search", beams: torch.Tensor, scores: torch.Tensor, options: torch.Tensor, width: int,
                barred: torch.Tensor) -> torch.Tensor:
    """Each (beam [W, p], option [c]) pair's prefix score: the beam's `scores` [W] plus the option's slot residual,
    flattened [W x c], inf where `barred` [W x c]. With `search.slot_screen` > 0 and more than 2 x `width` pairs (and
    at least `leaks.slots.SCREEN_PAIRS`), every pair is scored at bfloat16 first and only the 2 x `width` least totals
    are rescored as without the screen (the rest inf): the beam's choice of its `width` is then float32's wherever
    those are among the screen's."""
    layout, span1, W, c = search.layout, search.span1, len(beams), len(options)
    rough = search.slot_screen > 0 and W * c > 2 * width and W * c >= slots.SCREEN_PAIRS

    def scored(rows: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
        return torch.cat([slot_residuals(layout, span1, rows[i:i + 64], cands if cands.dim() == 1 else cands[i:i + 64],
                                         rough=rough and cands.dim() == 1) for i in range(0, len(rows), 64)])

    total = (scores[:, None] + scored(beams, options)).flatten().masked_fill(barred, float("inf"))
    if not rough:
        return total
    keep = torch.argsort(total)[:2 * width]
    keep = keep[total[keep] < float("inf")]
    rows, cols = keep // c, keep % c
    exact = torch.full_like(total, float("inf"))
    exact[keep] = scores[rows] + scored(beams[rows], options[cols][:, None])[:, 0]
    return exact


def draw(search: "Search", n: int) -> list[int]:
    """A sentence of length n drawn from the per-position candidates; where every slot of this
    length is masked, [MASK] is what BERT's masking puts there 80% of the time."""
    rng, every, ends = search.rng, search.cands.every, search.ends
    body = [search.mask_id if q in every.get(n, ()) and rng.random() < 0.8 else rng.choice(search.free(q, n))
            for q in range(1 if ends else 0, n - 1 if ends else n)]
    return [search.cls_id] + body + [search.sep_id] if ends else body


def settle(search: "Search", seqs: list[list[int]], known: Sequence[list[int]] = ()) -> list[list[int]]:
    """Re-choose each token as the candidate whose own layer-1 residual, in the context of
    the rest of the sentence as it stands, is least; repeat until no token changes.

    In the true sentence every token's residual is ~0 and no other candidate's is, so it is
    a fixed point; from a seed with enough of it right, the rest falls into place. Each pass
    costs one token per (position, candidate) (`slot_residuals`), not a whole sentence;
    seeds of one length settle side by side. Most seeds fall into the same few wrong fixed
    points (a true sentence of another length, cut or shifted): a seed whose pass ends within
    two tokens of one of the `known` misses stops there. With `search.slot_screen` K > 0 each position's
    candidates are screened at bfloat16 and each seed's K least rescored as without it (`leaks.slots.screened`):
    every token chosen is the least of those rescored."""
    if not seqs:
        return []
    dev = search.layout.device
    rows = torch.tensor(seqs, device=dev)
    n = rows.shape[1]
    known_rows = torch.tensor([k for k in known if len(k) == n], dtype=torch.long, device=dev).reshape(-1, n)
    inner = range(1, n - 1) if search.ends else range(n)
    active = torch.ones(len(rows), dtype=torch.bool, device=dev)
    for sweep in range(search.config.settle):
        if sweep and budget.expired():  # a sweep over a long sentence's wide candidates takes seconds
            break
        if sweep and len(known_rows):
            near_known = ((rows[:, None, :] != known_rows[None]).sum(-1) <= 2).any(1)
            active &= ~near_known
        idx = active.nonzero().flatten()
        if len(idx) == 0:
            break
        changed = torch.zeros(len(rows), dtype=torch.bool, device=dev)
        for p in inner:
            options = torch.tensor(search.free(p, n), device=dev)
            cur = rows[idx]
            scores = slot_residuals(search.layout, search.span1, cur[:, :p], options, cur[:, p + 1:],
                                    screen=search.slot_screen)
            best = options[scores.argmin(1)]
            changed[idx] |= best != cur[:, p]
            rows[idx, p] = best
        active &= changed
    return rows.tolist()
