"""The coordinate ascent of `likelihood` (and `likelihood_batch`) on one sentence: `Climb`, a mixin of
`likelihood.LikelihoodSearch` that reads the search's options (`sweeps`, `screen`, `wide`, `local`, `rebuild`,
`flips`, `neighbours`, `between`, `frequent`, `deep`, `context`, `matched`, `per_position`, `rows`, `weighted`,
`weighted_share`, `guard`; their measured reasons are at the fields) and its run's state (`_prior`, `_context`,
`_sure`, `_steps`, `_changes`, `_t0`). Split out of `likelihood.py` (session 25), same behaviour.
"""

from __future__ import annotations

import time

import torch

from ..core.budget import current, share_of_remaining, time_budget
from .flips import flip_gains, neighbour_candidates, screened, top_flips
from .layer_weights import name_weights
from .likelihood_moves import Moves
from .likelihood_state import _Batch, _Guess


class Climb:
    """Coordinate ascent of a sentence's guess on J_w then J (module doc): `_settle` over `_climb`'s steps."""

    def _settle(self, batch: _Batch, i: int, evidence: list[list[int]], banned, word: str, specials: bool
                ) -> tuple[int, bool]:
        """Coordinate ascent on J_i; returns how many tokens changed and whether it settled (a last
        pass changed nothing; a later round skips it unless another sentence changed). Each
        position's pool: row evidence, the matched filter, first-order flips and embedding
        neighbours, the prior; the steps of `_climb`."""
        total, done = 0, False
        keep = getattr(self, "_keep", None)  # the batch search's early rounds: J_w of the early layers alone
        landscapes = (True,) if keep is not None else (True, False) if self.weighted else (False,)
        for weighted in landscapes:  # J_w's landscape first, then J's
            guess = _Guess(batch, i, weighted, guard=self.guard and self.weighted and keep is None, keep=keep)
            inner = range(1, len(guess.x) - 1) if specials else range(len(guess.x))
            with time_budget(share_of_remaining(self.weighted_share) if len(landscapes) > 1 and weighted else None):
                # `runs`: whole-run proposals first, on J_w of every layer (not in the batch search's early rounds)
                runs = weighted and keep is None and getattr(self, "_runs", None) is not None
                ran = self._run_moves(guess, inner, word) if runs else 0
                changed, done = self._climb(batch, guess, inner, evidence, banned, word)
                changed += ran
            if changed or guess.y != batch.labels[i]:  # free labels (`likelihood_batch.relabel`): a label alone may move
                batch.set(i, guess.x, guess.y)
            total += changed
            if current().expired():
                break
        return total, done

    def _run_moves(self, guess: _Guess, inner: range, word: str, most: int = 1) -> int:
        """`runs`: whole-run proposals (`likelihood_runs.RunMove`, the bigram and the run's masked LM) taken while one
        raises the guess's objective, at most `most` times; the tokens changed. Each taken is recorded in
        `details["runs"]` (calls, hypotheses scored, [start, width, source, gain] per taken) and as a "runs" step."""
        changed = 0
        for _ in range(most):
            if not self._fillers or current().expired():
                break
            before = (list(guess.x), guess.best)
            moved = self._runs(guess, inner, self._rebuild.support(guess, inner, self._fillers), self._prior,
                               self._run_context, word)
            self._runs_taken["tried"] += 1
            self._runs_taken["scored"] += self._runs.last["scored"]
            self._steps.append(["Jw" if guess.weighted else "J", "runs", int(moved is not None), round(guess.best, 6),
                                round(time.perf_counter() - self._t0, 1), [self._runs.last]])
            if moved is None:
                break
            guess.x, guess.best, guess.e = moved
            if getattr(guess, "free", False):  # free labels: the moved guess at its likelier label
                guess.relabel()
            changed += sum(a != b for a, b in zip(before[0], guess.x))
            self._runs_taken["taken"].append(self._runs.last["taken"] + [round(guess.best - before[1], 6)])
        return changed

    def _climb(self, batch: _Batch, guess: _Guess, inner: range, evidence, banned, word: str) -> tuple[int, bool]:
        """Coordinate ascent of `guess` on its objective; (tokens changed, settled). Steps, each
        taken once the one before it changed nothing (any change starts again at the first, with a
        sweep local to the changes, `local`): a sweep screened to `screen` candidates, the moves
        (`likelihood_moves.Moves`), one screened to `wide`, a sweep of every candidate (`screen` 0: every candidate,
        then the moves). Why the moves before the wide screen: at 44 tokens a sweep of every
        candidate costs ~200 CPU s, more than a loaded machine gave a 600 s budget's whole search
        (SST-2 dev sentence 0 at variance 1e-6), and the wide screen still found a token a sweep
        for minutes (RT dev sentence 0), so moves placed after it were never reached. On J (not J_w)
        a settled local sweep is followed by a stretch rebuild (`rebuild`, cheaper than a full sweep):
        on SST-2 dev sentence 0 full sweeps kept changing a token or two until the budget ran out.
        `sweeps` caps the steps over every position."""
        screens = [self.screen] + ([self.wide] if self.wide > self.screen else []) if self.screen > 0 else []
        steps = screens[:1] + ["move"] + screens[1:] + [0] if screens else [0, "move"]
        total, k, full, near, rebuild = 0, 0, 0, None, False
        moves = Moves(self, evidence, banned, word)
        while full < self.sweeps + len(steps):
            step, before = "rebuild" if rebuild else steps[k], list(guess.x)
            if step in ("move", "rebuild"):
                moved = moves(guess, inner) if step == "move" else moves.rebuild(guess, inner)
                changed = 0 if moved is None else 1
                if moved is not None:
                    guess.x, guess.best, guess.e = moved
                    if getattr(guess, "free", False):  # free labels: the moved guess at its likelier label
                        guess.relabel()
                    self._changes.append([moves.taken, None])  # which move (`details["steps"]`)
            else:
                changed = self._sweep(batch, guess, inner, evidence, banned, word, step, near)
            total, full = total + changed, full + (near is None and not rebuild)
            self._steps.append(["Jw" if guess.weighted else "J", step if near is None else f"{step}~", changed,
                                round(guess.best, 6), round(time.perf_counter() - self._t0, 1), self._changes])
            self._changes = []
            if current().expired():
                return total, False
            local, near = near is not None, None
            if changed and self.local > 0:  # the next sweep: the changed tokens' neighbourhoods only
                near = [p for p, (a, b) in enumerate(zip(before, guess.x)) if a != b]
            # a local sweep that changed nothing: a stretch rebuilt (`rebuild`), then the full sweep
            k = 0 if changed else k if local or rebuild else k + 1
            rebuild = local and not changed and self.rebuild > 1 and not guess.weighted
            if k == len(steps):  # single tokens and moves are settled
                return total, True
        return total, False

    def _sweep(self, batch: _Batch, guess: _Guess, inner: range, evidence: list[list[int]], banned, word: str,
               screen: int, around: list[int] | None = None) -> int:
        """One pass over the positions (those within `local` of a position in `around`, where given),
        each position's pool screened to `screen` candidates by first-order gain (0: the whole
        pool; with `screen_prior`, that share of them the bigram's likeliest between the neighbours
        instead); how many tokens changed. Positions go in order of their best first-order gain (a
        pass cut short by the budget has tried the likeliest changes); a position holding its
        confident row token (`_sure`) is skipped."""
        weights = name_weights(batch.layout, guess.weights) if self.weighted else None
        gains = flip_gains(batch.layout, guess.T, guess.x, guess.y, batch.clip, weights) \
            if self.flips > 0 or screen > 0 else None
        flips = top_flips(gains, guess.x, max(self.flips, 1), banned) if gains is not None else [[] for _ in guess.x]
        near = neighbour_candidates(batch.layout, guess.x, self.neighbours, banned)
        # `screen_prior`: that share of the screen's picks the bigram's next likeliest between the neighbours
        lean = round(screen * getattr(self, "screen_prior", 0.0)) if screen > 0 and self._prior is not None else 0
        between = self._prior.between(guess.x, max(self.between, 2 + lean)) if self._prior is not None \
            else [[] for _ in guess.x]
        frequent = self._prior.frequent[: self.frequent] if self._prior is not None else []
        order = [p for p in inner if (self._sure is None or self._sure[p] != guess.x[p]) and
                 (around is None or any(abs(p - q) <= self.local for q in around))]
        if gains is not None:
            order.sort(key=lambda p: -float(gains[p, flips[p][0]]))
        flips = [f[: self.flips] for f in flips]
        # the unscreened sweep's deeper list, on J_w only (`deep`)
        deep = self.deep if screen == 0 and self.deep > self.context and guess.weighted else None
        context = self._context.sweep(guess, order, word, deep) if self._context is not None else {}
        changed = 0
        for p in order:
            matched = guess.matched(p, self.matched, banned, word)
            parts = {"evidence": evidence[p][: self.per_position], "matched": matched, "flips": flips[p],
                     "near": near[p], "between": between[p], "frequent": frequent, "context": context.get(p, [])}
            pool = [t for part in parts.values() for t in part]
            if screen > 0:  # the best rows and the prior's likeliest unscreened (the first-order gain misjudges them)
                named = between[p][: 2 + lean]
                pool = evidence[p][: self.rows] + matched[:1] + named + parts["context"][:2] + \
                    screened(gains[p], [t for t in pool if t != guess.x[p] and t not in named], screen - lean)
            if guess.substitute(p, pool):
                changed += 1
                self._note(guess.x[p], parts, gains[p] if gains is not None else None)
            if current().expired():
                break
        return changed

    def _note(self, token: int, parts: dict[str, list[int]], gain) -> None:
        """Where a token a sweep put in came from (`details["steps"]`): the pool parts holding it
        and its rank by first-order gain among the whole pool (which screen would have kept it)."""
        pool = list(dict.fromkeys(t for part in parts.values() for t in part))
        rank = None
        if gain is not None and token in pool:
            rank = int((gain[torch.tensor(pool, device=gain.device)] > gain[token]).sum())
        self._changes.append(["+".join(k for k, part in parts.items() if token in part) or "-", rank])
