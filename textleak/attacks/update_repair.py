"""Repairing a guessed batch against a rounded FedAvg update, token by token (`exact-update` at small learning rates).

At small learning rates a float32 client's rounding swamps the weak directions of each layer's
span (`update_rounding`): the fitted spans narrow the candidates, but single wrong tokens still
sit as close to layer 1's span as true ones (MiniLM, CoLA dev batch 4, K = 8, lr 1e-4: 16 of 728
one-token substitutions do), so the span search stops one or two tokens short, or settles a
sentence onto another's tokens. The whole update still tells them apart: every layer's Q/K/V
gradient depends on every token, and the true batch's gradient lies inside the box that the
rounding allows around U in every entry (|U - G| <= ulp(w) / (2 lr), `update_rounding`), where a
batch one token off leaves it in many.

So the guess is repaired by coordinate descent on the box misfit

    m(batch) = sum over the Q/K/V weights of every layer of relu(|G(batch) - U| - half)^2,

G(batch) the batch's mean-loss gradient (with the labels as solved) at the trajectory's
midpoint: each position of each sentence tries the tokens whose layer-0 input lies closest to the
fitted layer-0 span (`width` of them, from the batch's vocabulary; on MiniLM, CoLA dev batch 4,
lr 1e-4, the true token ranked up to 11th there) and keeps the best, sweeping until nothing
improves or the budget ends; each sweep ends with pairs of sentences trading the token at one
position or their whole heads up to it (`_exchange`: a slot that took another's tokens). A
sentence's gradient is computed alone (the batch gradient is the mean of the sentences'), so a
trial costs one forward and backward of one sentence. This narrows, it does not certify: the
simulation certificate (`update_sim`) still decides. Classification only.

With ranked pins (`update_batch_positions.RankedPositions`, batch > 1 where the rounding is wide) the tokens are
tried in the pins' order (the embedding rows' least-squares weight: the true token among the first 16 at every
position measured, where the layer-0 ranking missed 8 of 42 on SST-2 dev batch 0 at lr 1e-4), and no trial that
leaves a token whose word row moved out of the whole batch is kept (`cover`, `missing`).

The trades and the cross-sentence move (option `cross_move`, off) are `update_repair_moves.RepairMoves`; which
offered change is kept, and keeping it, `update_repair_keep.RepairKeep`.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from ..core.budget import now as budget_now
from ..text.layouts import Layout
from ..text.leaks.residuals import partial_residuals
from ..text.leaks.spans import LayerSpan
from .update_repair_batch import weighed
from .update_repair_blocks import BLOCK_AT_DEFAULT, block_step, stall_blocks
from .update_repair_cutoff import box_terms, mean_into
from .update_repair_keep import RepairKeep, fresh_mean
from .update_repair_moves import RepairMoves, missing, slides
from .update_rounding import RoundingFits

#: tokens tried at each position (closest to the fitted layer-0 span first)
WIDTH = 16
#: sweeps over every position of every sentence at most
SWEEPS = 6


class BoxRepair(RepairMoves, RepairKeep):
    """Coordinate descent of a guessed batch on the box misfit (see the module doc).

    layout: the model at the trajectory's midpoint; fits: the run's `RoundingFits` (U, its box, w0);
    span0: the fitted layer-0 span; vocab: token ids worth trying."""

    #: option `repair_block`: a sentence whose substitutions, swaps and slides changed nothing in a sweep tries its
    #: block moves (`update_repair_blocks`: a run of up to `block` tokens put elsewhere in its sentence), the `keep`
    #: of least `screen` score weighed; 0: off.
    #: `blocks_kept`: block moves kept; `block_screened`: block moves the screen left out
    block, blocks_kept, block_screened = 0, 0, 0
    #: option `repair_block_keep` (0: `keep`): the block moves a sentence weighs
    #: (`update_repair_blocks.screened_blocks`)
    block_keep = 0
    #: option `repair_block_peeled` (None: off): the block moves screened on each sentence's own [CLS] direction
    #: (`update_repair_peeled.PeeledPooler`)
    peeled: Any = None
    #: option `repair_batch`: the trials' gradients this many at a time (`update_repair_batch`; 0: one at a time)
    batch, _batcher = 0, None
    #: option `repair_block_at` (`update_repair_blocks.BLOCK_AT`): "sweep", block moves in each sentence that nothing
    #: else changed in a sweep; "stall" (the default, `BLOCK_AT_DEFAULT`), in every sentence after a sweep that changed
    #: nothing (`block_sweep`)
    block_at = BLOCK_AT_DEFAULT
    #: option `repair_block_short` (off): a block sweep takes the shortest sentences first (`block_sweep`)
    block_short = False
    #: option `repair_block_late` (on since session 41; the race's traded start): block sweeps only where `block_due`;
    #: its stalls (spent, left, due) in `late_stalls`
    block_late, late_stalls, _began = False, (), 0.0
    #: option `repair_block_owed` (here off; `exact-update`'s on since session 46): with `block_late`, a stall's
    #: block sweep that was not due is paid once it is (`update_repair_blocks.stall_blocks`); each payment's (spent,
    #: left, changes) in `owed_paid`
    block_owed, owed_paid, _owed = False, (), False
    #: option `repair_kick` (off: None): at a screened sweeps' stall (before its block sweep; with `repair_kick_at`
    #: "block", after it kept nothing) `update_repair_kick.Kick` may move the batch; the run ends on the least-misfit
    #: batch it saw
    kick: Any = None
    #: option `repair_pairs` (here 0; `exact-update` 16): in a block sweep a sentence of at most `pairs` tokens that no
    #: block move lowered tries two neighbouring substitutions at once (`update_repair_pairs`); kept (of them with a
    #: token of `cover` put back elsewhere), and left out by the screen
    pairs, pairs_kept, pairs_refilled, pairs_screened = 0, 0, 0, 0
    #: option `repair_pin_fill` (0: off): in a block sweep a sentence that no block move nor pair lowered tries the
    #: pins' tokens that no sentence holds at their place put in there, a run cut out elsewhere, the `fill` of least
    #: screen score weighed (`update_repair_fill`); kept, left out by the screen
    fill, fills_kept, fills_screened = 0, 0, 0
    #: option `repair_memo` (`update_cls_memo.ScoreMemo`, set by `update_small_lr._cls_scores`): the [CLS] scores
    #: of `screen`, `guard` and the kick's descents kept per sentence; None: off
    memo: Any = None
    #: float64, or float32 with option `repair_float32` (`__init__`)
    dtype = torch.float64

    def __init__(self, layout: Layout, fits: RoundingFits, span0: LayerSpan, vocab: torch.Tensor,
                 width: int = WIDTH, sweeps: int = SWEEPS, pins: Any = None, move: bool = False,
                 screen: Callable[[list[list[int]]], list[float]] | None = None, keep: int = 0,
                 first_keep: int = 0, exchange_keep: int = 0, inplace: bool = False, slide: int = 0,
                 block: int = 0, float32: bool = False):
        self.layout, self.span0, self.width, self.sweeps, self.pins = layout, span0, width, sweeps, pins
        self.move, self.moves = move, 0
        #: option `repair_screen`: each position's trial sentences scored by `screen` (one forward each: the [CLS]
        #: spans' `update_cls.ClsSpans.score`), only the `keep` lowest get a gradient (0: all); `screened` counts
        #: the trials left out
        self.screen, self.keep, self.screened, self._screening = screen, keep, 0, False
        #: option `repair_screen_from`: the screened sweeps keep `first_keep` (< `keep`; 0: `keep` from the first),
        #: twice as many after a screened sweep that changes nothing, up to `keep` (cheaper sweeps while cheap
        #: changes are left: a box trial costs a backward, the screen a forward)
        self.first_keep, self._keep = first_keep, keep
        #: option `repair_exchange_screen`: in the screened sweeps each pair of sentences' trades (`_exchange`) are
        #: scored by `screen` (the two sentences' scores summed), only the `exchange_keep` lowest get gradients (0:
        #: all); `exchange_screened` counts the trades left out, `exchange_trials` the gradients the trades took
        self.exchange_keep, self.exchange_screened, self.exchange_trials = exchange_keep, 0, 0
        #: option `repair_cls_guard`: a change (substitution, trade, move) is kept only where `guard` (per sentence,
        #: lower is better: the [CLS] spans' score) raises no changed sentence's score; of the changes that lower the
        #: misfit, the least-misfit one the guard passes is kept (one `guard` call a candidate weighed); `guarded`
        #: counts those refused. Off (None): the least-misfit change, as before
        self.guard: Callable[[list[list[int]]], list[float]] | None = None
        self.guarded, self._cls = 0, []
        #: option `repair_guard_first`: with a `guard`, each trial's changed sentences are scored by it before their
        #: gradients, and a trial it would refuse gets none (`_passing`: the same change kept, a forward where a
        #: backward was); `unweighed` counts those left out
        self.guard_first, self.unweighed = False, 0
        #: option `repair_inplace`: a trial's batch gradient and misfit computed in two scratch buffers (the same
        #: operations in the same order, so the same values to the bit) where the plain expressions make ~9
        #: temporaries of the Q/K/V weights' size a trial (MiniLM: 2.65M float64, 21 MB each): RT dev batch 0 of 4,
        #: K 8, lr 1e-5, a trial's misfit took 46 ms beside a 38-token gradient's 46.5 (`_shifted`, `misfit`)
        self.inplace, self._scratch = inplace, None
        #: option `repair_float32`: the trials' gradients, the batch's mean and the misfit kept in float32, not float64
        #: (`dtype`): the model's gradients are float32 already, and a misfit took 4.6 ms against 10.6 (MiniLM's 2.65M
        #: Q/K/V entries, in place; `fedavg_batch_s44/`). Not the same bits, so an option (session 45)
        self.dtype = torch.float32 if float32 else torch.float64
        #: option `repair_slide`: after each sentence's swaps, its slides (`update_repair_moves.slides`: a token moved
        #: up to `slide` places, the tokens between shifted) weighed like its substitutions (screened in the screened
        #: sweeps); 0: off
        self.slide, self.block = slide, block
        self.vocab = vocab.to(layout.device).long()
        layers = len(layout.layers)
        self.names = [n for k in range(layers) for n in layout.shared(fits.update, layout.qkv_names(k))]
        parts = [fits.matrices(k) for k in range(layers) if layout.shared(fits.update, layout.qkv_names(k))]
        self.U = torch.cat([u.flatten() for u, _ in parts]).to(self.dtype)
        self.half = torch.cat([h.flatten() for _, h in parts]).to(self.dtype)
        params = dict(layout.model.named_parameters())
        self.params = [params[n] for n in self.names]
        self.trials = 0
        #: with ranked pins (`update_batch_positions.RankedPositions`): the batch's tokens (the moved word rows),
        #: which no kept trial may leave out of the batch where the guess holds them all
        order = getattr(pins, "order", None)
        self.cover = {t for row in order for t in row} & set(self.vocab.tolist()) if order is not None else None

    def gradient(self, seq: Sequence[int], label: int) -> torch.Tensor:
        """One sentence's loss gradient on the Q/K/V weights, flattened, as `dtype` (`repair_float32`: float32)."""
        model = self.layout.model
        ids = torch.tensor([list(seq)], device=self.layout.device)
        y = torch.tensor([int(label)], device=self.layout.device)
        was = model.training
        model.eval()
        try:
            grads = self.layout.loss_gradient(ids, y, self.params, torch.ones_like(ids))
        finally:
            model.train(was)
        self.trials += 1
        return torch.cat([g.flatten() for g in grads]).to(self.dtype)

    def misfit(self, G: torch.Tensor) -> float:
        """sum of relu(|G - U| - half)^2 over the Q/K/V entries (G: [entries], `dtype`); with `inplace` in a scratch
        buffer (`_buffers`), the same value to the bit (x * x is how torch squares)."""
        if not self.inplace:
            return float(torch.relu((G - self.U).abs() - self.half).pow(2).sum())
        return box_terms(G, self.U, self.half, self._buffers()[1])

    def _shifted(self, changes: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The batch's mean gradient with some sentences' gradients changed: `_total` + (g1 - own1 + g2 - own2 ...)
        / B, summed left to right (changes: (new gradient, the sentence's own), [entries] each). With `inplace` it is
        scratch buffer 0 (good until the next call; the same value to the bit), else a new tensor."""
        if not self.inplace:
            return fresh_mean(self._total, changes, self._B)
        return mean_into(self._buffers()[0], changes, self._total, self._B)

    def _buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Option `repair_inplace`'s two scratch buffers, the size and dtype of `U` (made once)."""
        if self._scratch is None:
            self._scratch = tuple(torch.empty_like(self.U) for _ in range(2))
        return self._scratch

    def options(self, length: int) -> list[list[int]]:
        """Per position, up to `width` token ids, closest to the fitted layer-0 span first; with `pins`
        (`update_batch_positions`), the tokens placed there first and only the tokens allowed there."""
        V = len(self.vocab)
        ids = self.vocab[:, None].expand(V, length)
        pos = torch.arange(length, device=self.layout.device)[None].expand(V, length)
        res = partial_residuals(self.layout, self.span0, ids, pos)  # [V, length]
        if self.pins is not None:
            res = res.clone()
            vocab = self.vocab.tolist()
            for p in range(min(length, len(self.pins.allowed))):
                allowed = self.pins.allowed[p]
                keep = torch.tensor([t in allowed for t in vocab], device=res.device)
                placed = torch.tensor([p in self.pins.placed.get(t, ()) for t in vocab], device=res.device)
                if bool(keep.any()):
                    res[~keep, p] = float("inf")
                res[placed, p] = -1.0
        top = res.topk(min(self.width, V), dim=0, largest=False)  # [width, length]
        options = self.vocab[top.indices].T.tolist()
        finite = torch.isfinite(top.values).T.tolist()
        out = [[t for t, ok in zip(row, fine) if ok] or row[:1] for row, fine in zip(options, finite)]
        return self._ranked(out)

    def _ranked(self, options: list[list[int]]) -> list[list[int]]:
        """Where the pins rank each position's allowed tokens (`update_batch_positions.RankedPositions`), the
        first `width` of them replace the layer-0 ranking (MiniLM, K 8, batch 4, SST-2 dev batch 0 at lr 1e-4:
        the layer-0 ranking left the true token out of 8 of the long sentence's 42 positions, the ranking by
        the embedding rows' least-squares weight none, at rank 12 at most; ground truth in session 20)."""
        order = getattr(self.pins, "order", None)
        if order is None:
            return options
        known = set(self.vocab.tolist())
        ranked = [[t for t in order[p] if t in known][:self.width] if p < len(order) else []
                  for p in range(len(options))]
        return [row or fallback for row, fallback in zip(ranked, options)]

    def run(self, sequences: Sequence[Sequence[int]], labels: Sequence[int], deadline: float,
            order: Sequence[int] | None = None, exchange: bool = True) -> tuple[list[list[int]], dict[str, Any]]:
        """Sweeps over every position of every sentence: each tries its `width` tokens and keeps the
        best; then a repaired token may trade places with another (when it took another position's
        token, each single substitution back is worse). `order`: the sentences to repair first (the
        least certain: the budget may end within a sweep); with `exchange`, each sweep ends with
        two sentences trading tokens (`_exchange`), and with `move` too each sweep starts with a token moved
        to another sentence (`_move`). With a `screen`, sweeps weigh only each position's `keep` trials of least
        screen score (not counted against `sweeps`) until one changes nothing, then full sweeps."""
        began = time.process_time()
        seqs, start = self.begin(sequences, labels, deadline)
        moved: list[set[int]] = [set() for _ in seqs]
        sweeps = screened = 0
        screens = self.screen is not None and self.keep > 0
        self._screening = screens  # screened sweeps first, uncounted
        self._keep = min(self.first_keep, self.keep) if self.first_keep > 0 else self.keep
        keeps: list[int] = []
        while sweeps < self.sweeps and budget_now() < deadline and self._best > 0:  # at 0 no trial can be kept
            before = self._changes
            if self.move and exchange:
                self._move(seqs)
            for b in (order if order is not None else range(len(seqs))):
                if self._best <= 0:  # inside the box within the sweep: nothing left to weigh
                    break
                options, changes = self.options(len(seqs[b])), self._changes
                for p in range(1, len(seqs[b]) - 1):  # [CLS] and [SEP] stay
                    trials = self._screened(seqs, b, [seqs[b][:p] + [t] + seqs[b][p + 1:] for t in options[p]])
                    if self.keep_best(seqs, b, trials):
                        moved[b].add(p)
                swaps = {(min(p, q), max(p, q)) for p in moved[b] for q in range(1, len(seqs[b]) - 1)
                         if seqs[b][q] != seqs[b][p]}
                self.keep_best(seqs, b, self._screened(seqs, b, [_swapped(seqs[b], p, q) for p, q in sorted(swaps)]))
                if self.slide > 0:  # option `repair_slide`: a token moved up to `slide` places (`slides`)
                    self.keep_best(seqs, b, self._screened(seqs, b, slides(seqs[b], self.slide)))
                if self.block > 0 and self.block_at == "sweep" and self._changes == changes:  # nothing else changed it
                    block_step(self, seqs, b)  # option `repair_block`
                if self.move and exchange:
                    self._move(seqs)
            if exchange:
                self._exchange(seqs)
            kicked = self.kick is not None and self.kick.due(self, seqs, before)  # option `repair_kick`, blocks after
            stalled = (not kicked and self.block > 0 and self.block_at == "stall" and self._changes == before
                       and self._best > 0)
            resume = stall_blocks(self, seqs, order if order is not None else range(len(seqs)), deadline, stalled)
            kicked = kicked or self.kick is not None and self.kick.due(self, seqs, before, "block")  # `repair_kick_at`
            screened, sweeps = (screened + 1, sweeps) if self._screening else (screened, sweeps + 1)
            keeps += [self._keep] if self._screening else []
            self._screening = self._screening or (resume and screens)  # a paid block move: screened sweeps again
            if self._changes == before and not kicked:
                if not self._screening or self._best <= 0:  # inside the box: no trial can be kept
                    break
                if self._keep < self.keep:  # option `repair_screen_from`: a wider screen first
                    self._keep = min(self.keep, 2 * self._keep)
                    continue
                self._screening = False  # the screen found nothing more: full sweeps from here
        if self.kick is not None:  # the least-misfit batch the kicks saw, where the repair ends above it
            self.kick.settle(self, seqs)
        return seqs, {"misfit_before": start, **self._report(sweeps, screened, keeps, deadline),
                      "cpu_s": round(time.process_time() - began, 1)}

    def _report(self, sweeps: int, screened: int, keeps: list[int], deadline: float) -> dict[str, Any]:
        """`run`'s report past its start: where the descent stands, its sweeps and what its trials and moves did."""
        return {"misfit_after": self._best, "sweeps": sweeps, "changes": self._changes,
                "trials": self.trials, "width": self.width, "moves": self.moves, "screened_sweeps": screened,
                "screened": self.screened, "screen_keeps": keeps, "ran_out": budget_now() >= deadline,
                "exchange_trials": self.exchange_trials, "exchange_screened": self.exchange_screened,
                "guarded": self.guarded if self.guard is not None else None,
                **({"unweighed": self.unweighed} if self.guard_first else {}),
                **({"inplace": True} if self.inplace else {}), **({"slide": self.slide} if self.slide else {}),
                **({"float32": True} if self.dtype == torch.float32 else {}),
                **({"block": self.block, "blocks_kept": self.blocks_kept, "block_screened": self.block_screened,
                    "block_at": self.block_at} if self.block else {}),
                **({"block_keep": self.block_keep} if self.block and self.block_keep else {}),
                **({"block_peeled": self.peeled.screens} if self.block and self.peeled is not None else {}),
                **({"block_owed": list(self.owed_paid)} if self.block_owed and self.block_late else {}),
                **({"pairs": self.pairs, "pairs_kept": self.pairs_kept, "pairs_refilled": self.pairs_refilled,
                    "pairs_screened": self.pairs_screened} if self.pairs else {}),
                **({"fill": self.fill, "fills_kept": self.fills_kept, "fills_screened": self.fills_screened}
                   if self.fill else {})}

    def _screened(self, seqs: list[list[int]], b: int, trials: list[list[int]]) -> list[list[int]]:
        """Of sentence b's trials (those `keep_best` would weigh: not the sentence itself, no token of `cover` left
        out), this sweep's `keep` (from `first_keep` where set) of least `screen` score; all where there is no
        screen or no more than that many; none once the batch is inside the box."""
        if self._best <= 0:
            return []
        if not self._screening:
            return trials
        lacking = missing(seqs, self.cover)
        ok = [t for t in trials if t != seqs[b] and
              (not self.cover or missing(seqs[:b] + [t] + seqs[b + 1:], self.cover) <= lacking)]
        if len(ok) <= self._keep or budget_now() >= self._deadline:
            return ok
        scores = self.screen(ok)
        self.screened += len(ok) - self._keep
        return [ok[i] for i in sorted(range(len(ok)), key=scores.__getitem__)[:self._keep]]

    def begin(self, sequences: Sequence[Sequence[int]], labels: Sequence[int], deadline: float,
              gradient: Callable[[Sequence[int], int], torch.Tensor] | None = None) -> tuple[list[list[int]], float]:
        """Start a descent from the batch `sequences`: each sentence's own gradient (`gradient`, by
        default `self.gradient`), their mean and its misfit. Returns (the sentences, copied; that misfit)."""
        seqs = [list(s) for s in sequences]
        self._B, self._labels = len(seqs), [int(y) for y in labels]
        self._own = [(gradient or self.gradient)(s, y) for s, y in zip(seqs, self._labels)]
        self._total = sum(self._own) / self._B
        self._best = self.misfit(self._total)
        self._deadline, self._changes, self._began = deadline, 0, budget_now()
        self._cls = self.guard(seqs) if self.guard is not None else []
        return seqs, self._best

    def least_labels(self, sequences: Sequence[Sequence[int]], choices: Sequence[Sequence[int]],
                     gradient: Callable[[Sequence[int], int], torch.Tensor] | None = None) -> list[int]:
        """Of these label assignments for the batch `sequences`, the one of least box misfit (the first
        on a tie; `gradient`: as in `begin`)."""
        grad = gradient or self.gradient
        scored = [(self.misfit(sum(grad(s, y) for s, y in zip(sequences, ys)) / len(sequences)), i)
                  for i, ys in enumerate(choices)]
        return [int(y) for y in choices[min(scored)[1]]]

    @property
    def best(self) -> float:
        """The misfit of the batch where the descent stands."""
        return self._best

    def keep_best(self, seqs: list[list[int]], b: int, trials: list[list[int]],
                  gradient: Callable[[Sequence[int], int], torch.Tensor] | None = None) -> bool:
        """Replace sentence b by the trial of least misfit, if it lowers the batch's; whether it did
        (`gradient`: as in `begin`); none once the batch is inside the box (misfit 0: no trial can be kept)."""
        if self._best <= 0:
            return False
        below = []
        lacking = missing(seqs, self.cover)
        trials = [t for t in trials if t != seqs[b] and
                  not (self.cover and missing(seqs[:b] + [t] + seqs[b + 1:], self.cover) > lacking)]
        weigh = [t for t, ok in zip(trials, self._passing([{b: t} for t in trials])) if ok]
        for trial, g in weighed(self, weigh, self._labels[b], gradient):  # option `repair_batch`: a chunk at a time
            value = self._trial_misfit([(g, self._own[b])], below)  # option `repair_cutoff`: inf where dropped
            if value < self._best:
                self._offer(below, (value, trial, g))
        found = self._guarded(below, lambda f: {b: f[1]})
        if found is None:
            return False
        self._keep_change(seqs, found[0], {b: (found[1], found[2])})
        return True


def _swapped(seq: list[int], p: int, q: int) -> list[int]:
    out = list(seq)
    out[p], out[q] = out[q], out[p]
    return out
