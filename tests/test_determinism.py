"""Same seed, same thread count: the same result bit for bit, across processes (issue 18)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import textleak
from textleak.core.seeding import determinism_settings, repeatable
from textleak.text.models import load_text_model

from conftest import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]


def _start(model: Path, out: Path, hash_seed: str, tmp_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(PYTHONHASHSEED=hash_seed, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
               TEXTLEAK_PRIOR_DATA=str(tmp_path / "train_toy.tsv"), TEXTLEAK_CACHE=str(tmp_path / f"cache-{hash_seed}"))
    with open(out.with_suffix(".log"), "w") as log:  # a file, not a pipe: neither process waits on us
        return subprocess.Popen([sys.executable, str(ROOT / "tests" / "_repeat_run.py"), str(model), str(out)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, out: Path) -> dict:
    assert proc.wait(timeout=600) == 0, out.with_suffix(".log").read_text()[-3000:]
    return json.loads(out.read_text())


def test_two_processes_recover_the_same_bits(tmp_path):
    """Every text attack (exact, dlg, tag, lamp, auto clean and auto falling back to LAMP under
    noise) and the image attacks, run in two fresh processes (side by side) whose global RNGs and
    string hashes differ: predictions, loss histories, snapshots and scores agree exactly."""
    model = make_tiny_model(tmp_path / "model", hidden=64, layers=2)
    (tmp_path / "train_toy.tsv").write_text("sentence\tlabel\nthe cat sat on the mat .\t1\na big dog ran\t0\n")
    procs = [(_start(model, tmp_path / f"{s}.json", s, tmp_path), tmp_path / f"{s}.json") for s in ("1", "2")]
    first, second = (_finish(proc, out) for proc, out in procs)
    assert first.pop("env") == {"OMP_WAIT_POLICY": "PASSIVE"}  # waiting threads sleep: see textleak/__init__.py
    second.pop("env")
    assert first.keys() == second.keys() and len(first) == 9
    # the noisy capture did take the fallback: the likelihood searches (a batch of two: likelihood_batch
    # first), then LAMP from their guess, the likeliest kept (attacks/likelihood.py)
    assert first["5:auto"]["method"].startswith("likelihood_batch")
    for key in first:
        a, b = first[key].pop("determinism"), second[key].pop("determinism")
        assert a["torch_threads"] == 1 and a["deterministic_algorithms"] and a["seed"] == 0
        assert a["env"].pop("PYTHONHASHSEED") == "1" and b["env"].pop("PYTHONHASHSEED") == "2"
        assert a == b
        assert first[key] == second[key], key


def test_repeatable_records_and_restores_the_global_settings():
    before = determinism_settings()
    state = torch.get_rng_state()
    with repeatable(7) as settings:
        assert settings["seed"] == 7 and settings["torch_threads"] == torch.get_num_threads()
        assert torch.are_deterministic_algorithms_enabled() and settings["deterministic_algorithms"]
        assert not torch.backends.cudnn.benchmark
        drawn = torch.rand(3)
    with repeatable(7):
        assert torch.equal(torch.rand(3), drawn)
    assert determinism_settings() == before
    assert torch.equal(torch.get_rng_state(), state)


def test_every_result_records_its_determinism_settings(tiny_bert, one_thread, tmp_path):
    target = load_text_model(str(tiny_bert), task="classify")
    cap = textleak.capture_gradients(target, ["the cat sat"], task="classify", labels=[1])
    res = textleak.recover(gradients=cap.gradients, model=target, attack="dlg", options={"steps": 1}, progress=False)
    assert res.determinism["torch_threads"] == 1 and res.determinism["seed"] == 0
    assert "1 torch threads" in res.summary()
    path = tmp_path / "r.json"
    res.to_json(path)
    assert textleak.RecoveryResult.from_json(path).determinism == res.determinism


def test_a_stale_checkpoint_is_not_resumed_without_resume(tiny_bert, one_thread, tmp_path):
    """The default checkpoint of an interrupted earlier run lies beside the gradient file; a run
    without --resume must start afresh and give the bits of a run with no checkpoint at all."""
    from textleak.core.checkpoint import save_checkpoint

    target = load_text_model(str(tiny_bert), task="classify")
    cap = textleak.capture_gradients(target, ["the cat sat on the mat"], task="classify", labels=[1])
    options = {"steps": 3}
    clean = textleak.recover(gradients=cap.gradients, model=target, attack="dlg", options=options, progress=False)
    ckpt = tmp_path / "g.ckpt"
    save_checkpoint(ckpt, {"key": "an earlier run", "restart": 0, "step": 2, "variables": None})
    again = textleak.recover(gradients=cap.gradients, model=target, attack="dlg", options=options,
                             checkpoint=ckpt, progress=False)
    assert again.history == clean.history and again.prediction == clean.prediction
    assert again.details["resumed"] is False


def test_a_resumed_lamp_run_repeats_an_uninterrupted_one(tiny_bert, one_thread, tmp_path, monkeypatch):
    """LAMP's discrete search has its own RNG and step count: a checkpoint keeps them (and Adam's
    schedule goes on from the saved step), so the run resumed after Ctrl-C takes the same steps as
    a run never interrupted."""
    from textleak.text import problem as text_problem

    target = load_text_model(str(tiny_bert), task="classify")
    cap = textleak.capture_gradients(target, ["the cat sat on the mat"], task="classify", labels=[1])
    options = {"steps": 6, "discrete_every": 2, "proposals": 3, "prior": "none"}
    kw = dict(gradients=cap.gradients, model=target, attack="lamp", options=options, progress=False)
    clean = textleak.recover(**kw)
    original, calls = text_problem.TextMatchingProblem.gradients, {"n": 0}

    def interrupted(self, variables):
        calls["n"] += 1
        if calls["n"] == 4:  # Ctrl-C in step 4, after the discrete step that followed step 2: the
            os.kill(os.getpid(), signal.SIGINT)  # loop finishes the step, saves it, then stops
        return original(self, variables)

    monkeypatch.setattr(text_problem.TextMatchingProblem, "gradients", interrupted)
    ckpt = tmp_path / "g.ckpt"
    with pytest.raises(textleak.errors.Interrupted):
        textleak.recover(**kw, checkpoint=ckpt)
    monkeypatch.setattr(text_problem.TextMatchingProblem, "gradients", original)
    resumed = textleak.recover(**kw, checkpoint=ckpt, resume=True)
    assert resumed.details["resumed"] is True
    assert resumed.history == clean.history and resumed.prediction == clean.prediction
