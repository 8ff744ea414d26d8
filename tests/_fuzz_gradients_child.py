"""The gradient-file fuzz, run in a child process so that its peak memory can be measured alone.

Usage: python tests/_fuzz_gradients_child.py MAX_EXAMPLES   (prints one JSON line; exit 1 on a failure)

Files come from three strategies: bytes of valid `.pt` / `.safetensors` files mutated (bytes
flipped, cut, inserted, overwritten); payloads forged field by field (metadata values of any JSON
type at any place, tensors of any dtype, shape, layout and view); and a fixed set of bombs (a
deflated record that inflates 1000x, a safetensors header declaring 2**40 elements, a torch
archive whose record claims 1 GiB, 10**9 classes, JSON nested 100,000 deep).
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors.torch import save_file

from textleak.errors import TextleakError
from textleak.gradients import GradientFile, load_gradients, save_gradients

TMP = Path(tempfile.mkdtemp(prefix="textleak-fuzz-"))
META = {"modality": "text", "knowledge": {"batch_size": 1, "seq_lengths": [4]},
        "model": {"name": str(TMP / "no-such-model"), "family": "bert", "task": "classify", "num_labels": 2,
                  "head_seed": 0}, "capture": {}, "extra": {}}
TENSORS = {"classifier.weight": torch.randn(2, 4), "classifier.bias": torch.randn(2), "bert.w": torch.randn(3)}
BASES = [save_gradients(TMP / "base.pt", GradientFile(dict(TENSORS), dict(META))).read_bytes(),
         save_gradients(TMP / "base.safetensors", GradientFile(dict(TENSORS), dict(META))).read_bytes()]
_counter = iter(range(10**9))


def _path(suffix: str) -> Path:
    return TMP / f"case-{next(_counter)}{suffix}"


def _stamped(meta: dict) -> str:
    return json.dumps({**meta, "format": "textleak.gradients", "version": 1})


def _lying_record(archive: bytes) -> bytes:
    """The archive with its first tensor record's central-directory sizes set to 2 GiB - 1."""
    data = bytearray(archive)
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        name_len = int.from_bytes(data[at + 28:at + 30], "little")
        if data[at + 46:at + 46 + name_len].endswith(b"/data/0"):
            data[at + 20:at + 28] = (2**31 - 1).to_bytes(4, "little") * 2
            break
        at = data.find(b"PK\x01\x02", at + 4)
    return bytes(data)


def _bombs() -> list[Path]:
    out = []
    inflating = _path(".pt")  # the base archive, every record deflated, one padded with 1 MB of zeros
    with zipfile.ZipFile(TMP / "base.pt") as a, zipfile.ZipFile(inflating, "w", zipfile.ZIP_DEFLATED) as b:
        for info in a.infolist():
            b.writestr(info.filename, a.read(info.filename) + (bytes(2**20) if "/data/" in info.filename else b""))
    out.append(inflating)
    header = json.dumps({"x": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 2**42]},
                         "__metadata__": {"textleak": _stamped(META)}}).encode()
    huge = _path(".safetensors")
    huge.write_bytes(len(header).to_bytes(8, "little") + header + bytes(64))
    out.append(huge)
    lying = _path(".pt")
    lying.write_bytes(_lying_record(BASES[0]))
    out.append(lying)
    deep = _stamped(META)[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    for text in (_stamped({**META, "model": {**META["model"], "num_labels": 10**9}}), deep):
        p = _path(".pt")
        torch.save({"format": "textleak.gradients", "metadata": text, "gradients": dict(TENSORS)}, p)
        out.append(p)
    return out


BOMBS = _bombs()

# -- strategies --------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
PATHS = ["version", "format", "modality", "model", "model.name", "model.task", "model.num_labels",
         "model.head_seed", "knowledge", "knowledge.batch_size", "knowledge.seq_lengths", "knowledge.labels",
         "knowledge.mask_positions", "knowledge.special_tokens", "capture", "extra", "versions", "new"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.bool, torch.uint8,
          torch.complex64]


@st.composite
def mutated(draw) -> Path:
    data = bytearray(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        op, at = draw(st.sampled_from(["flip", "cut", "insert", "overwrite"])), draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            chunk = draw(st.binary(min_size=1, max_size=64))
            data[at:at + len(chunk)] = chunk
    p = _path(".safetensors" if data[8:9] == b"{" else ".pt")
    p.write_bytes(bytes(data))
    return p


@st.composite
def tensors(draw) -> torch.Tensor:
    shape = draw(st.lists(st.integers(0, 5), max_size=3))
    t = torch.zeros(shape, dtype=torch.float32).uniform_().to(draw(st.sampled_from(DTYPES)))
    kind = draw(st.sampled_from(["plain", "plain", "view", "sparse"]))
    if kind == "view" and t.numel() > 1:
        t = t.reshape(-1)[1:]
    elif kind == "sparse" and t.ndim >= 1 and t.dtype != torch.bool:
        t = t.to_sparse()
    return t


@st.composite
def forged(draw) -> Path:
    meta = json.loads(_stamped(META))
    for _ in range(draw(st.integers(0, 3))):
        *parents, last = draw(st.sampled_from(PATHS)).split(".")
        node = meta
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node[last] = draw(json_values)
    grads = dict(TENSORS) if draw(st.booleans()) else {}
    grads.update(draw(st.dictionaries(st.sampled_from(["classifier.bias", "bert.w", "x", ""]), tensors(),
                                      max_size=3)))
    text = json.dumps(meta)
    if draw(st.booleans()):
        p = _path(".pt")
        torch.save({"format": "textleak.gradients", "metadata": text, "gradients": grads}, p)
        return p
    p = _path(".safetensors")
    dense = {k: v.contiguous() for k, v in grads.items() if k and v.layout == torch.strided}
    try:
        save_file(dense, p, metadata={"textleak": text})
    except Exception:  # a dtype or layout safetensors cannot write: write the bytes as given instead
        p.write_bytes(text.encode())
    return p


# -- the property ------------------------------------------------------------------------------------
def check(path: Path) -> None:
    try:
        loaded = load_gradients(path)
    except TextleakError as exc:
        assert "\n" not in str(exc), str(exc)
        return
    assert isinstance(loaded, GradientFile)
    held = sum(t.numel() * t.element_size() for t in loaded.gradients.values())
    assert held <= path.stat().st_size, (held, path.stat().st_size)  # the memory bound, by construction


def run(max_examples: int) -> int:
    """Fuzz `max_examples` files; returns how many ran."""
    count = {"n": 0}

    @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(mutated(), forged(), st.sampled_from(BOMBS)))
    def fuzz(path: Path) -> None:
        count["n"] += 1
        check(path)
        if path not in BOMBS:
            path.unlink()

    fuzz()
    return count["n"]


def main(max_examples: int) -> int:
    for bomb in BOMBS:
        check(bomb)
    check(TMP / "base.pt")
    run(10)  # warm-up: hypothesis builds its Unicode tables once per machine, and libraries load lazily
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    examples = run(max_examples)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"examples": examples, "bombs": len(BOMBS), "baseline_mib": round(baseline, 1),
                      "peak_mib": round(peak, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 150))
