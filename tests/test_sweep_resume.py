"""Sweeps: validation before work, sharding, resumption after an exception or a SIGKILL, merge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from textleak.errors import InputError
from textleak.sweep import (JsonlAppender, SweepSpec, completed, merge, read_jsonl, result_files, run_sweep,
                            shard_from_env, strongest_attack)

from _defences_tiny import make_tiny_bert, write_tsv

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    make_tiny_bert(folder)
    return folder, write_tsv(folder / "data.tsv")


def spec_for(tiny, **kw) -> SweepSpec:
    folder, data = tiny
    base = dict(attacks=["dlg"], defences=["none", "noise:1e-2", "prune:0.5"], data=str(data), n=3,
                model=str(folder), attack_options={"dlg": {"steps": 1}})
    return SweepSpec(**{**base, **kw})


def fake_runner(calls):
    def run(spec, unit, ctx):
        calls.append(unit["key"])
        return {"key": unit["key"], "kind": unit["kind"], "value": len(calls)}
    return run


def test_unknown_names_fail_before_any_work(tiny, tmp_path):
    for bad, words in [({"attacks": ["nope"]}, "unknown attack 'nope'"),
                       ({"defences": ["none", "blur:1"]}, "unknown defence 'blur'"),
                       ({"defences": ["noise:3"]}, "out of range"),
                       ({"n": 99}, "cannot take 99"),
                       ({"attack_options": {"tag": {}}}, "not among the sweep's attacks")]:
        calls = []
        with pytest.raises(InputError, match=words):
            run_sweep(spec_for(tiny, **bad), tmp_path / "out", runner=fake_runner(calls))
        assert calls == [] and not list((tmp_path).glob("out/results-*"))


def test_exception_midway_then_resume_loses_and_repeats_nothing(tiny, tmp_path):
    spec = spec_for(tiny)
    calls: list[str] = []
    ok = fake_runner(calls)

    def dies_at_five(spec, unit, ctx):
        if len(calls) == 4:
            raise RuntimeError("killed")
        return ok(spec, unit, ctx)

    with pytest.raises(RuntimeError):
        run_sweep(spec, tmp_path, runner=dies_at_five, rank=0, world_size=1)
    first = list(calls)
    assert len(first) == 4 and list(completed(tmp_path)) == first
    calls.clear()
    summary = run_sweep(spec, tmp_path, runner=ok, rank=0, world_size=1)
    assert summary.skipped == 4 and summary.ran == 9 - 4
    assert not set(calls) & set(first)
    keys = [r["key"] for p in result_files(tmp_path) for r in read_jsonl(p)]
    assert sorted(keys) == sorted(u["key"] for u in spec.units()) and len(keys) == len(set(keys))
    calls.clear()
    assert run_sweep(spec, tmp_path, runner=ok).ran == 0 and calls == []


def test_torn_last_line_is_ignored_and_repaired(tmp_path):
    path = tmp_path / "results-000-of-001.jsonl"
    path.write_text('{"key": "a", "kind": "attack"}\n{"key": "b", "ki', encoding="utf-8")
    assert [r["key"] for r in read_jsonl(path)] == ["a"]
    JsonlAppender(path).append({"key": "c", "kind": "attack"})
    assert [r["key"] for r in read_jsonl(path)] == ["a", "c"]


def test_shards_from_env_split_the_units(tiny, tmp_path, monkeypatch):
    assert shard_from_env({}) == (0, 1)
    assert shard_from_env({"RANK": "1", "WORLD_SIZE": "3"}) == (1, 3)
    assert shard_from_env({"SLURM_PROCID": "2", "SLURM_NTASKS": "4"}) == (2, 4)
    with pytest.raises(InputError, match="not in"):
        shard_from_env({"RANK": "3", "WORLD_SIZE": "3"})
    spec = spec_for(tiny)
    seen = {}
    for rank in (0, 1):
        calls: list[str] = []
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        run_sweep(spec, tmp_path, runner=fake_runner(calls))
        seen[rank] = set(calls)
    assert not seen[0] & seen[1] and seen[0] | seen[1] == {u["key"] for u in spec.units()}
    assert len(result_files(tmp_path)) == 2


def test_other_settings_are_refused_and_extensions_resume(tiny, tmp_path):
    calls: list[str] = []
    run_sweep(spec_for(tiny, n=1), tmp_path, runner=fake_runner(calls))
    with pytest.raises(InputError, match="attack_options"):
        run_sweep(spec_for(tiny, attack_options={"dlg": {"steps": 5}}), tmp_path, runner=fake_runner(calls))
    calls.clear()
    run_sweep(spec_for(tiny, n=2), tmp_path, runner=fake_runner(calls))
    assert len(calls) == 3  # only the new sentence's units


def test_real_units_and_merge(tiny, tmp_path):
    spec = spec_for(tiny, n=2, defences=["none", "fp16", "batch:2"], seeds=[0, 1])
    run_sweep(spec, tmp_path)
    merged = merge(tmp_path)
    rows = {(r["attack"], r["defence"]): r for r in merged["table"]}
    assert set(rows) == {("dlg", "none"), ("dlg", "fp16"), ("dlg", "batch:2")}
    assert all(r["n"] == 4 and 0 <= r["rouge1"] <= 1 for r in rows.values())
    unit = next(u for u in merged["units"] if u["defence"] == "batch:2")
    assert unit["batch_size"] == 2 and len(unit["references"]) == 2 and unit["method"] == "dlg"
    assert (tmp_path / "table.csv").read_text().startswith("attack,defence")


def test_strongest_attack_falls_back_with_a_message():
    said = []
    assert strongest_attack("dlg", say=said.append) == "dlg" and said == []
    from textleak.attacks import ATTACKS

    if "no-such-attack" not in ATTACKS:
        assert strongest_attack("no-such-attack", say=said.append) == "dlg"
        assert "'no-such-attack' is not registered" in said[0]


SLOW_SWEEP = """
import sys, time
from dataclasses import dataclass
from textleak.attacks import ATTACKS
from textleak.attacks.dlg import DLG
from textleak.sweep import SweepSpec, run_sweep

@ATTACKS.register("slow-dlg")
@dataclass
class SlowDLG(DLG):
    name = "slow-dlg"
    def run(self, *a, **kw):
        time.sleep(0.4)
        return DLG.run(self, *a, **kw)

spec = SweepSpec.load(sys.argv[1])
run_sweep(spec, sys.argv[2], progress=lambda m: print(m, flush=True))
print("FINISHED", flush=True)
"""


def test_sigkill_midway_then_restart(tiny, tmp_path):
    spec = spec_for(tiny, attacks=["slow-dlg"], attack_options={"slow-dlg": {"steps": 1}}, n=3)
    (tmp_path / "spec.json").write_text(json.dumps(spec.to_dict()))
    (tmp_path / "run.py").write_text(SLOW_SWEEP)
    out = tmp_path / "out"
    cmd = [sys.executable, str(tmp_path / "run.py"), str(tmp_path / "spec.json"), str(out)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and len(completed(out)) >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = completed(out)
    total = 9
    assert 2 <= len(before) < total, "the sweep must be killed midway"
    proc2 = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc2.returncode == 0 and "FINISHED" in proc2.stdout, proc2.stdout + proc2.stderr
    keys = [r["key"] for p in result_files(out) for r in read_jsonl(p)]
    assert len(keys) == total and len(set(keys)) == total
    rerun = [ln.split()[-3] for ln in proc2.stdout.splitlines() if ln.startswith("[0/1]")]
    assert not set(rerun) & set(before) and len(rerun) == total - len(before)
    assert all(completed(out)[k] == v for k, v in before.items())  # finished units are untouched


def test_sweep_cli_runs_and_merges(tiny, tmp_path, capsys):
    from textleak.cli import main

    spec = spec_for(tiny, n=1, defences=["none", "int8"])
    (tmp_path / "spec.json").write_text(json.dumps(spec.to_dict()))
    assert main(["sweep", "--spec", str(tmp_path / "spec.json"), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert "2 units, 0 already done, ran 2" in capsys.readouterr().out
    assert main(["sweep", "--merge", "--out", str(tmp_path / "r")]) == 0
    assert len(json.loads((tmp_path / "r" / "table.json").read_text())["table"]) == 2
    (tmp_path / "bad.json").write_text(json.dumps({**spec.to_dict(), "attacks": ["nope"]}))
    assert main(["sweep", "--spec", str(tmp_path / "bad.json"), "--out", str(tmp_path / "b")]) == 2
    assert "unknown attack 'nope'" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_ray_backend_needs_ray(tiny, tmp_path):
    try:
        import ray  # noqa: F401
        pytest.skip("ray is installed; this checks the message shown without it")
    except ImportError:
        pass
    with pytest.raises(InputError, match="needs Ray"):
        run_sweep(spec_for(tiny, n=1), tmp_path, backend="ray")
    assert completed(tmp_path) == {}


def test_attacks_are_prepared_before_the_first_units_budget(tiny, tmp_path, monkeypatch):
    """A sweep (an audit) runs its attacks' one-time work (`attacks.base.prepare`: likelihood.context's
    head fitted) before its units' budgets, not inside the first unit's share; attacks without any
    preparation do not load the model for it, and where no defence adds noise nothing is fitted."""
    from textleak.core.budget import current
    from textleak.pacing import fixed_share
    from textleak.text import masked_prior

    events = []
    monkeypatch.setattr(masked_prior, "load_context_head",
                        lambda target: events.append(("fit", current().describe()["seconds"])))

    def unit(spec, u, ctx):
        events.append(("unit", current().describe()["seconds"]))
        return {"key": u["key"], "kind": u["kind"]}

    spec = spec_for(tiny, attacks=["likelihood"], defences=["noise:1e-2"], n=2,
                    attack_options={"likelihood": {"context": 2}})
    run_sweep(spec, tmp_path / "a", runner=fixed_share(unit, 5.0))
    assert events == [("fit", None), ("unit", 5.0), ("unit", 5.0)]
    events.clear()
    run_sweep(spec_for(tiny, n=1), tmp_path / "b", runner=fixed_share(unit, 5.0))
    assert [e[0] for e in events] == ["unit"] * 3
    events.clear()  # no defence adds noise: the noisy-gradient search has nothing to prepare for
    run_sweep(spec_for(tiny, attacks=["likelihood", "auto"], defences=["none", "prune:0.5", "fedavg:2,1e-2"], n=1,
                       attack_options={}),
              tmp_path / "c", runner=fixed_share(unit, 5.0))
    assert [e[0] for e in events] == ["unit"] * 6
