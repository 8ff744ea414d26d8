"""Sweeps: attacks x defences x sentences x seeds as independent units, resumable and sharded.

Each unit (one attack on one defended capture, or one defence's utility training) is run on its
own and its result appended to a JSONL file as soon as it finishes (flush + fsync), so a sweep
killed at any moment loses no finished unit and, restarted with the same output folder, skips
every unit already recorded (by key, across all shards' files) and repeats none.

Sharding: unit i belongs to rank i % world_size, read from RANK/WORLD_SIZE (torchrun) or
SLURM_PROCID/SLURM_NTASKS (Slurm); each rank appends to its own
`results-RANK-of-WORLD.jsonl`. `merge(out_dir)` makes one table from all shards' files.
An optional Ray backend (`backend="ray"`, needs the extra `ray`) runs the pending units as Ray
tasks, the driver alone writing results.

A spec naming an unknown attack or defence, or unreadable data, fails before any work starts.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import InputError
from .io import atomic_write_text, dumps
from .data import read_sentences
from .sweep_store import (JsonlAppender, check_folder, claim_folder, completed, read_jsonl, read_spec_file,  # noqa: F401
                          result_files, shard_lock)

SPEC_FILE = "sweep.json"
FALLBACK_ATTACK = "dlg"


def strongest_attack(preferred: str = "auto", *, say: Callable[[str], None] | None = print) -> str:
    """`preferred` if registered, else DLG, saying so (stronger attacks register themselves by name)."""
    from .attacks import ATTACKS

    if preferred in ATTACKS:
        return preferred
    if say is not None:
        say(f"attack {preferred!r} is not registered in this textleak (registered: {', '.join(ATTACKS.names())}); "
            f"using {FALLBACK_ATTACK!r} as the strongest attack")
    return FALLBACK_ATTACK


@dataclass
class SweepSpec:
    """attacks: names in ATTACKS. defences: specs (see textleak.defences). data: TSV or text file;
    the attacked sentences are rows[offset : offset + n]. A `batch:N` defence adds the N - 1 rows
    that follow (wrapping around the file). attack_options: per attack name, e.g. {"dlg": {"steps": 20}}.
    utility: UtilityConfig fields (None: no accuracy measured)."""

    attacks: list[str]
    defences: list[str]
    data: str
    n: int = 20
    offset: int = 0
    seeds: list[int] = field(default_factory=lambda: [0])
    model: str | None = None
    task: str = "classify"
    head_seed: int = 0
    attack_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    utility: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SweepSpec":
        if not isinstance(data, dict):
            raise InputError(f"a sweep spec is a JSON object, not a {type(data).__name__}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise InputError(f"bad sweep spec: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> "SweepSpec":
        from .io import read_text
        from .schema import parse_json

        return cls.from_dict(parse_json(read_text(path, "sweep spec"), f"sweep spec {path}"))

    # -- validation, before any work --------------------------------------------------------
    def validate(self) -> None:
        from .attacks import ATTACKS
        from .defences import parse_defence
        from .threat import WITHDRAWABLE

        from .validate import attack_instance, integer, mapping, names, sequence

        self.attacks = [a for a in sequence(self.attacks, "attacks")]
        if not self.attacks or not sequence(self.defences, "defences"):
            raise InputError("a sweep needs at least one attack and one defence (use 'none' for the baseline)")
        for a in self.attacks:
            if not isinstance(a, str):
                raise InputError(f"attacks: {a!r:.40} is not an attack name")
            ATTACKS.get(a)
        _unique(self.attacks, "attack")
        for name, opts in mapping(self.attack_options, "attack_options").items():
            if name not in self.attacks:
                raise InputError(f"attack_options names {name!r}, which is not among the sweep's attacks")
            attack_instance(name, opts, 0)  # a bad option fails here, before the folder is claimed
        self.defences = [parse_defence(d).spec for d in self.defences]
        _unique(self.defences, "defence")
        if self.task not in ("classify", "mlm"):
            raise InputError(f"unknown task {self.task!r}; choose classify or mlm")
        names(self.unknown, "unknown", WITHDRAWABLE)
        self.seeds = [integer(x, "seed") for x in sequence(self.seeds, "seeds")]
        _unique(self.seeds, "seed")
        integer(self.n, "n", minimum=1), integer(self.offset, "offset", minimum=0)
        integer(self.head_seed, "head_seed", minimum=0)
        if not self.seeds:
            raise InputError("a sweep needs at least one seed")
        if self.model is not None and not isinstance(self.model, str):
            raise InputError(f"model must be a name or folder, got {self.model!r:.40}")
        rows = self.rows()
        if self.offset + self.n > len(rows):
            raise InputError(f"{self.data} has {len(rows)} sentences; cannot take {self.n} from row {self.offset}")
        if self.task == "classify" and any(y is None for _, y in rows):
            raise InputError(f"{self.data} has no labels; classification needs a TSV with a label column")
        if self.utility is not None:
            from .utility import UtilityConfig

            try:
                UtilityConfig(**self.utility).validate()
            except TypeError as exc:
                raise InputError(f"bad utility settings: {exc}") from None

    def rows(self) -> list[tuple[str, int | None]]:
        return read_sentences(self.data)

    # -- units -------------------------------------------------------------------------------
    def units(self) -> list[dict[str, Any]]:
        """Every unit in a fixed order: utility per defence, then per seed, sentence, defence, attack."""
        out = [{"kind": "utility", "defence": d, "key": f"utility|{d}"} for d in self.defences] \
            if self.utility is not None else []
        for seed in self.seeds:
            for s in range(self.offset, self.offset + self.n):
                for d in self.defences:
                    for a in self.attacks:
                        out.append({"kind": "attack", "attack": a, "defence": d, "sentence": s, "seed": seed,
                                    "key": f"attack|{a}|{d}|{s}|{seed}"})
        return out


def _unique(items: list, what: str) -> None:
    seen = set()
    for item in items:
        if item in seen:
            raise InputError(f"{what} {item!r} is listed twice")
        seen.add(item)


def shard_from_env(env: dict[str, str] | None = None) -> tuple[int, int]:
    """(rank, world_size) from torchrun's RANK/WORLD_SIZE or Slurm's SLURM_PROCID/SLURM_NTASKS."""
    env = os.environ if env is None else env
    for r, w in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if r in env and w in env:
            try:
                rank, world = int(env[r]), int(env[w])
            except ValueError:
                raise InputError(f"{r}={env[r]!r} and {w}={env[w]!r} must be integers") from None
            if not 0 <= rank < world:
                raise InputError(f"{r}={rank} is not in [0, {w}={world})")
            return rank, world
    return 0, 1


# -- running units -------------------------------------------------------------------------
class UnitContext:
    """What a process keeps between units: the loaded model and the sentences."""

    def __init__(self, spec: SweepSpec, out_dir: Path, device: Any = "auto"):
        self.spec = spec
        self.out_dir = out_dir
        self.device = device
        self._target = None
        self._rows: list[tuple[str, int | None]] | None = None

    def target(self):
        if self._target is None:
            from .text.models import load_text_model

            self._target = load_text_model(self.spec.model, task=self.spec.task, head_seed=self.spec.head_seed)
        return self._target

    def rows(self) -> list[tuple[str, int | None]]:
        if self._rows is None:
            self._rows = self.spec.rows()
        return self._rows

    def prepare(self, units: list[dict[str, Any]]) -> None:
        """The units' attacks' one-time work (`attacks.base.prepare`: likelihood.context's head read or
        fitted) before any unit's budget starts, so that it is not charged to the first unit's share."""
        from .attacks.base import prepare
        from .defences import parse_defence
        from .validate import attack_instance

        units = [u for u in units if u["kind"] != "utility"]
        noisy = any(parse_defence(u["defence"]).adds_noise for u in units)  # noisy-gradient attacks' work
        attacks = [attack_instance(n, self.spec.attack_options.get(n), 0) for n in sorted({u["attack"] for u in units})]
        for attack in (a for a in attacks if hasattr(a, "prepare")):
            prepare(attack, self.target(), noisy=noisy)


def batch_for(rows: list[tuple[str, int | None]], index: int, size: int) -> list[tuple[str, int | None]]:
    return [rows[(index + j) % len(rows)] for j in range(size)]


def run_unit(spec: SweepSpec, unit: dict[str, Any], ctx: UnitContext) -> dict[str, Any]:
    """Run one unit and return its JSON-able record (the key, the settings and the result)."""
    from .defences import parse_defence

    defence = parse_defence(unit["defence"])
    base = {"key": unit["key"], "kind": unit["kind"], "defence": defence.spec, "defence_name": defence.name,
            "strength": defence.strength, "strength_label": defence.strength_label,
            "strength_grows": defence.strength_grows,
            "epsilon": (defence.describe().get("accounting") or {}).get("epsilon")}
    if unit["kind"] == "utility":
        from .utility import UtilityConfig, measure_utility

        config = UtilityConfig(**{**spec.utility, "model": spec.model, "head_seed": spec.head_seed})
        util = measure_utility(defence.spec, config, cache_dir=ctx.out_dir / "utility-cache")
        return {**base, **{k: v for k, v in util.items() if k not in ("defence", "model")}}
    from .capture import capture_gradients
    from .recover import recover

    t0 = time.perf_counter()
    batch = batch_for(ctx.rows(), unit["sentence"], defence.required_batch_size() or 1)
    texts = [s for s, _ in batch]
    labels = [int(y) for _, y in batch] if spec.task == "classify" else None
    target = ctx.target()
    cap = capture_gradients(target, texts, labels=labels, seed=unit["seed"], defence=defence, device=ctx.device)
    result = recover(gradients=cap.gradients, model=target, attack=unit["attack"], reference=cap.reference,
                     unknown=spec.unknown, options=spec.attack_options.get(unit["attack"]), seed=unit["seed"],
                     progress=False, device=ctx.device)
    return {**base, "attack": unit["attack"], "method": result.method, "sentence": unit["sentence"],
            "seed": unit["seed"], "batch_size": len(texts), "references": texts, "recovered": result.texts,
            "metrics": result.metrics["mean"], "per_example": result.metrics["per_example"],
            "rouge_tokenizer": result.metrics.get("rouge_tokenizer"),
            "distance": result.distance, "seconds": time.perf_counter() - t0, "config": result.config,
            "certified": result.details.get("certified"), "budget": result.details.get("budget"),
            "versions": result.versions, "determinism": result.determinism}


@dataclass
class SweepSummary:
    rank: int
    world_size: int
    total: int  # units in the whole sweep
    mine: int  # units of this shard
    skipped: int  # of mine, already recorded
    ran: int
    results: Path


Runner = Callable[[SweepSpec, dict[str, Any], UnitContext], dict[str, Any]]


def run_sweep(spec: SweepSpec, out_dir: str | Path, *, rank: int | None = None, world_size: int | None = None,
              backend: str = "local", runner: Runner = run_unit,
              progress: Callable[[str], None] | None = None, device: Any = "auto") -> SweepSummary:
    """Run this shard's pending units; every finished one is on disk before the next starts.
    device: where each unit's capture and attack run ("auto", "cpu", "cuda", "cuda:N")."""
    spec.validate()
    if backend not in ("local", "ray"):
        raise InputError(f"unknown sweep backend {backend!r}; choose local or ray")
    if rank is None or world_size is None:
        rank, world_size = shard_from_env()
    out = check_folder(out_dir, "sweep folder", marker=SPEC_FILE)  # never a file, nor a folder of other files
    out.mkdir(parents=True, exist_ok=True)
    with shard_lock(out, rank, world_size):  # two runs of one shard would run each unit twice
        claim_folder(out / SPEC_FILE, spec.to_dict())
        units = spec.units()
        mine = [u for i, u in enumerate(units) if i % world_size == rank]
        done = completed(out, say=progress)
        todo = [u for u in mine if u["key"] not in done]
        path = out / f"results-{rank:03d}-of-{world_size:03d}.jsonl"
        writer = JsonlAppender(path)
        if backend == "ray":
            _run_ray(spec, out, todo, writer, progress, runner, str(device))
        else:
            ctx = UnitContext(spec, out, device)
            ctx.prepare(todo)
            for i, unit in enumerate(todo, 1):
                record = runner(spec, unit, ctx)
                writer.append(record)
                if progress is not None:
                    progress(f"[{rank}/{world_size}] {i}/{len(todo)} {unit['key']}" + _brief(record))
    return SweepSummary(rank, world_size, len(units), len(mine), len(mine) - len(todo), len(todo), path)


def _brief(record: dict[str, Any]) -> str:
    if "accuracy" in record:
        return f"  accuracy {record['accuracy']:.3f}"
    m = record.get("metrics") or {}
    return f"  ROUGE-1 {m.get('rouge1', float('nan')):.3f}" if m else ""


def _ray_unit(runner: Runner, spec_dict: dict[str, Any], unit: dict[str, Any], out_dir: str,
              device: str = "auto") -> dict[str, Any]:
    spec = SweepSpec.from_dict(spec_dict)
    ctx = UnitContext(spec, Path(out_dir), device)
    ctx.prepare([unit])  # a fitted cache is fitted once (on disk) and read by later units
    return runner(spec, unit, ctx)


def _run_ray(spec: SweepSpec, out: Path, todo: list[dict[str, Any]], writer: JsonlAppender,
             progress: Callable[[str], None] | None, runner: Runner = run_unit, device: str = "auto") -> None:
    try:
        import ray
    except ImportError:
        raise InputError("the ray backend needs Ray: pip install 'textleak[ray]'") from None
    ray.init(ignore_reinit_error=True)
    # a Ray task sees a GPU only when it asks for one
    remote = ray.remote(num_gpus=1 if device.startswith("cuda") else 0)(_ray_unit)
    pending = {remote.remote(runner, spec.to_dict(), unit, str(out), device): unit for unit in todo}
    finished = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        unit = pending.pop(ready[0])
        record = ray.get(ready[0])  # a failed task raises here, after earlier results are saved
        writer.append(record)
        finished += 1
        if progress is not None:
            progress(f"[ray] {finished}/{len(todo)} {unit['key']}" + _brief(record))


# -- merging -------------------------------------------------------------------------------
METRIC_KEYS = ("rouge1", "rouge2", "rougeL", "token_accuracy", "exact_match", "label_accuracy")


def merge(out_dir: str | Path, *, write: bool = True, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One table from every shard's JSONL: per (attack, defence) mean metrics over sentences and
    seeds, with the defence's utility beside it. Writes table.json and table.csv when `write`.
    A record that lacks a field the table needs is left out, and `say` hears of it."""
    from .schema import SWEEP_RECORD, first_error

    out = Path(out_dir)
    spec = read_spec_file(out / SPEC_FILE) if (out / SPEC_FILE).exists() else None
    records, bad = [], []
    for rec in completed(out, say=say).values():
        problem = first_error(rec, SWEEP_RECORD, "record")
        if problem:
            bad.append(f"{rec['key']}: {problem}")
        else:
            records.append(rec)
    if bad and say is not None:
        say(f"note: left out {len(bad)} result record(s) the table cannot use, e.g. {bad[0]}")
    if not records:
        raise InputError(f"{out} holds no sweep results (results-*.jsonl)")
    utility = {r["defence"]: r for r in records if r["kind"] == "utility"}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        if r["kind"] == "attack":
            groups.setdefault((r["attack"], r["defence"]), []).append(r)
    order = {d: i for i, d in enumerate(spec["defences"])} if spec else {}
    table = []
    for (attack, defence), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 1e9), kv[0][1])):
        row = {"attack": attack, "methods": sorted({r["method"] for r in rs}), "defence": defence,
               "defence_name": rs[0]["defence_name"], "strength": rs[0]["strength"],
               "strength_label": rs[0]["strength_label"], "strength_grows": rs[0].get("strength_grows", True),
               "n": len(rs),
               "seconds_mean": sum(r["seconds"] for r in rs) / len(rs)}
        for k in METRIC_KEYS:
            vals = [float(r["metrics"][k]) for r in rs if k in r["metrics"]]
            if vals:
                row[k] = sum(vals) / len(vals)
        u = utility.get(defence)
        row["accuracy"] = u["accuracy"] if u else None
        if rs[0].get("epsilon") is not None:  # a defence set by its privacy budget
            row["epsilon"] = rs[0]["epsilon"]
        elif u and u.get("epsilon") is not None:
            row["epsilon"] = u["epsilon"]
        table.append(row)
    merged = {"spec": spec, "table": table, "utility": list(utility.values()),
              "units": [r for r in records if r["kind"] == "attack"]}
    if write:
        atomic_write_text(out / "table.json", dumps(merged, indent=1))
        atomic_write_text(out / "table.csv", _csv(table))
    return merged


def _csv(table: Iterable[dict[str, Any]]) -> str:
    cols = ["attack", "defence", "strength", "n", *METRIC_KEYS, "accuracy", "epsilon", "seconds_mean"]
    lines = [",".join(cols)]
    for row in table:
        cells = []
        for c in cols:
            v = row.get(c)
            cells.append("" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v)))
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"
