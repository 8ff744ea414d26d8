"""Audit reports: analysis, Markdown, self-contained HTML checked in headless Chromium, CLI."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from textleak.report import render_markdown, strongest, weakest_defending, write_report
from textleak.report.analysis import pareto
from textleak.report.html import highlight
from textleak.sweep import JsonlAppender, merge

from _defences_tiny import make_tiny_bert, write_tsv

REF = "the acting is superb ."
#: (defence, name, strength, label, accuracy, {attack: rouge1})
SETTINGS = [("none", "none", None, None, 0.80, {"dlg": 0.9, "strong": 1.0}),
            ("fp16", "fp16", None, None, 0.80, {"dlg": 0.9, "strong": 1.0}),
            ("noise:0.0001", "noise", 1e-4, "variance", 0.78, {"dlg": 0.7, "strong": 0.9}),
            ("noise:0.01", "noise", 1e-2, "variance", 0.60, {"dlg": 0.1, "strong": 0.3}),
            ("prune:0.2", "prune", 0.2, "fraction", 0.79, {"dlg": 0.6, "strong": 0.8}),
            ("prune:0.7", "prune", 0.7, "fraction", 0.74, {"dlg": 0.2, "strong": 0.4}),
            ("prune:0.9", "prune", 0.9, "fraction", 0.70, {"dlg": 0.1, "strong": 0.2})]


def fake_results(folder: Path) -> dict:
    spec = {"attacks": ["dlg", "strong"], "defences": [s[0] for s in SETTINGS], "data": "data.tsv", "n": 2,
            "offset": 0, "seeds": [0], "model": None, "task": "classify", "head_seed": 0, "attack_options": {},
            "unknown": [], "utility": {"n_train": 8}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sweep.json").write_text(json.dumps(spec))
    w = JsonlAppender(folder / "results-000-of-001.jsonl")
    for d, name, strength, label, acc, r1 in SETTINGS:
        base = {"defence": d, "defence_name": name, "strength": strength, "strength_label": label}
        w.append({**base, "key": f"utility|{d}", "kind": "utility", "accuracy": acc,
                  **({"epsilon": 3.0, "delta": 1e-5} if name == "dpsgd" else {})})
        for a, r in r1.items():
            for s in range(2):
                rec = "the acting is <superb> ." if r >= 0.9 else "the cat lapse superb <x>"
                w.append({**base, "key": f"attack|{a}|{d}|{s}|0", "kind": "attack", "attack": a, "method": a,
                          "sentence": s, "seed": 0, "batch_size": 1, "references": [REF], "recovered": [rec],
                          "metrics": {"rouge1": r, "rouge2": r / 2, "rougeL": r},
                          "per_example": [{"reference_index": 0, "prediction_index": 0, "rouge1": r, "rouge2": r / 2,
                                           "exact_match": r == 1.0}],
                          "seconds": 1.0})
    return merge(folder)


def test_analysis_picks_the_cheapest_defending_setting(tmp_path):
    merged = fake_results(tmp_path)
    table = merged["table"]
    assert strongest(table) == "strong"
    w = weakest_defending(table, "strong", 0.5)
    # prune:0.7 (acc .74) keeps more accuracy than noise:0.01 (acc .60); prune:0.9 is not the weakest
    assert w["defence"] == "prune:0.7" and w["cost"] == pytest.approx(0.06)
    assert {r["defence"] for r in w["per_family"]} == {"prune:0.7", "noise:0.01"}
    assert weakest_defending(table, "strong", 0.1) is None
    assert pareto([(0, 1), (1, 0), (0.5, 0.5), (0.4, 0.4)]) == [0, 2, 1]


def test_highlight_marks_only_words_of_the_reference():
    out = highlight("The acting <is> awful awful", "the acting is superb .")
    assert out == "<mark>The</mark> <mark>acting</mark> <mark>&lt;is&gt;</mark> awful awful"
    assert highlight("the the", "the") == "<mark>the</mark> the"


def test_the_report_opens_with_the_answer(tmp_path):
    from textleak.report.summary import answer_html, audit_answer

    merged = fake_results(tmp_path)
    a = audit_answer(merged)
    assert a["attack"] == "strong" and a["undefended"]["exact"] == 2 and a["undefended"]["sentences"] == 2
    md = render_markdown(merged)
    assert md.index("## The answer") < md.index("| defence |")
    assert "an attacker recovers 100% of the words and 2/2 sentences exactly (attack strong)" in md
    assert ("What stops it: prune:0.7 brings ROUGE-1 down to 0.40 (below 0.5); it costs 6.0 accuracy points "
            "(0.800 undefended, 0.740 with it).") in md
    assert "Example. Private: \"the acting is superb .\"" in md and "time budget" not in md
    page = write_report(merged, tmp_path / "rep")["html"].read_text(encoding="utf-8")
    assert page.index("<section id='answer'>") < page.index("<h2>Figures</h2>")
    assert "<tr class=stops><td>prune:0.7</td><td>40%</td><td>0/2</td><td>0.740</td><td>6.0</td>" in page
    merged["units"][0]["budget"] = {"seconds": 5, "used": 5.1, "ran_out": True}
    assert "1 of 28 attacks ran out of their time budget" in answer_html(merged)
    for u in merged["units"]:
        if u["defence"] == "prune:0.7":
            u["budget"] = {"seconds": 5, "used": 5.1, "ran_out": True}
    assert "But 2 of its attacks ran out of their time budget" in answer_html(merged)


def test_markdown_summary(tmp_path):
    md = render_markdown(fake_results(tmp_path))
    assert "| prune:0.7 | 0.740 | 0.200 / 0.100 | 0.400 / 0.200 |" in md
    assert "Weakest setting at which strong falls below ROUGE-1 0.5: **prune:0.7**" in md
    assert "accuracy 0.740 vs 0.800 undefended: costs 6.0 accuracy points" in md
    assert "Caution" not in md
    weak = fake_results(tmp_path / "weak")
    for r in weak["table"]:
        r["rouge1"] = r["rouge1"] * 0.45
    assert "Caution: undefended, strong already scores ROUGE-1 0.450 < 0.5" in render_markdown(weak)


def _png_size(png: bytes) -> tuple[int, int]:
    from PIL import Image

    return Image.open(io.BytesIO(png)).size


def test_report_files_are_self_contained(tmp_path):
    paths = write_report(fake_results(tmp_path / "res"), tmp_path / "rep")
    page = paths["html"].read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page and "<script" not in page
    imgs = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(imgs) == 3 and len(paths["figures"]) == 3
    assert all(_png_size(base64.b64decode(b))[0] > 200 for b in imgs)
    assert (tmp_path / "rep" / "figures" / "frontier.png").read_bytes() == base64.b64decode(imgs[2])
    assert "<mark>acting</mark>" in page
    assert paths["markdown"].read_text() == paths["summary"]


CHECK = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const p = document.createElement('p'); p.id = 'figcheck';
  const top = Math.round(document.getElementById('answer').getBoundingClientRect().top);
  p.textContent = `FIGURES-LOADED ${ok}/${imgs.length} ANSWER-TOP ${top}`; document.body.appendChild(p);
});</script></body>"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (CI installs Debian's chromium package)")
def test_report_renders_in_headless_chromium(tmp_path):
    paths = write_report(fake_results(tmp_path / "res"), tmp_path / "rep")
    # The report has no script; a copy gets one that counts the images the browser decoded.
    probe = tmp_path / "rep" / "probe.html"
    probe.write_text(paths["html"].read_text(encoding="utf-8").replace("</body>", CHECK), encoding="utf-8")
    flags = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run(flags + ["--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert "FIGURES-LOADED 3/3" in dom.stdout, dom.stderr[-2000:]
    top = int(re.search(r"ANSWER-TOP (-?\d+)", dom.stdout).group(1))
    assert 0 < top < 200  # the answer opens the page, right under the title
    shot = tmp_path / "report-screenshot.png"  # a test artefact: look at it
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,1600", paths["html"].as_uri()],
                   capture_output=True, text=True, timeout=120)
    print(f"report screenshot: {shot}")
    from PIL import Image

    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text and figures, not a blank page


def test_audit_cli_end_to_end(tmp_path, capsys):
    from textleak.cli import main

    folder = make_tiny_bert(tmp_path / "tiny")
    data = write_tsv(tmp_path / "data.tsv")
    out = tmp_path / "audit"
    args = ["audit", "--model", str(folder), "--data", str(data), "--defence", "noise:1e-2", "prune:0.5",
            "--attack", "dlg", "--n", "2", "--steps", "1", "--train", str(data), "--utility-train", "4",
            "--out", str(out), "--quiet"]
    typo = [a if a != "dlg" else "no-such-attack" for a in args]
    assert main([*typo[:-3], "--out", str(tmp_path / "typo")]) == 2  # a typo fails; it never runs DLG instead
    assert "unknown attack 'no-such-attack'" in capsys.readouterr().err and not (tmp_path / "typo").exists()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| prune:0.5 |" in printed
    assert (out / "report.html").exists() and (out / "summary.md").exists()
    table = json.loads((out / "results" / "table.json").read_text())["table"]
    assert {r["defence"] for r in table} == {"none", "noise:0.01", "prune:0.5"}
    assert all(r["accuracy"] is not None for r in table)
    assert main(args) == 0  # resumes: nothing to redo
    assert "0 to run" in capsys.readouterr().out
    assert main(["audit", "--data", str(data), "--defence", "noise:7", "--out", str(tmp_path / "x")]) == 2
    assert "out of range" in capsys.readouterr().err and not (tmp_path / "x").exists()
