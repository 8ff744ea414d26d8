"""The command line end to end, and its answers to bad input: one line, non-zero, nothing written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import torch

from textleak.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def expect_error(capsys, words, *argv):
    code, out, err = run(capsys, *argv)
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("textleak: error:") and words in lines[0], err
    assert "Traceback" not in err
    return lines[0]


def test_capture_then_recover_recovers_a_short_sentence_exactly(tiny_bert_wide, tmp_path, capsys):
    grads = tmp_path / "grads.pt"
    code, out, _ = run(capsys, "capture", "--model", str(tiny_bert_wide), "--text", "the cat sat",
                       "--task", "classify", "--labels", "1", "--out", str(grads))
    assert code == 0 and grads.exists() and (tmp_path / "grads.reference.json").exists()
    result = tmp_path / "result.json"
    code, out, _ = run(capsys, "recover", "--grads", str(grads), "--attack", "dlg", "--reference",
                       str(tmp_path / "grads.reference.json"), "--out", str(result), "--quiet",
                       "--report", str(tmp_path / "report.md"))
    assert code == 0, out
    data = json.loads(result.read_text())
    assert data["prediction"]["texts"] == ["the cat sat"]
    assert data["metrics"]["mean"]["exact_match"] == 1.0
    assert "recovered[0]: the cat sat" in out
    assert "| 30 |" in (tmp_path / "report.md").read_text()


def test_recover_scores_against_a_plain_text_reference(tiny_bert_wide, tmp_path, capsys):
    grads = tmp_path / "g.pt"
    assert run(capsys, "capture", "--model", str(tiny_bert_wide), "--text", "big house", "--task", "classify",
               "--labels", "0", "--out", str(grads))[0] == 0
    (tmp_path / "ref.txt").write_text("big house\n")
    code, out, _ = run(capsys, "recover", "--grads", str(grads), "--attack", "dlg", "--reference",
                       str(tmp_path / "ref.txt"), "--steps", "5", "--quiet")
    assert code == 0 and "ROUGE-1" in out


def test_capture_file_in_batches_writes_one_gradient_file_per_batch(tiny_bert, tmp_path, capsys):
    (tmp_path / "s.txt").write_text("the cat sat\na dog ran\n\nthe bird flew\n")
    code, out, _ = run(capsys, "capture", "--model", str(tiny_bert), "--file", str(tmp_path / "s.txt"),
                       "--batch-size", "2", "--out", str(tmp_path / "g.pt"))
    assert code == 0
    assert sorted(p.name for p in tmp_path.glob("g-*.pt")) == ["g-000.pt", "g-001.pt"]


def test_bad_inputs_get_one_line_errors(tiny_bert, tiny_distilbert, tmp_path, capsys):
    good = tmp_path / "good.pt"
    assert run(capsys, "capture", "--model", str(tiny_bert), "--text", "the cat sat", "--out", str(good))[0] == 0
    before = good.read_bytes()

    expect_error(capsys, "is empty", "capture", "--model", str(tiny_bert), "--text", " ", "--out", str(good))
    expect_error(capsys, "at most 24", "capture", "--model", str(tiny_bert), "--text", "the cat " * 30,
                 "--out", str(good))
    assert good.read_bytes() == before  # nothing overwritten

    (tmp_path / "corrupt.pt").write_bytes(before[: len(before) // 3])
    expect_error(capsys, "corrupt or truncated", "recover", "--grads", str(tmp_path / "corrupt.pt"))
    torch.save({"format": "textleak.gradients", "gradients": {}, "x": object()}, tmp_path / "pickled.pt")
    expect_error(capsys, "unsafe", "recover", "--grads", str(tmp_path / "pickled.pt"))
    expect_error(capsys, "does not exist", "recover", "--grads", str(tmp_path / "missing.pt"))

    payload = torch.load(good, weights_only=True)
    name = next(iter(payload["gradients"]))
    payload["gradients"][name].view(-1)[0] = float("nan")
    torch.save(payload, tmp_path / "nan.pt")
    expect_error(capsys, "NaN", "recover", "--grads", str(tmp_path / "nan.pt"))

    expect_error(capsys, "another model config", "recover", "--grads", str(good), "--model", str(tiny_distilbert))
    expect_error(capsys, "not available offline", "recover", "--grads", str(good), "--model",
                 "no-such-org/no-such-model")
    expect_error(capsys, "not available offline", "capture", "--model", "bert-base-uncased-not-cached",
                 "--text", "hi", "--out", str(tmp_path / "x.pt"))
    assert not (tmp_path / "x.pt").exists()


def test_interrupted_recover_resumes_from_its_checkpoint(tiny_bert, tmp_path, capsys, monkeypatch):
    """Ctrl-C mid-step stops at the end of that step; the resumed run equals an uninterrupted one."""
    grads = tmp_path / "g.pt"
    assert run(capsys, "capture", "--model", str(tiny_bert), "--text", "the cat sat", "--task", "classify",
               "--labels", "1", "--out", str(grads))[0] == 0
    common = ["recover", "--grads", str(grads), "--attack", "dlg", "--quiet", "--steps", "6"]
    assert run(capsys, *common, "--out", str(tmp_path / "full.json"))[0] == 0
    from textleak.text import problem as text_problem

    original = text_problem.TextMatchingProblem.gradients
    calls = {"n": 0}

    def flaky(self, variables):
        calls["n"] += 1
        if calls["n"] == 30:  # in the middle of an L-BFGS step
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, variables)

    monkeypatch.setattr(text_problem.TextMatchingProblem, "gradients", flaky)
    code, _, err = run(capsys, *common)
    assert code == 130 and "--resume" in err and "Traceback" not in err
    assert len(list(tmp_path.glob("g.pt.*.ckpt"))) == 1
    monkeypatch.undo()
    code, out, _ = run(capsys, *common, "--resume", "--out", str(tmp_path / "r.json"))
    assert code == 0
    resumed, full = (json.loads((tmp_path / n).read_text()) for n in ("r.json", "full.json"))
    assert resumed["details"]["resumed"] is True
    assert resumed["history"] == full["history"] and resumed["prediction"] == full["prediction"]
    assert not list(tmp_path.glob("*.ckpt"))  # a finished run leaves no checkpoint behind


def test_env_and_module_entry_point(capsys):
    code, out, _ = run(capsys, "env")
    assert code == 0 and "torch" in out and "default_model" in out
    proc = subprocess.run([sys.executable, "-m", "textleak", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "capture" in proc.stdout
