from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from textleak.data import load_sentences
from textleak.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


def _recipe(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_local_files_of_every_kind(tmp_path):
    (tmp_path / "a.tsv").write_text('sentence\tlabel\nhe said "hi" .\t1\nno\t0\n')
    (tmp_path / "b.txt").write_text("one\n\ntwo\n")
    (tmp_path / "c.jsonl").write_text('{"text": "x", "label": 1}\n')
    assert [(e.text, e.label) for e in load_sentences(str(tmp_path / "a.tsv"))] == [('he said "hi" .', 1), ("no", 0)]
    assert [e.text for e in load_sentences(str(tmp_path / "b.txt"), n=1)] == ["one"]
    assert load_sentences(str(tmp_path / "c.jsonl"))[0].label == 1
    with pytest.raises(InputError, match="no data file"):
        load_sentences("nonexistent-thing")


def test_shared_dev_sets_load_when_present():
    try:
        rows = load_sentences("cola", n=5)
    except InputError:
        pytest.skip("shared data folder not beside this checkout")
    assert len(rows) == 5 and all(r.label in (0, 1) for r in rows)


def test_benchmark_resumes_and_writes_a_table(tiny_bert_wide, tmp_path, capsys):
    data = tmp_path / "s.tsv"
    data.write_text("sentence\tlabel\nthe cat sat\t1\nbig house\t0\na red bird flew\t1\n")
    bench = _recipe("benchmark_dlg")
    out = tmp_path / "bench.json"
    argv = ["--data", str(data), "--n", "2", "--model", str(tiny_bert_wide), "--steps", "3", "--out", str(out)]
    assert bench.main(argv) == 0
    assert len((tmp_path / "bench.jsonl").read_text().splitlines()) == 2
    argv[3] = "3"
    assert bench.main(argv) == 0  # two units reused, one new
    rows = (tmp_path / "bench.jsonl").read_text().splitlines()
    assert len(rows) == 3
    summary = json.loads(out.read_text())["summary"]
    assert summary["n"] == 3 and 0 <= summary["rouge1"] <= 1
    assert "| ROUGE-1 |" in capsys.readouterr().out


def test_text_benchmark_starts_at_a_batch_and_records_the_finish_report(tiny_bert_wide, tmp_path, monkeypatch):
    from types import SimpleNamespace

    data = tmp_path / "s.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"word{i} here\t{i % 2}\n" for i in range(6)))
    bench = _recipe("benchmark_text")
    seen = []

    def recover(gradients=None, reference=None, **kw):  # the attack stands in: what it was given, a finish report
        seen.append([list(s) for s in reference.token_ids])
        mean = {"rouge1": 1.0, "rouge2": 1.0, "exact_match": 1.0, "label_accuracy": 1.0}
        return SimpleNamespace(method="fake", metrics={"mean": mean}, assumed={},
                               details={"finish": {"targets": {"drafts": {"kept": 3}}}})

    monkeypatch.setattr(bench.textleak, "recover", recover)
    out = tmp_path / "units"
    argv = ["--attacks", "beyond_rank", "--data", str(data), "--batch-size", "2", "--n", "2", "--start", "1",
            "--model", str(tiny_bert_wide), "--out", str(out)]
    assert bench.main(argv) == 0
    rows = [json.loads(r) for r in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == [1, 2] and len(seen) == 2  # batches 1 and 2 of 3, not 0
    assert all(r["finish"]["targets"]["drafts"]["kept"] == 3 for r in rows)
    assert json.loads(out.with_suffix(".json").read_text())["cells"][0]["batches"] == 2
