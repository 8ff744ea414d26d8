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
    distance = DISTANCES.get(config.distance)
    target = [observed[n].detach().to(torch.float32) for n in problem.names]
    # Distances compare gradients in units of the observed norm: the optimum is unchanged, but
    # L-BFGS's absolute tolerances then mean the same for a tiny or a huge gradient.
    unit = 1.0 / max(math.sqrt(sum(float(t.double().pow(2).sum()) for t in target)), 1e-30)
    target = [t * unit for t in target]
    key = run_key(config, {n: observed[n] for n in problem.names}, key_extra)
    state = load_checkpoint(checkpoint, key=key) if (resume and checkpoint) else None
    resumed = state is not None
    if state is None:
        gen = torch.Generator().manual_seed(config.seed)
        state = {"key": key, "restart": 0, "step": 0, "variables": None, "optimizer": None,
                 "generator": gen.get_state(), "history": [], "snapshots": [], "diverged": [],
                 "best": None, "elapsed": 0.0, "evaluations": 0}
    gen = torch.Generator()
    gen.set_state(state["generator"])
    if state.get("problem") is not None and hasattr(problem, "load_state_dict"):
        problem.load_state_dict(state["problem"])
    evaluations = state["evaluations"]

    def objective(variables: Mapping[str, torch.Tensor]) -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        dummy = [g * unit for g in problem.gradients(variables)]
        return distance(dummy, target) + problem.regulariser(variables)

    started = time.perf_counter() - state["elapsed"]
    total = config.restarts * config.steps
    bar = tqdm(total=total, initial=state["restart"] * config.steps + state["step"],
               disable=not progress, desc="matching gradients", unit="step", leave=False)
    restart = state["restart"]
    step = state["step"]
    variables: dict[str, torch.Tensor] = {}
    optimizer: torch.optim.Optimizer | None = None
    cut = False  # the time budget ran out: finish this restart where it stands, start no other

    def snapshot() -> dict[str, Any]:
        return {"restart": restart, "step": step, **problem.decode(variables)}

    def persist() -> bool:
        if checkpoint is None:
            return False
        state.update(restart=restart, step=step, generator=gen.get_state(),
                     elapsed=time.perf_counter() - started, evaluations=evaluations,
                     variables={k: v.detach().clone() for k, v in variables.items()} if variables else None,
                     optimizer=optimizer.state_dict() if optimizer is not None else None,
                     problem=problem.state_dict() if hasattr(problem, "state_dict") else None)
        return save_checkpoint(checkpoint, state)

    # A checkpoint is only ever the state at the end of a completed step (`at_boundary`): Ctrl-C
    # and SIGTERM are deferred to that point, so a resumed run continues exactly where an
    # uninterrupted one would be.
    at_boundary = True
    stack = ExitStack()
    stop = stack.enter_context(deferred_stop())
    try:
        while restart < config.restarts:
            at_boundary = False
            if state["variables"] is not None:  # resumed: a checkpoint is read onto the CPU
                variables = {k: _on(problem, v).clone().requires_grad_(v.is_floating_point())
                             for k, v in state["variables"].items()}
            else:
                variables = problem.init(gen)
                state["history"].append([])
                state["snapshots"].append([])
                state["diverged"].append(False)
                if 0 in config.snapshot_at:
                    state["snapshots"][restart].append(snapshot())
            leaves = [v for v in variables.values() if v.requires_grad]
            optimizer = OPTIMIZERS[config.optimizer](leaves, config)
            scheduler = _scheduler(optimizer, config)
            if state["optimizer"] is not None:
                # resumed: the saved state holds the learning rate as decayed so far; the schedule
                # goes on from `step` (replaying its steps would decay that rate a second time)
                optimizer.load_state_dict(state["optimizer"])
                if scheduler is not None:
                    scheduler.last_epoch = step
            history = state["history"][restart]
            at_boundary = True
            while step < config.steps:
                if stop.requested:
                    raise stop.interrupt()
                at_boundary = False
                def closure() -> torch.Tensor:
                    loss = objective(variables)
                    # Differentiate w.r.t. the dummies only: backward() would also fill (and
                    # pay for) .grad on every model parameter, touching the user's model.
                    for leaf, grad in zip(leaves, torch.autograd.grad(loss, leaves)):
                        leaf.grad = grad
                    return loss.detach()

                loss = float(optimizer.step(closure).detach())
                problem.project(variables)
                if scheduler is not None:
                    scheduler.step()
                step += 1
                history.append(loss)
                bar.update(1)
                bar.set_postfix(restart=restart, distance=f"{loss:.3e}")
                if not math.isfinite(loss):
                    # A diverged restart is recorded as such and loses to any finite one.
                    state["diverged"][restart] = True
                    bar.update(config.steps - step)
                    break
                if step in config.snapshot_at:
                    state["snapshots"][restart].append(snapshot())
                at_boundary = True
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    persist()
                if step < config.steps and _budget.expired():
                    cut = True
                    persist()  # a resumed run continues from the cut
                    break
            if stop.requested:
                raise stop.interrupt()
            at_boundary = False
            final = math.inf if state["diverged"][restart] else _evaluate(objective, variables)
            if not state["snapshots"][restart] or state["snapshots"][restart][-1]["step"] != step:
                state["snapshots"][restart].append(snapshot())
            if state["best"] is None or final < state["best"]["distance"]:
                state["best"] = {"distance": final, "restart": restart,
                                 "variables": {k: v.detach().clone() for k, v in variables.items()}}
            if cut:
                break  # the checkpoint keeps the state at the cut
            restart += 1
            step = 0
            state["variables"] = None
            state["optimizer"] = None
            variables, optimizer = {}, None
            at_boundary = True
            persist()
            if restart < config.restarts and _budget.expired():
                cut = True
                break
            if stop.requested and restart < config.restarts:
                raise stop.interrupt()
    except KeyboardInterrupt as exc:
        raise _interrupted(exc, f"restart {min(restart + 1, config.restarts)}/{config.restarts}, step {step}/"
                                f"{config.steps}", checkpoint, at_boundary and persist()) from None
    finally:
        stack.close()
        bar.close()

    if not cut and checkpoint is not None and Path(checkpoint).exists():
        Path(checkpoint).unlink()  # the run is finished: nothing left to resume
    best = state["best"]
    extra = {"budget": {**_budget.current().describe(), "stopped_at": {"restart": restart, "step": step}}} \
        if cut else {}
    return MatchOutcome(
        variables={k: _on(problem, v) for k, v in best["variables"].items()},
        distance=best["distance"], restart=best["restart"],
        history=state["history"], snapshots=state["snapshots"], diverged=state["diverged"],
        seconds=time.perf_counter() - started, resumed=resumed, evaluations=evaluations, extra=extra,
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
