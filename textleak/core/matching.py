"""The gradient-matching loop shared by every optimisation attack, text or image.

A `MatchingProblem` owns the dummy variables (embeddings, pixels, soft labels) and knows how to
turn them into gradients for the matched parameter names; `match` only minimises
distance(dummy gradients, observed gradients) + the problem's regulariser, with restarts,
snapshots, a progress bar and checkpoints that `resume=True` continues from.

Time budgets (`core.budget.time_budget`): the loop asks `expired()` after every optimiser step;
once the deadline has passed it finishes the current restart where it stands (its distance is
evaluated and it competes with the earlier restarts), starts no other, and returns the best so
far with `extra["budget"]` set. The checkpoint then holds the state at the cut, so a resumed
run continues from there.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import torch
from tqdm.auto import tqdm

from ..errors import InputError, Interrupted
from . import budget as _budget
from .checkpoint import load_checkpoint, save_checkpoint
from ..interrupts import deferred_stop, signal_name
from .distances import DISTANCES


class MatchingProblem(Protocol):
    #: parameter names whose observed gradients are matched, in the order `gradients` returns
    names: list[str]
    #: optionally, `device`: where the variables live (`init` draws them from a CPU generator and
    #: moves them there; checkpoints, read onto the CPU, are moved back there on resume)
    #: optionally, `state_dict()` / `load_state_dict(state)`: the problem's own search state (an
    #: RNG, a step count), kept in checkpoints so a resumed run repeats an uninterrupted one

    def init(self, generator: torch.Generator) -> dict[str, torch.Tensor]: ...

    def gradients(self, variables: Mapping[str, torch.Tensor]) -> list[torch.Tensor]: ...

    def regulariser(self, variables: Mapping[str, torch.Tensor]) -> torch.Tensor | float: ...

    def project(self, variables: Mapping[str, torch.Tensor]) -> None: ...

    def decode(self, variables: Mapping[str, torch.Tensor]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class MatchConfig:
    """Settings of one gradient-matching run; recorded in every result."""

    optimizer: str = "lbfgs"  # "lbfgs" (DLG) or "adam" (Inverting Gradients)
    steps: int = 100
    lr: float | None = None  # None: 1.0 for L-BFGS, 0.1 for Adam
    restarts: int = 1
    distance: str = "l2"
    snapshot_at: tuple[int, ...] = ()
    checkpoint_every: int = 10
    seed: int = 0
    lbfgs_max_iter: int = 20
    line_search: str | None = None  # "strong_wolfe" or None (DLG's setting)
    lr_decay: bool = False  # Adam: divide lr by 10 at 3/8, 5/8 and 7/8 of the steps

    def __post_init__(self) -> None:
        from ..validate import integer, optional_number

        if not isinstance(self.optimizer, str) or self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown optimizer {self.optimizer!r:.40}; choose one of: {', '.join(OPTIMIZERS)}")
        integer(self.steps, "steps", minimum=0)
        integer(self.restarts, "restarts", minimum=1)
        integer(self.seed, "seed")
        integer(self.checkpoint_every, "checkpoint_every", minimum=0)
        integer(self.lbfgs_max_iter, "lbfgs_max_iter", minimum=1)
        optional_number(self.lr, "lr", positive=True)
        if not isinstance(self.distance, str):
            raise InputError(f"distance must be a name, got {self.distance!r:.40}")
        DISTANCES.get(self.distance)

    def to_dict(self) -> dict:
        return asdict(self)


def _lbfgs(params: list[torch.Tensor], cfg: MatchConfig) -> torch.optim.Optimizer:
    return torch.optim.LBFGS(params, lr=cfg.lr or 1.0, max_iter=cfg.lbfgs_max_iter,
                             history_size=100, line_search_fn=cfg.line_search)


def _adam(params: list[torch.Tensor], cfg: MatchConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=cfg.lr or 0.1)


OPTIMIZERS: dict[str, Callable[[list[torch.Tensor], MatchConfig], torch.optim.Optimizer]] = {
    "lbfgs": _lbfgs,
    "adam": _adam,
}


@dataclass
class MatchOutcome:
    variables: dict[str, torch.Tensor]
    distance: float  # final objective of the chosen restart (what the attacker can see)
    restart: int  # index of the chosen restart
    history: list[list[float]]  # objective after each step, per restart
    snapshots: list[list[dict[str, Any]]]  # decoded states at snapshot_at, per restart
    diverged: list[bool]
    seconds: float
    resumed: bool = False
    evaluations: int = 0
    extra: dict = field(default_factory=dict)


def run_key(config: MatchConfig, observed: Mapping[str, torch.Tensor], extra: str = "") -> str:
    """Identifies a run so that a checkpoint is never resumed into different work."""
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode() + extra.encode())
    for name in sorted(observed):
        t = observed[name]
        h.update(f"{name}:{tuple(t.shape)}:{float(t.double().sum()):.10e}".encode())
    return h.hexdigest()[:24]


def match(
    problem: MatchingProblem,
    observed: Mapping[str, torch.Tensor],
    config: MatchConfig,
    *,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    key_extra: str = "",
) -> MatchOutcome:
    """Minimise the gradient distance over `config.restarts` runs; return the best by distance."""
    return _MatchRun(problem, observed, config, checkpoint, resume, key_extra).execute(progress)


class _MatchRun:
    """The state of one `match` call: the checkpointed `state` dict (restart, step, variables,
    optimiser, generator, history, snapshots, best so far) plus the live restart's optimiser.

    A checkpoint is only ever the state at the end of a completed step (`at_boundary`): Ctrl-C
    and SIGTERM are deferred to that point, so a resumed run continues exactly where an
    uninterrupted one would be. `cut` is set when the time budget ran out: the current restart is
    finished where it stands and no other is started."""

    def __init__(self, problem: MatchingProblem, observed: Mapping[str, torch.Tensor], config: MatchConfig,
                 checkpoint: str | Path | None, resume: bool, key_extra: str):
        self.problem, self.config, self.checkpoint = problem, config, checkpoint
        self.distance = DISTANCES.get(config.distance)
        target = [observed[n].detach().to(torch.float32) for n in problem.names]
        # Distances compare gradients in units of the observed norm: the optimum is unchanged, but
        # L-BFGS's absolute tolerances then mean the same for a tiny or a huge gradient.
        self.unit = 1.0 / max(math.sqrt(sum(float(t.double().pow(2).sum()) for t in target)), 1e-30)
        self.target = [t * self.unit for t in target]
        key = run_key(config, {n: observed[n] for n in problem.names}, key_extra)
        state = load_checkpoint(checkpoint, key=key) if (resume and checkpoint) else None
        self.resumed = state is not None
        if state is None:
            state = {"key": key, "restart": 0, "step": 0, "variables": None, "optimizer": None,
                     "generator": torch.Generator().manual_seed(config.seed).get_state(), "history": [],
                     "snapshots": [], "diverged": [], "best": None, "elapsed": 0.0, "evaluations": 0}
        self.state = state
        self.gen = torch.Generator()
        self.gen.set_state(state["generator"])
        if state.get("problem") is not None and hasattr(problem, "load_state_dict"):
            problem.load_state_dict(state["problem"])
        self.evaluations = state["evaluations"]
        self.restart, self.step = state["restart"], state["step"]
        self.variables: dict[str, torch.Tensor] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self.cut = False
        self.at_boundary = True
        self.started = time.perf_counter() - state["elapsed"]

    def objective(self, variables: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self.evaluations += 1
        dummy = [g * self.unit for g in self.problem.gradients(variables)]
        return self.distance(dummy, self.target) + self.problem.regulariser(variables)

    def snapshot(self) -> dict[str, Any]:
        return {"restart": self.restart, "step": self.step, **self.problem.decode(self.variables)}

    def persist(self) -> bool:
        if self.checkpoint is None:
            return False
        problem = self.problem
        self.state.update(restart=self.restart, step=self.step, generator=self.gen.get_state(),
                          elapsed=time.perf_counter() - self.started, evaluations=self.evaluations,
                          variables={k: v.detach().clone() for k, v in self.variables.items()} if self.variables else None,
                          optimizer=self.optimizer.state_dict() if self.optimizer is not None else None,
                          problem=problem.state_dict() if hasattr(problem, "state_dict") else None)
        return save_checkpoint(self.checkpoint, self.state)

    def execute(self, progress: bool) -> MatchOutcome:
        cfg = self.config
        bar = tqdm(total=cfg.restarts * cfg.steps, initial=self.restart * cfg.steps + self.step,
                   disable=not progress, desc="matching gradients", unit="step", leave=False)
        stack = ExitStack()
        stop = stack.enter_context(deferred_stop())
        try:
            while self.restart < cfg.restarts:
                leaves, scheduler = self._begin_restart()
                self._steps(leaves, scheduler, bar, stop)
                if stop.requested:
                    raise stop.interrupt()
                if self._end_restart(stop):
                    break
        except KeyboardInterrupt as exc:
            where = f"restart {min(self.restart + 1, cfg.restarts)}/{cfg.restarts}, step {self.step}/{cfg.steps}"
            raise _interrupted(exc, where, self.checkpoint, self.at_boundary and self.persist()) from None
        finally:
            stack.close()
            bar.close()
        return self._outcome()

    def _begin_restart(self) -> tuple[list[torch.Tensor], Any]:
        """Fresh variables (or the checkpoint's), the optimiser and its schedule."""
        self.at_boundary = False
        state, problem, r = self.state, self.problem, self.restart
        if state["variables"] is not None:  # resumed: a checkpoint is read onto the CPU
            self.variables = {k: _on(problem, v).clone().requires_grad_(v.is_floating_point())
                              for k, v in state["variables"].items()}
        else:
            self.variables = problem.init(self.gen)
            state["history"].append([])
            state["snapshots"].append([])
            state["diverged"].append(False)
            if 0 in self.config.snapshot_at:
                state["snapshots"][r].append(self.snapshot())
        leaves = [v for v in self.variables.values() if v.requires_grad]
        self.optimizer = OPTIMIZERS[self.config.optimizer](leaves, self.config)
        scheduler = _scheduler(self.optimizer, self.config)
        if state["optimizer"] is not None:
            # resumed: the saved state holds the learning rate as decayed so far; the schedule
            # goes on from `step` (replaying its steps would decay that rate a second time)
            self.optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None:
                scheduler.last_epoch = self.step
        self.at_boundary = True
        return leaves, scheduler

    def _steps(self, leaves: list[torch.Tensor], scheduler: Any, bar: Any, stop: Any) -> None:
        """Optimiser steps until `steps`, divergence, or the budget's end (`cut`)."""
        cfg, state, r = self.config, self.state, self.restart
        history = state["history"][r]
        while self.step < cfg.steps:
            if stop.requested:
                raise stop.interrupt()
            self.at_boundary = False
            loss = float(self.optimizer.step(lambda: self._closure(leaves)).detach())
            self.problem.project(self.variables)
            if scheduler is not None:
                scheduler.step()
            self.step += 1
            history.append(loss)
            bar.update(1)
            bar.set_postfix(restart=r, distance=f"{loss:.3e}")
            if not math.isfinite(loss):
                # A diverged restart is recorded as such and loses to any finite one.
                state["diverged"][r] = True
                bar.update(cfg.steps - self.step)
                return
            if self.step in cfg.snapshot_at:
                state["snapshots"][r].append(self.snapshot())
            self.at_boundary = True
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.persist()
            if self.step < cfg.steps and _budget.expired():
                self.cut = True
                self.persist()  # a resumed run continues from the cut
                return

    def _closure(self, leaves: list[torch.Tensor]) -> torch.Tensor:
        loss = self.objective(self.variables)
        # Differentiate w.r.t. the dummies only: backward() would also fill (and pay for) .grad on
        # every model parameter, touching the user's model.
        for leaf, grad in zip(leaves, torch.autograd.grad(loss, leaves)):
            leaf.grad = grad
        return loss.detach()

    def _end_restart(self, stop: Any) -> bool:
        """Score the finished restart against the best so far; True when no other should start."""
        self.at_boundary = False
        state, r = self.state, self.restart
        final = math.inf if state["diverged"][r] else _evaluate(self.objective, self.variables)
        if not state["snapshots"][r] or state["snapshots"][r][-1]["step"] != self.step:
            state["snapshots"][r].append(self.snapshot())
        if state["best"] is None or final < state["best"]["distance"]:
            state["best"] = {"distance": final, "restart": r,
                             "variables": {k: v.detach().clone() for k, v in self.variables.items()}}
        if self.cut:
            return True  # the checkpoint keeps the state at the cut
        self.restart, self.step = r + 1, 0
        state["variables"] = state["optimizer"] = None
        self.variables, self.optimizer = {}, None
        self.at_boundary = True
        self.persist()
        if self.restart < self.config.restarts and _budget.expired():
            self.cut = True
            return True
        if stop.requested and self.restart < self.config.restarts:
            raise stop.interrupt()
        return False

    def _outcome(self) -> MatchOutcome:
        if not self.cut and self.checkpoint is not None and Path(self.checkpoint).exists():
            Path(self.checkpoint).unlink()  # the run is finished: nothing left to resume
        state, problem = self.state, self.problem
        best = state["best"]
        extra = {"budget": {**_budget.current().describe(),
                            "stopped_at": {"restart": self.restart, "step": self.step}}} if self.cut else {}
        return MatchOutcome(
            variables={k: _on(problem, v) for k, v in best["variables"].items()},
            distance=best["distance"], restart=best["restart"],
            history=state["history"], snapshots=state["snapshots"], diverged=state["diverged"],
            seconds=time.perf_counter() - self.started, resumed=self.resumed, evaluations=self.evaluations,
            extra=extra,
        )


def _on(problem: MatchingProblem, tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` on the problem's device (a problem without a `device` attribute keeps it where it is)."""
    device = getattr(problem, "device", None)
    return tensor if device is None else tensor.to(device)


def _interrupted(exc: KeyboardInterrupt, where: str, checkpoint: str | Path | None, saved: bool) -> Interrupted:
    name = signal_name(exc)
    what = "terminated (SIGTERM)" if name == "SIGTERM" else "interrupted"
    if checkpoint is None:
        hint = " (no checkpoint kept)"
    elif saved:
        hint = f"; rerun with --resume to continue from {checkpoint}"
    elif Path(checkpoint).exists():
        hint = f" mid-step; rerun with --resume to continue from the last saved step in {checkpoint}"
    else:
        hint = " mid-step, before any checkpoint was saved"
    return Interrupted(f"{what} at {where}{hint}", signal_name=name)


def _evaluate(objective: Callable, variables: Mapping[str, torch.Tensor]) -> float:
    value = objective(variables)
    return float(value.detach()) if torch.is_tensor(value) else float(value)


def _scheduler(optimizer: torch.optim.Optimizer, config: MatchConfig):
    if not (config.lr_decay and config.optimizer == "adam"):
        return None
    marks = [int(config.steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=marks, gamma=0.1)
