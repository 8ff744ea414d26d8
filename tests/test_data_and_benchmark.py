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
