"""A self-contained HTML page: figures embedded as base64 PNG, tables, recovered examples with
the correctly recovered words highlighted. No script, no external resource."""

from __future__ import annotations

import base64
import html
from collections import Counter
from typing import Any, Mapping

from ..metrics import TOKENIZERS, choose_tokenizer
from .analysis import attacks, strongest
from .markdown import _f, verdict
from .summary import answer_html

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}mark{background:#b6f2b6}
.ref{color:#555}.ex td{vertical-align:top}figure{margin:1.5em 0}figcaption{color:#555}"""


def _esc(value: Any) -> str:
    """Every value written into the page, whatever its type, as escaped text."""
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    """A number as `_f` formats it; anything else (a poisoned results file) escaped as text."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return _esc(_f(value, digits))
    return _esc(value)


def highlight(recovered: str, reference: str) -> str:
    """`recovered` with each word whose ROUGE token also occurs in `reference` wrapped in <mark>
    (each reference token matches at most once), tokenised as the metrics were (`choose_tokenizer`)."""
    recovered, reference = str(recovered), str(reference)
    tokens = TOKENIZERS[choose_tokenizer([recovered, reference])]
    left = Counter(tokens(reference))
    out = []
    for word in recovered.split():
        toks = tokens(word)
        hit = bool(toks) and all(left[t] > 0 for t in toks)
        if hit:
            left.subtract(toks)
        out.append(f"<mark>{html.escape(word)}</mark>" if hit else html.escape(word))
    return " ".join(out)


def _pick(items: Any, index: Any) -> str:
    """items[index] as text, or "" when a (poisoned) record points outside its lists."""
    if isinstance(index, int) and not isinstance(index, bool) and isinstance(items, list) and 0 <= index < len(items):
        return str(items[index])
    return ""


def _examples(merged: Mapping[str, Any], attack: str, per_setting: int) -> str:
    units = [u for u in merged.get("units", []) if u.get("attack") == attack]
    order = list(dict.fromkeys(r["defence"] for r in merged["table"]))
    rows = []
    for d in order:
        mine = [u for u in units if u.get("defence") == d]
        for u in sorted(mine, key=lambda u: (str(u.get("sentence")), str(u.get("seed"))))[:per_setting]:
            pairs = []
            for e in u.get("per_example") or []:
                ref = _pick(u.get("references"), e.get("reference_index"))
                rec = _pick(u.get("recovered"), e.get("prediction_index"))
                pairs.append(f"<div class='ref'>{_esc(ref)}</div><div>{highlight(rec, ref)}</div>"
                             f"<small>ROUGE-1 {_num(e.get('rouge1'))} ROUGE-2 {_num(e.get('rouge2'))}</small>")
            rows.append(f"<tr><td>{_esc(d)}</td><td>{_esc(u.get('sentence'))}</td><td>{'<hr>'.join(pairs)}</td></tr>")
    return ("<table class='ex'><tr><th>defence</th><th>row</th><th>reference (grey) / recovered "
            "(<mark>correct words</mark>)</th></tr>" + "".join(rows) + "</table>")


def render_html(merged: Mapping[str, Any], figures: Mapping[str, tuple[bytes, str]], *,
                title: str = "textleak privacy audit", examples: int = 2, threshold: float = 0.5) -> str:
    table = merged["table"]
    names = attacks(table)
    best = strongest(table)
    spec = merged.get("spec") or {}
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["attack", "defence", "n", "ROUGE-1", "ROUGE-2", "ROUGE-L",
                                                            "token acc.", "accuracy", "epsilon", "s / run"])
    body = "".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in [_esc(r["attack"]), _esc(r["defence"]), _esc(r["n"]),
                                                   _num(r.get("rouge1")), _num(r.get("rouge2")), _num(r.get("rougeL")),
                                                   _num(r.get("token_accuracy")), _num(r.get("accuracy")),
                                                   _num(r.get("epsilon"), 2), _num(r.get("seconds_mean"), 1)]) + "</tr>"
        for r in table)
    figs = "".join(
        f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>" for name, (png, caption) in figures.items())
    settings = html.escape(", ".join(f"{k}: {v}" for k, v in spec.items() if k in
                                     ("model", "task", "data", "offset", "n", "seeds", "attack_options", "utility")))
    verdict_html = html.escape(verdict(merged, threshold)).replace("**", "")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name=\"generator\" "
            f"content=\"textleak\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{answer_html(merged, threshold)}"
            f"<p>Attacks: {html.escape(', '.join(names))} (strongest here: {html.escape(best)}).</p>"
            f"<p class='verdict'>{verdict_html.replace(chr(10), '<br>')}</p>"
            f"<p><small>{settings}</small></p><h2>Figures</h2>{figs}"
            f"<h2>Results</h2><table><tr>{head}</tr>{body}</table>"
            f"<h2>Recovered text ({html.escape(best)})</h2>{_examples(merged, best, examples)}"
            "</body></html>")
