"""The result of a recovery: what was guessed, how, under which assumptions, and how well."""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .io import dumps, write_output

RESULT_FORMAT = "textleak.result"


@dataclass
class RecoveryResult:
    attack: str  # the attack asked for
    method: str  # the method that ran (differs from `attack` for pipelines such as auto)
    modality: str
    prediction: dict[str, Any]
    knowledge: dict[str, Any]  # facts the attacker was declared to know
    assumed: dict[str, Any]  # how each fact was treated (known / recovered / optimised)
    config: dict[str, Any]
    seed: int
    model: dict[str, Any]
    gradient_file: str | None = None
    distance: float | None = None
    history: list[float] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    #: what a rerun must match to repeat this one bit for bit: seed, torch threads, deterministic
    #: kernels, CPU instruction set, thread environment (core.seeding.determinism_settings)
    determinism: dict[str, Any] = field(default_factory=dict)

    # -- views ---------------------------------------------------------------------------
    @property
    def texts(self) -> list[str]:
        return list(self.prediction.get("texts", []))

    def summary(self) -> str:
        lines = [f"attack: {self.method}" + (f" (via {self.attack})" if self.method != self.attack else "")
                 + f"  model: {self.model.get('name')} [{self.model.get('task')}]  seed: {self.seed}"
                 + (f" ({self.determinism['torch_threads']} torch threads)" if "torch_threads" in self.determinism else ""),
                 f"attacker knew: {', '.join(k for k, v in self.knowledge.items() if v not in (None, False)) or 'nothing extra'}"
                 f"; assumed: {', '.join(f'{k} {v}' for k, v in self.assumed.items())}"]
        defence = self.details.get("defence")
        if defence:
            lines.append(f"defence applied by the victim: {defence.get('spec')} (shared: {defence.get('shares', 'gradient')})")
        refs = (self.metrics or {}).get("per_example")
        for i, text in enumerate(self.texts):
            lines.append(f"recovered[{i}]: {text}")
        if self.modality != "text":  # images: numbers, not text, per example
            lines += _generic_lines(self.prediction, refs, self.metrics)
            refs = None
        if refs:
            for e in refs:
                lines.append(f"  reference[{e['reference_index']}] <- recovered[{e['prediction_index']}]: "
                             f"ROUGE-1 {e['rouge1']:.3f}  ROUGE-2 {e['rouge2']:.3f}  ROUGE-L {e['rougeL']:.3f}"
                             + (f"  token acc {e['token_accuracy']:.3f}" if "token_accuracy" in e else "")
                             + f"  exact {'yes' if e['exact_match'] else 'no'}")
        if self.metrics and self.modality == "text":
            m = self.metrics["mean"]
            lines.append("mean: " + "  ".join(f"{k} {v:.3f}" for k, v in m.items()))
        t = self.timings
        if t:
            lines.append("time: " + "  ".join(f"{k} {v:.1f}s" for k, v in t.items()))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"format": RESULT_FORMAT, "version": 1, **asdict(self)}

    def to_json(self, path: str | Path | None = None, *, indent: int = 2, overwrite: bool = False) -> str:
        """Strict JSON (a NaN or infinite number is written as null); to `path` under the output rule."""
        text = dumps(self.to_dict(), indent=indent)
        if path is not None:
            write_output(path, "result", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=overwrite)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "RecoveryResult":
        from .errors import InputError
        from .io import read_text
        from .schema import parse_json

        p = Path(text_or_path)
        is_file = len(str(text_or_path)) < 4096 and p.is_file()
        text = read_text(p, "result file") if is_file else str(text_or_path)
        data = parse_json(text, f"result {p if is_file else '(text)'}", limit=2**31)
        if not isinstance(data, dict) or data.pop("format", RESULT_FORMAT) != RESULT_FORMAT:
            raise InputError("not a textleak result (format 'textleak.result')")
        data.pop("version", None)
        try:
            return cls(**data)
        except TypeError as exc:
            raise InputError(f"not a textleak result: {exc}") from None

    def report(self, fmt: str = "markdown") -> str:
        """A Markdown or self-contained HTML page: texts over iterations, scores, assumptions."""
        rows = [(str(s.get("step")), " | ".join(s.get("texts", []))) for s in self.snapshots]
        if fmt == "markdown":
            out = [f"# textleak: {self.method} on {self.model.get('name')}", "", "```", self.summary(), "```",
                   "", "| iteration | decoded text |", "|---:|---|"]
            out += [f"| {it} | {txt.replace('|', '/')} |" for it, txt in rows]
            return "\n".join(out) + "\n"
        if fmt == "html":
            body = "".join(f"<tr><td>{html.escape(it)}</td><td>{html.escape(txt)}</td></tr>" for it, txt in rows)
            return (f"<!doctype html><html><head><meta charset='utf-8'><title>textleak {html.escape(self.method)}"
                    f"</title></head><body><h1>textleak: {html.escape(self.method)}</h1>"
                    f"<pre>{html.escape(self.summary())}</pre><table border='1'><tr><th>iteration</th>"
                    f"<th>decoded text</th></tr>{body}</table></body></html>")
        raise ValueError(f"unknown report format {fmt!r}; choose markdown or html")


def _number(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3e}" if v and abs(v) < 0.01 else f"{v:.3f}"
    return str(v)


def _generic_lines(prediction: dict[str, Any], refs: list[dict] | None, metrics: dict | None) -> list[str]:
    """Summary lines for a non-text prediction (e.g. images): shapes, labels and every metric."""
    lines = []
    images, labels = prediction.get("images") or [], prediction.get("labels") or []
    shape = "x".join(map(str, prediction.get("shape", [])))
    for i in range(max(len(images), len(labels))):
        lines.append(f"recovered[{i}]: {'image ' + shape if i < len(images) else ''}"
                     + (f"  label {labels[i]}" if i < len(labels) else ""))
    for e in refs or []:
        lines.append(f"  reference[{e['reference_index']}] <- recovered[{e['prediction_index']}]: "
                     + "  ".join(f"{k} {_number(v)}" for k, v in e.items() if not k.endswith("_index")))
    if metrics:
        lines.append("mean: " + "  ".join(f"{k} {_number(v)}" for k, v in metrics["mean"].items()))
    return lines
