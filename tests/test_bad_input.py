"""Issue #12, case by case: each bad or hostile input gets one line and a non-zero exit (CLI) or a
TextleakError (API); no file is lost; nothing large is built from a small file.

Two tables of data (forged gradient-file metadata; forged tensors) and one of named cases, each
row tagged with the issue's section: s1 files lost, s2 memory, s3 custom code, s4 verdicts,
s5 raw HTML, s6 lost work, s7 tracebacks, s8 silent surprises, s9 messages; x: further cases of
the same classes. Bad files are forged on the fly from small captures of a tiny BERT.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

import textleak
from textleak.cli import build_parser, main
from textleak.errors import TextleakError

ROOT = Path(__file__).resolve().parents[1]


# -- the world every row starts from ------------------------------------------------------------
@dataclass
class World:
    tmp: Path
    model: Path  # tiny BERT folder
    cls: Path  # a classification capture (2 classes) of the tiny BERT, with its reference beside it
    mlm: Path
    capsys: object

    def payload(self, which: str = "cls") -> dict:
        return torch.load(getattr(self, which), weights_only=True)

    def meta(self, which: str = "cls") -> dict:
        return json.loads(self.payload(which)["metadata"])

    def forge(self, name: str, *, meta: dict | None = None, tensors: dict | None = None, which: str = "cls",
              **extra) -> Path:
        """A .pt written with torch.save directly (no validation), from the good capture."""
        payload = self.payload(which)
        if meta is not None:
            payload["metadata"] = json.dumps(meta)
        if tensors is not None:
            payload["gradients"] = tensors
        payload.update(extra)
        torch.save(payload, self.tmp / name)
        return self.tmp / name

    def cli(self, *argv) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        out, err = self.capsys.readouterr()
        return code, out, err

    def fails(self, words: str, *argv, code: int | None = None) -> str:
        got, out, err = self.cli(*argv)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert got != 0 and (code is None or got == code), (got, err)
        assert len(lines) == 1 and lines[0].startswith("textleak: error:"), err
        assert words in lines[0] and "Traceback" not in err, lines[0]
        return lines[0]


def raises(words: str, fn: Callable, *args, **kwargs) -> str:
    with pytest.raises(TextleakError) as err:
        fn(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message and words in message, message
    return message


@pytest.fixture(scope="module")
def captures(tmp_path_factory, tiny_bert):
    folder = tmp_path_factory.mktemp("captures")
    cap = textleak.capture_gradients(str(tiny_bert), ["the cat sat"], task="classify", labels=[1])
    cap.save(folder / "cls.pt")
    textleak.capture_gradients(str(tiny_bert), ["the dog ran"], task="mlm", seed=1).save(folder / "mlm.pt")
    return folder


@pytest.fixture
def world(tmp_path, tiny_bert, captures, capsys, monkeypatch):
    monkeypatch.setenv("TEXTLEAK_CACHE", str(tmp_path / "cache"))
    for name in ("cls.pt", "cls.reference.json", "mlm.pt", "mlm.reference.json"):
        (tmp_path / name).write_bytes((captures / name).read_bytes())
    return World(tmp_path, tiny_bert, tmp_path / "cls.pt", tmp_path / "mlm.pt", capsys)


def _nothing_built(monkeypatch):
    """Fail the test if a model (or its meta-device skeleton) is built."""
    def boom(*a, **k):
        raise AssertionError("a model was built from the metadata")
    monkeypatch.setattr("textleak.text.modality.load_text_model", boom)
    monkeypatch.setattr("textleak.text.modality.text_declared_shapes", boom)


# -- table 1: forged metadata (section 2, 7, 9) -------------------------------------------------------
def _set(path: str, value):
    def patch(meta: dict) -> dict:
        *parents, last = path.split(".")
        node = meta
        for p in parents:
            node = node[p]
        node[last] = value
        return meta
    return patch


META_ROWS = [
    ("s2 num_labels 2,000,000", _set("model.num_labels", 2_000_000), "model.num_labels: 2000000 is greater"),
    ("s2 num_labels 1e9 (a float)", _set("model.num_labels", 1e9), "model.num_labels: 1000000000.0 is not"),
    ("s2 num_labels 5000, no such dimension", _set("model.num_labels", 5000), "declares 5000 classes"),
    ("s7 model is a string", _set("model", "bert"), "metadata.model: 'bert' is not of type 'object'"),
    ("s7 knowledge is a list", _set("knowledge", [1, 2]), "metadata.knowledge: [1, 2] is not of type 'object'"),
    ("s7 head_seed 'abc'", _set("model.head_seed", "abc"), "metadata.model.head_seed: 'abc' is not of type"),
    ("s7 seq_lengths 'abc'", _set("knowledge.seq_lengths", "abc"), "metadata.knowledge.seq_lengths"),
    ("s7 seq_lengths [100000]", _set("knowledge.seq_lengths", [100000]), "100000 is greater than the maximum"),
    ("s7 seq_lengths [-5]", _set("knowledge.seq_lengths", [-5]), "-5 is less than the minimum"),
    ("s7 mask_positions [['a']]", _set("knowledge.mask_positions", [["a"]]), "mask_positions[0][0]: 'a' is not"),
    ("s9 version '1' (a string)", _set("version", "1"), "version '1' (a JSON str); this textleak reads version 1"),
    ("x version 99", _set("version", 99), "version 99; this textleak reads version 1"),
    ("x version true", _set("version", True), "version True (a JSON bool)"),
    ("x format missing", lambda m: {k: v for k, v in m.items() if k != "format"}, "not a textleak gradient file"),
    ("x modality unknown", _set("modality", "audio"), "metadata.modality: 'audio' is not one of"),
    ("x task unknown", _set("model.task", "qa"), "metadata.model.task: 'qa' is not one of"),
    ("x batch_size 0", _set("knowledge.batch_size", 0), "batch_size: 0 is less than the minimum"),
    ("x batch_size true", _set("knowledge.batch_size", True), "batch_size: True is not"),
    ("x batch_size vs lengths", _set("knowledge.batch_size", 3), "seq_lengths has 1 entries for batch_size 3"),
    ("x unknown knowledge field", _set("knowledge.secret", 1), "Additional properties are not allowed"),
    ("x label not a class", _set("knowledge.labels", [7]), "labels holds 7, not a class of the 2-class model"),
    ("x mask position past the length", _set("knowledge.mask_positions", [[99]]), "position past its length"),
    ("x model name empty", _set("model.name", ""), "model.name: '' should be non-empty"),
]


@pytest.mark.parametrize("mutate,words", [r[1:] for r in META_ROWS], ids=[r[0] for r in META_ROWS])
def test_forged_metadata_is_refused_before_anything_is_built(world, monkeypatch, mutate, words):
    path = world.forge("bad.pt", meta=mutate(world.meta()))
    _nothing_built(monkeypatch)
    raises(words, textleak.load_gradients, path)
    world.fails(words, "recover", "--grads", path, "--quiet")


# -- table 2: forged tensors (section 2, 7, x) --------------------------------------------------------
def _tensors(world: World, replace: Callable[[torch.Tensor], torch.Tensor], name="classifier.bias") -> dict:
    grads = dict(world.payload()["gradients"])
    grads[name] = replace(grads[name])
    return grads


TENSOR_ROWS = [
    ("s7 int64 tensor", lambda t: t.long(), "is int64; gradients are floating point"),
    ("s7 bool tensor", lambda t: t > 0, "is bool; gradients are floating point"),
    ("s7 uint8 tensor", lambda t: t.to(torch.uint8), "is uint8"),
    ("s7 sparse tensor", lambda t: t.to_sparse(), "is a sparse_coo tensor"),
    ("s7 complex64 tensor", lambda t: t.to(torch.complex64), "is complex64"),
    ("x empty tensor", lambda t: t[:0], "a parameter's gradient has 1 to 8 non-empty dimensions"),
    ("x view of a larger storage", lambda t: torch.zeros(1000)[:2], "a view into a larger or shared storage"),
    ("x strided view", lambda t: torch.zeros(4)[::2], "a view into a larger or shared storage"),
    ("x NaN", lambda t: torch.full_like(t, float("nan")), "NaN or infinite values in classifier.bias"),
    ("x wrong shape for the declared model", lambda t: torch.zeros(3), "that parameter's is (2,)"),
]


@pytest.mark.parametrize("replace,words", [r[1:] for r in TENSOR_ROWS], ids=[r[0] for r in TENSOR_ROWS])
def test_forged_tensors_are_refused(world, replace, words):
    path = world.forge("bad.pt", tensors=_tensors(world, replace))
    raises(words, textleak.load_gradients, path)
    world.fails(words, "recover", "--grads", path, "--quiet")


# -- table 3: named cases ----------------------------------------------------------------------------
CASES: dict[str, Callable] = {}


def case(name: str):
    def add(fn):
        CASES[name] = fn
        return fn
    return add


@case("s1 recover of grads.ckpt keeps the gradient file")
def _(w: World, mp):
    g = w.tmp / "grads.ckpt"
    g.write_bytes(w.cls.read_bytes())
    assert w.cli("recover", "--grads", g, "--attack", "dlg", "--steps", "1", "--quiet")[0] == 0
    assert g.read_bytes() == w.cls.read_bytes() and sorted(p.name for p in w.tmp.glob("*.ckpt")) == ["grads.ckpt"]


@case("s1 --checkpoint names an existing unrelated file")
def _(w: World, mp):
    (w.tmp / "notes.txt").write_text("my notes")
    w.fails("notes.txt exists and is not a textleak checkpoint", "recover", "--grads", w.cls, "--checkpoint",
            w.tmp / "notes.txt", "--attack", "dlg", "--steps", "1")
    assert (w.tmp / "notes.txt").read_text() == "my notes"


@case("x a missing --grads creates nothing")
def _(w: World, mp):
    w.fails("does not exist", "recover", "--grads", w.tmp / "missing" / "g.pt")
    assert not (w.tmp / "missing").exists()


@case("s1 --out is the gradient file")
def _(w: World, mp):
    before = w.cls.read_bytes()
    w.fails("is the gradient file (--grads)", "recover", "--grads", w.cls, "--out", w.cls)
    assert w.cls.read_bytes() == before


@case("s1 --report in a missing folder fails before --out is touched")
def _(w: World, mp):
    w.fails("the folder", "recover", "--grads", w.cls, "--out", w.tmp / "r.json", "--report",
            w.tmp / "missing-dir" / "x.html", "--attack", "dlg", "--steps", "1")
    assert not (w.tmp / "r.json").exists()


@case("s1 capture whose reference path holds another file writes nothing")
def _(w: World, mp):
    before = w.cls.read_bytes()
    (w.tmp / "cls.reference.json").write_text('{"mine": true}')
    w.fails("exists and is not a textleak reference file", "capture", "--model", w.model, "--text", "the cat",
            "--out", w.cls)
    assert w.cls.read_bytes() == before and (w.tmp / "cls.reference.json").read_text() == '{"mine": true}'


@case("s2 a deflated .pt is refused before anything is inflated")
def _(w: World, mp):
    src, bomb = w.cls, w.tmp / "bomb.pt"
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as b:
        for info in a.infolist():
            b.writestr(info.filename, a.read(info.filename))
    _nothing_built(mp)

    def no_load(*args, **kwargs):
        raise AssertionError("torch.load was called")

    mp.setattr(torch, "load", no_load)
    w.fails("is compressed; torch.save stores records uncompressed", "recover", "--grads", bomb)


@case("s3 a model folder with auto_map never runs its code")
def _(w: World, mp):
    folder = w.tmp / "custom"
    folder.mkdir()
    for f in w.model.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="evilbert", auto_map={"AutoConfig": "evil.Cfg", "AutoModelForMaskedLM": "evil.M"})
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "evil.py").write_text(f"open({str(w.tmp / 'PWNED')!r}, 'w').write('ran')\n")
    w.fails("never runs a model's own code", "capture", "--model", folder, "--text", "the cat", "--out",
            w.tmp / "g.pt")
    assert not (w.tmp / "PWNED").exists()


@case("s4 Cyrillic and CJK text score as what they are")
def _(w: World, mp):
    from textleak.metrics import score_text_batch

    for text in ("Привет, как дела?", "我们邀请提交论文"):
        got = score_text_batch([text], [text])
        assert got["mean"]["rouge1"] == 1.0 and got["rouge_tokenizer"] == "unicode"
    assert score_text_batch(["the cat"], ["the cat sat"])["rouge_tokenizer"] == "rouge-score"


@case("s5 a poisoned results file cannot put HTML into the report")
def _(w: World, mp):
    from textleak.report.html import render_html

    evil = "<img src=x onerror=alert(1)>"
    merged = {"spec": {"model": evil}, "table": [{"attack": "dlg", "defence": "none", "n": evil, "rouge1": 0.5}],
              "units": [{"attack": "dlg", "defence": "none", "sentence": evil, "seed": 0, "references": [evil],
                         "recovered": [evil], "per_example": [{"reference_index": 0, "prediction_index": 0,
                                                               "rouge1": evil, "rouge2": 1.0}]}]}
    page = render_html(merged, {})
    assert "<img" not in page and "&lt;img" in page


@case("s6 a read-only gradient folder: the checkpoint goes to the cache, or none is kept")
def _(w: World, mp):
    import textleak.core.checkpoint as ck

    real = ck.writable_dir
    mp.setattr(ck, "writable_dir", lambda folder, create=False: real(folder, create=create) and folder != w.tmp)
    code, _, err = w.cli("recover", "--grads", w.cls, "--attack", "dlg", "--steps", "1", "--quiet")
    assert code == 0 and "checkpoint goes to" in err and str(w.tmp / "cache") in err
    mp.setattr(ck, "writable_dir", lambda folder, create=False: False)
    code, _, err = w.cli("recover", "--grads", w.cls, "--attack", "dlg", "--steps", "1", "--quiet")
    assert code == 0 and "keeps no checkpoint" in err


@case("s6 SIGTERM saves a checkpoint at a step's end; the resumed run equals an uninterrupted one")
def _(w: World, mp):
    from textleak.text import problem as text_problem

    common = ["recover", "--grads", w.cls, "--attack", "dlg", "--steps", "4", "--quiet"]
    assert w.cli(*common, "--out", w.tmp / "full.json")[0] == 0
    original, calls = text_problem.TextMatchingProblem.gradients, {"n": 0}

    def flaky(self, variables):
        calls["n"] += 1
        if calls["n"] == 12:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, variables)

    mp.setattr(text_problem.TextMatchingProblem, "gradients", flaky)
    code, _, err = w.cli(*common)
    assert code == 143 and "terminated (SIGTERM)" in err and "--resume" in err, err
    mp.undo()
    assert w.cli(*common, "--resume", "--out", w.tmp / "r.json")[0] == 0
    full, resumed = (json.loads((w.tmp / n).read_text()) for n in ("full.json", "r.json"))
    assert resumed["details"]["resumed"] and resumed["history"] == full["history"]


@case("s6 two recovers of one file: other settings, other checkpoints; the same one is refused")
def _(w: World, mp):
    from textleak.core.checkpoint import CheckpointLock, default_checkpoint

    a, _ = default_checkpoint(w.cls, {"attack": "dlg", "seed": 0})
    b, _ = default_checkpoint(w.cls, {"attack": "tag", "seed": 0})
    assert a != b and a != w.cls
    with CheckpointLock(w.tmp / "c.ckpt"):
        w.fails("is in use by another run", "recover", "--grads", w.cls, "--checkpoint", w.tmp / "c.ckpt")


@case("s6 two unsharded sweeps in one folder: the second is refused")
def _(w: World, mp):
    from textleak.sweep import SweepSpec, run_sweep, shard_lock

    data = w.tmp / "d.tsv"
    data.write_text("sentence\tlabel\nthe cat\t1\n")
    spec = SweepSpec(attacks=["dlg"], defences=["none"], data=str(data), n=1, model=str(w.model))
    (w.tmp / "sw").mkdir()
    with shard_lock(w.tmp / "sw", 0, 1):
        raises("another sweep is running shard 0/1", run_sweep, spec, w.tmp / "sw")
    (w.tmp / "other").mkdir()
    (w.tmp / "other" / "table.json").write_text("mine")  # a folder of the user's: never written into
    raises("holds other files and no sweep.json", run_sweep, spec, w.tmp / "other")


@case("s6 duplicate seeds in a sweep spec are refused")
def _(w: World, mp):
    from textleak.sweep import SweepSpec

    data = w.tmp / "d.tsv"
    data.write_text("sentence\tlabel\nthe cat\t1\n")
    raises("seed 0 is listed twice", SweepSpec(["dlg"], ["none"], str(data), n=1, seeds=[0, 0]).validate)


@case("s6 a bad attack option fails before the sweep folder is claimed")
def _(w: World, mp):
    from textleak.sweep import SweepSpec, run_sweep

    data = w.tmp / "d.tsv"
    data.write_text("sentence\tlabel\nthe cat\t1\n")
    for opts, words in (({"lr": -1}, "lr must be positive"), ({"stepz": 3}, "bad option for attack 'dlg'")):
        spec = SweepSpec(["dlg"], ["none"], str(data), n=1, attack_options={"dlg": opts})
        raises(words, run_sweep, spec, w.tmp / "sw")
        assert not (w.tmp / "sw").exists()


@case("s7/s8 audit: non-UTF-8 data, --out a file, --attack typo, corrupt sweep.json")
def _(w: World, mp):
    (w.tmp / "latin1.tsv").write_bytes("sentence\tlabel\ncaf\xe9\t1\n".encode("latin-1"))
    w.fails("is not UTF-8 text (byte 0xe9", "audit", "--data", w.tmp / "latin1.tsv", "--defence", "fp16",
            "--out", w.tmp / "a")
    (w.tmp / "file").write_text("x")
    w.fails("is a file; give a folder", "audit", "--data", w.tmp / "latin1.tsv", "--defence", "fp16",
            "--out", w.tmp / "file")
    (w.tmp / "d.tsv").write_text("sentence\tlabel\nthe cat\t1\n")
    w.fails("unknown attack 'typo'", "audit", "--data", w.tmp / "d.tsv", "--defence", "fp16", "--attack", "typo",
            "--out", w.tmp / "a")
    assert not (w.tmp / "a").exists()
    (w.tmp / "s").mkdir()
    (w.tmp / "s" / "sweep.json").write_text("{not json")
    w.fails("sweep.json (the folder's sweep record) is not valid JSON", "sweep", "--merge", "--out", w.tmp / "s")


@case("s7 non-UTF-8 --file and --reference")
def _(w: World, mp):
    (w.tmp / "t.txt").write_bytes(b"the cat \xff sat\n")
    w.fails("is not UTF-8 text (byte 0xff at offset 8)", "capture", "--model", w.model, "--file", w.tmp / "t.txt",
            "--out", w.tmp / "g.pt")
    w.fails("reference file", "recover", "--grads", w.cls, "--reference", w.tmp / "t.txt")


@case("s7 reference JSON with an extra or a missing key")
def _(w: World, mp):
    ref = json.loads((w.tmp / "cls.reference.json").read_text())
    (w.tmp / "extra.json").write_text(json.dumps({**ref, "secret": 1}))
    w.fails("Additional properties are not allowed ('secret'", "recover", "--grads", w.cls, "--reference",
            w.tmp / "extra.json")
    (w.tmp / "missing.json").write_text(json.dumps({k: v for k, v in ref.items() if k != "modality"}))
    w.fails("'modality' is a required property", "recover", "--grads", w.cls, "--reference", w.tmp / "missing.json")


@case("s7 a results line {} is left out with a note, and the merge still works")
def _(w: World, mp):
    from textleak.sweep import JsonlAppender, completed, merge

    out = w.tmp / "res"
    rec = {"key": "attack|dlg|none|0|0", "kind": "attack", "attack": "dlg", "method": "dlg", "defence": "none",
           "defence_name": "none", "strength": None, "strength_label": None, "sentence": 0, "seed": 0,
           "references": ["a"], "recovered": ["a"], "metrics": {"rouge1": 1.0}, "seconds": 1.0,
           "per_example": [{"reference_index": 0, "prediction_index": 0}]}
    JsonlAppender(out / "results-000-of-001.jsonl").append(rec)
    with (out / "results-000-of-001.jsonl").open("a") as fh:
        fh.write("{}\n")
    notes: list[str] = []
    assert list(completed(out, say=notes.append)) == [rec["key"]] and "left out 1" in notes[0]
    assert merge(out)["table"][0]["rouge1"] == 1.0


@case("s7 --lr nan and --lr -1")
def _(w: World, mp):
    w.fails("argument --lr: must be a finite number, got nan", "recover", "--grads", w.cls, "--lr", "nan")
    w.fails("argument --lr: must be positive, got -1", "recover", "--grads", w.cls, "--lr", "-1")


@case("s7 a checkpoint holding a list")
def _(w: World, mp):
    from textleak.core.checkpoint import load_checkpoint

    torch.save([1, 2], w.tmp / "c.ckpt")
    w.fails("c.ckpt exists and is not a textleak checkpoint", "recover", "--grads", w.cls, "--checkpoint",
            w.tmp / "c.ckpt", "--resume")
    raises("it is not a textleak checkpoint", load_checkpoint, w.tmp / "c.ckpt", key="k")


@case("s7 a malicious pytorch_model.bin in --model")
def _(w: World, mp):
    folder = w.tmp / "evil-model"
    folder.mkdir()
    for f in w.model.iterdir():
        if f.name != "model.safetensors":
            (folder / f.name).write_bytes(f.read_bytes())

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {w.tmp / 'PWNED'}",))

    torch.save({"w": Evil()}, folder / "pytorch_model.bin")
    w.fails("holds pickled objects that are unsafe to load", "recover", "--grads", w.cls, "--model", folder)
    assert not (w.tmp / "PWNED").exists()


@case("s7 Ctrl-C during start-up (in process, and a real SIGINT to a starting CLI)")
def _(w: World, mp):
    import textleak.cli as cli

    mp.setattr(cli, "_quiet_libraries", lambda: (_ for _ in ()).throw(KeyboardInterrupt))
    w.fails("interrupted (Ctrl-C)", "env", code=130)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "textleak.cli", "env"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode != 0:  # a fast machine may finish before the signal: then nothing to check
        # 130, or the line and then an end by SIGINT (-2: seen once on a loaded machine, with the
        # right line printed; cause not isolated): a shell reads both as exit status 130
        assert proc.returncode in (130, -signal.SIGINT), proc.returncode
        assert err.strip().splitlines() == ["textleak: error: interrupted (Ctrl-C)"], err


@case("s7 API: labels=[True], mask_prob='0.5', gradients=None, lr=nan")
def _(w: World, mp):
    model = str(w.model)
    raises("labels[0] must be an integer, got bool True", textleak.capture_gradients, model, ["the cat"],
           task="classify", labels=[True])
    raises("mask_prob must be a number, got str '0.5'", textleak.capture_gradients, model, ["the cat"],
           mask_prob="0.5")
    raises("gradients must be a GradientFile or a path to one, got NoneType", textleak.recover, gradients=None)
    raises("lr must be a finite number, got nan", textleak.recover, gradients=w.cls, attack="dlg",
           options={"lr": float("nan")})


@case("s8 --file keeps \\v and \\f inside a line")
def _(w: World, mp):
    (w.tmp / "t.txt").write_text("the cat\vsat\fhere\nthe dog ran\n", encoding="utf-8")
    code, out, _ = w.cli("capture", "--model", w.model, "--file", w.tmp / "t.txt", "--batch-size", "1",
                         "--out", w.tmp / "g.pt")
    assert code == 0 and sorted(p.name for p in w.tmp.glob("g-*.pt")) == ["g-000.pt", "g-001.pt"]


@case("s8 --batch-size 0, --labels with mlm, --num-labels 0")
def _(w: World, mp):
    base = ["capture", "--model", w.model, "--text", "the cat", "--out", w.tmp / "g.pt"]
    w.fails("argument --batch-size: must be at least 1, got 0", *base, "--batch-size", "0")
    w.fails("--labels is for --task classify", *base, "--labels", "1")
    w.fails("argument --num-labels: must be at least 2, got 0", *base, "--task", "classify", "--num-labels", "0")
    assert not (w.tmp / "g.pt").exists()


@case("s8 --resume with no checkpoint says so")
def _(w: World, mp):
    w.fails("nothing to resume", "recover", "--grads", w.cls, "--resume", "--attack", "dlg")
    raises("nothing to resume", textleak.recover, gradients=w.cls, checkpoint=w.tmp / "none.ckpt", resume=True)


@case("s8 result JSON holds no NaN or Infinity")
def _(w: World, mp):
    from textleak.result import RecoveryResult

    r = RecoveryResult(attack="dlg", method="dlg", modality="text", prediction={}, knowledge={}, assumed={},
                       config={}, seed=0, model={}, distance=float("inf"), history=[float("nan"), 1.0])
    strict = json.loads(r.to_json(), parse_constant=lambda c: pytest.fail(f"{c} in result JSON"))
    assert strict["distance"] is None and strict["history"] == [None, 1.0]


@case("s8 audit: --n past the file takes every row with a note; repeated --seeds are dropped with a note")
def _(w: World, mp):
    (w.tmp / "d.tsv").write_text("sentence\tlabel\nthe cat sat\t1\nthe dog ran\t0\n")
    code, out, err = w.cli("audit", "--model", w.model, "--data", w.tmp / "d.tsv", "--defence", "fp16",
                           "--attack", "dlg", "--steps", "1", "--n", "50", "--seeds", "0", "0", "--no-utility",
                           "--quiet", "--out", w.tmp / "audit")
    assert code == 0, err
    assert "attacking the 2 from row 0 (--n 50 asked for more)" in out and "running seeds 0" in out
    assert "4 units: 0 done, 4 to run" in out


@case("s9 random bytes are not called pickled objects")
def _(w: World, mp):
    (w.tmp / "r.pt").write_bytes(os.urandom(4096))
    msg = w.fails("is not a textleak gradient file", "recover", "--grads", w.tmp / "r.pt")
    assert "pickled" not in msg
    # one random file in 256 has "{" where a safetensors header starts: it is named the same way
    (w.tmp / "s.pt").write_bytes(struct.pack("<Q", 2 ** 62) + b"{" + os.urandom(4087))
    msg = w.fails("is not a textleak gradient file", "recover", "--grads", w.tmp / "s.pt")
    assert "pickled" not in msg


@case("s9 weights that differ under the same head seed say so")
def _(w: World, mp):
    meta = w.meta()
    meta["model"]["weights_hash"] = "0" * 16
    w.fails("model weights differ from the victim's (same head seed 0", "recover", "--grads",
            w.forge("bad.pt", meta=meta), "--attack", "dlg")


@case("s9 textleak --version, and help on every recover option")
def _(w: World, mp):
    code, out, _ = w.cli("--version")
    assert code == 0 and out.strip() == f"textleak {textleak.__version__}"
    sub = next(a for a in build_parser()._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    for parser_name in ("recover", "capture", "demo"):
        bare = [a.dest for a in sub.choices[parser_name]._actions if a.help is None]
        assert bare == [], (parser_name, bare)


@case("x outputs: unrelated files need --overwrite, inputs never; earlier outputs are replaced")
def _(w: World, mp):
    (w.tmp / "notes.json").write_text('{"mine": 1}')
    base = ["recover", "--grads", w.cls, "--attack", "dlg", "--steps", "1", "--quiet"]
    w.fails("notes.json exists and is not a textleak result", *base, "--out", w.tmp / "notes.json")
    assert w.cli(*base, "--out", w.tmp / "notes.json", "--overwrite")[0] == 0
    assert w.cli(*base, "--out", w.tmp / "notes.json")[0] == 0  # now an earlier result: replaced
    w.fails("is the reference (--reference)", *base, "--reference", w.tmp / "cls.reference.json", "--out",
            w.tmp / "cls.reference.json", "--overwrite")
    w.fails("--report and --out both name", *base, "--out", w.tmp / "x.md", "--report", w.tmp / "x.md")
    (w.tmp / "s.txt").write_text("the cat\n")
    w.fails("is the --file", "capture", "--model", w.model, "--file", w.tmp / "s.txt", "--out", w.tmp / "s.txt")
    raises("exists and is not a textleak gradient file", textleak.save_gradients, w.tmp / "s.txt",
           textleak.load_gradients(w.cls))
    assert (w.tmp / "s.txt").read_text() == "the cat\n"


@case("x metadata nested too deeply for the JSON parser")
def _(w: World, mp):
    text = json.dumps(w.meta())[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    payload = w.payload()
    payload["metadata"] = text
    torch.save(payload, w.tmp / "deep.pt")
    raises("metadata nests too deeply", textleak.load_gradients, w.tmp / "deep.pt")


@case("x containers: legacy pickle, extra payload entry, huge safetensors header, safetensors ints")
def _(w: World, mp):
    from safetensors.torch import save_file

    grads = w.payload()["gradients"]
    torch.save(w.payload(), w.tmp / "old.pt", _use_new_zipfile_serialization=False)
    raises("neither a torch.save archive nor safetensors", textleak.load_gradients, w.tmp / "old.pt")
    raises("unexpected entry 'extra'", textleak.load_gradients, w.forge("x.pt", extra=torch.zeros(3)))
    (w.tmp / "h.safetensors").write_bytes((2**40).to_bytes(8, "little") + b"{" + b" " * 100)
    raises("not a readable safetensors file (header of", textleak.load_gradients, w.tmp / "h.safetensors")
    save_file({**grads, "classifier.bias": grads["classifier.bias"].long()}, w.tmp / "i.safetensors",
              metadata={"textleak": w.payload()["metadata"]})
    raises("classifier.bias is int64", textleak.load_gradients, w.tmp / "i.safetensors")


@case("x a gradient the declared model lacks is refused before the model is loaded")
def _(w: World, mp):
    grads = {**w.payload()["gradients"], "bert.extra.weight": torch.zeros(2, 2)}
    mp.setattr("textleak.text.modality.load_text_model", lambda *a, **k: pytest.fail("model loaded"))
    raises("gradient 'bert.extra.weight' names no parameter of", textleak.load_gradients,
           w.forge("x.pt", tensors=grads))


@case("x API arguments of the wrong type")
def _(w: World, mp):
    raises("batch[0] must be a string", textleak.capture_gradients, str(w.model), [3])
    raises("cannot declare 'x'", textleak.capture_gradients, str(w.model), ["a"], declare=["x"])
    raises("bad option for attack 'dlg'", textleak.recover, gradients=w.cls, attack="dlg", options={"stepz": 1})
    raises("unknown: 'secret' is not one of", textleak.recover, gradients=w.cls, unknown=["secret"])
    raises("checkpoint must be a file path", textleak.recover, gradients=w.cls, checkpoint=3)
    raises("knowledge.seq_lengths[0]: 'a' is not", textleak.Knowledge.from_dict, {"seq_lengths": ["a"]})
    raises("steps must be an integer", textleak.MatchConfig, steps="5")
    raises("model must be a name, a folder, a TextTarget or a transformers model", textleak.capture_gradients,
           3.5, ["a"])


@case("x data files: a JSONL line that is not an object, a TSV field past csv's limit")
def _(w: World, mp):
    from textleak.data import read_sentences

    (w.tmp / "d.jsonl").write_text('{"sentence": "ok"}\n[1, 2]\n')
    raises("d.jsonl:2: needs a non-empty 'sentence' or 'text' string", read_sentences, w.tmp / "d.jsonl")
    (w.tmp / "big.tsv").write_text("sentence\tlabel\n" + "a" * 200_000 + "\t1\n")
    raises("not a readable tsv file", read_sentences, w.tmp / "big.tsv")


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_case(world, monkeypatch, name):
    CASES[name](world, monkeypatch)


def test_every_issue_section_has_rows():
    sections = {row[0].split()[0] for row in META_ROWS + TENSOR_ROWS} | {n.split()[0] for n in CASES}
    assert {"s1", "s2", "s3", "s4", "s5", "s6", "s7", "s9", "s7/s8", "s8", "x"} <= sections
