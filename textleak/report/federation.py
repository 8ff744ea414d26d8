"""Reports of a federation audit (records written by `integrations.flower.LeakageAudit`): which
client's update leaks what, per round. Reads records, never models.

    federation_summary(records) -> dict      the numbers the report opens with
    render_federation_html(records, title=..., settings=...) -> str   a self-contained page
    federation_table(records) -> str          a plain-text table for the terminal
"""

from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

from .html import STYLE, highlight

Record = Mapping[str, Any]


def _score(r: Record, key: str) -> float | None:
    return (r.get("metrics") or {}).get(key)


def _exact(r: Record) -> tuple[int, int]:
    per = r.get("per_example") or []
    return sum(1 for e in per if e.get("exact_match")), len(r.get("references") or per)


def federation_summary(records: Sequence[Record]) -> dict[str, Any]:
    scored = [r for r in records if r.get("metrics")]
    exact = [_exact(r) for r in scored]
    r1 = [_score(r, "rouge1") for r in scored]
    full = [r for r in scored if _exact(r)[0] == _exact(r)[1] and _exact(r)[1] > 0]
    return {
        "updates": len(records), "scored": len(scored), "errors": sum(1 for r in records if r.get("error")),
        "rounds": sorted({r["round"] for r in records}), "clients": sorted({_client(r) for r in records}),
        "rouge1": sum(r1) / len(r1) if r1 else None,
        "rouge2": (sum(_score(r, "rouge2") or 0 for r in scored) / len(scored)) if scored else None,
        "sentences": sum(t for _, t in exact), "exact_sentences": sum(e for e, _ in exact),
        "updates_recovered": len(full), "methods": sorted({r.get("method") for r in records if r.get("method")}),
        "budget_ran_out": sum(1 for r in records if (r.get("budget") or {}).get("ran_out")),
        "seconds": sum(r.get("seconds", 0) for r in records),
    }


def _client(r: Record) -> Any:
    return r.get("partition") if r.get("partition") is not None else r.get("node_id")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def training_phrase(records: Sequence[Record]) -> str:
    """How the clients trained, e.g. "1 local SGD step at lr 0.1 on 2 sentences" (each distinct setting)."""
    phrases = []
    for r in records:
        s = r.get("settings") or {}
        if not s:
            continue
        k = s.get("local_steps")
        p = (f"{k} local {str(s.get('optimizer', 'sgd')).upper()} step{'s' if k != 1 else ''} at lr {s.get('lr'):g} "
             f"on {s.get('examples')} sentence{'s' if s.get('examples') != 1 else ''}"
             + ("" if s.get("defence") in (None, "none") else f" under {s['defence']}")
             + (", dropout on" if s.get("mode", "").startswith("train") else ""))
        if p not in phrases:
            phrases.append(p)
    return "; ".join(phrases) if phrases else "settings not reported"


def answer_sentence(s: Mapping[str, Any], records: Sequence[Record] = ()) -> str:
    lead = (f"{len(s['clients'])} clients over {len(s['rounds'])} round{'s' if len(s['rounds']) != 1 else ''}, "
            f"each update from {training_phrase(records)}: ") if records else ""
    if not s["scored"]:
        return (f"The server attacked {s['updates']} client updates; no client sent ground truth, so nothing "
                "was scored (see the recovered text below).")
    text = (f"{lead}an honest-but-curious server recovers {_pct(s['rouge1'])} of the words (ROUGE-1) of the "
            f"clients' private sentences, and {s['exact_sentences']} of {s['sentences']} sentences exactly: "
            f"{s['updates_recovered']} of {s['scored']} client updates are read in full "
            f"(methods: {', '.join(s['methods']) or '-'}).")
    return text[0].upper() + text[1:]


def _cell(r: Record | None) -> str:
    if r is None:
        return "<td>-</td>"
    if r.get("error"):
        return f"<td title='{html.escape(r['error'])}'>error</td>"
    r1 = _score(r, "rouge1")
    e, t = _exact(r)
    shade = ("#f4b6b6" if r1 >= 0.9 else "#f9d3a8" if r1 >= 0.5 else "#fbf0c4" if r1 >= 0.2 else "#f4f4f4") \
        if r1 is not None else "#ffffff"
    text = f"{_pct(r1)} words, {e}/{t} exact" if r1 is not None else "not scored"
    return f"<td style='background:{shade}'>{html.escape(text)}<br><small>{html.escape(str(r.get('method')))}</small></td>"


def _grid(records: Sequence[Record]) -> str:
    rounds = sorted({r["round"] for r in records})
    clients = sorted({_client(r) for r in records}, key=lambda c: (str(type(c)), c))
    at = {(_client(r), r["round"]): r for r in records}
    head = "".join(f"<th>round {k}</th>" for k in rounds)
    body = "".join(f"<tr><th>client {html.escape(str(c))}</th>" + "".join(_cell(at.get((c, k))) for k in rounds)
                   + "</tr>" for c in clients)
    return f"<table class='grid'><tr><th></th>{head}</tr>{body}</table>"


def _settings_text(r: Record) -> str:
    s = r.get("settings") or {}
    if not s:
        return "settings unknown"
    keys = ("local_steps", "lr", "batch_size", "examples", "optimizer", "defence", "mode")
    return ", ".join(f"{k} {s[k]}" for k in keys if s.get(k) is not None)


def _details(records: Sequence[Record]) -> str:
    rows = []
    for r in sorted(records, key=lambda r: (r["round"], str(_client(r)))):
        pairs = []
        refs, recs = r.get("references") or [], r.get("recovered") or []
        for e in r.get("per_example") or []:
            ref = refs[e["reference_index"]]
            rec = recs[e["prediction_index"]] if e["prediction_index"] >= 0 else ""
            pairs.append(f"<div class='ref'>{html.escape(ref)}</div><div>{highlight(rec, ref)}</div>")
        if not pairs:
            pairs = [f"<div>{html.escape(t)}</div>" for t in recs] or [html.escape(r.get("error", "-"))]
        notes = "; ".join(r.get("notes") or [])
        budget = " (budget ran out: a lower bound)" if (r.get("budget") or {}).get("ran_out") else ""
        rows.append(f"<tr><td>{r['round']}</td><td>{html.escape(str(_client(r)))}</td>"
                    f"<td>{html.escape(_settings_text(r))}<br><small>{html.escape(notes)}</small></td>"
                    f"<td>{html.escape(str(r.get('method', '-')))}{budget}<br><small>{r.get('seconds', 0):.1f} s"
                    f"</small></td><td>{'<hr>'.join(pairs)}</td></tr>")
    return ("<table class='ex'><tr><th>round</th><th>client</th><th>update's settings</th><th>attack</th>"
            "<th>private sentences (grey) / recovered (<mark>correct words</mark>)</th></tr>" + "".join(rows) + "</table>")


def _example(records: Sequence[Record]) -> str:
    """The best-recovered sentence, beside what the server read."""
    pairs = [(e.get("rouge1", 0.0), r, e) for r in records for e in r.get("per_example") or []
             if e["prediction_index"] >= 0]
    if not pairs:
        return ""
    _, r, e = max(pairs, key=lambda p: p[0])
    ref, rec = r["references"][e["reference_index"]], r["recovered"][e["prediction_index"]]
    return (f"<p>For example, client {html.escape(str(_client(r)))} in round {r['round']} trained on "
            f"<q class='ref'>{html.escape(ref)}</q>; the server read <q>{highlight(rec, ref)}</q>.</p>")


def render_federation_html(records: Sequence[Record], *, title: str = "textleak: what a Flower server reads",
                           settings: Mapping[str, Any] | None = None) -> str:
    s = federation_summary(records)
    caveat = (f"<p><b>{s['budget_ran_out']} attack(s) ran out of their time budget</b>: their scores are lower "
              "bounds on what leaks.</p>" if s["budget_ran_out"] else "")
    setting = html.escape(", ".join(f"{k}: {v}" for k, v in (settings or {}).items()))
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}.grid td{{text-align:center}}.answer{{font-size:1.2em}}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class='answer' id='answer'>{html.escape(answer_sentence(s, records))}</p>"
            f"{_example(records)}{caveat}<p><small>{setting}</small></p>"
            f"<h2>Which client leaks what, per round</h2>{_grid(records)}"
            "<p><small>Cell: share of the client's words recovered (ROUGE-1), sentences recovered exactly, and the "
            "method. Red: 90% of the words or more; orange: 50-90%; yellow: 20-50%; grey: under 20%. "
            "No colour means safe: a stronger or longer attack may read more.</small></p>"
            f"<h2>Every update</h2>{_details(records)}</body></html>")


def federation_table(records: Sequence[Record]) -> str:
    lines = [f"{'round':>5} {'client':>6} {'method':<12} {'ROUGE-1':>7} {'ROUGE-2':>7} {'exact':>7} {'seconds':>8}"]
    for r in sorted(records, key=lambda r: (r["round"], str(_client(r)))):
        e, t = _exact(r)
        r1, r2 = _score(r, "rouge1"), _score(r, "rouge2")
        lines.append(f"{r['round']:>5} {str(_client(r)):>6} {str(r.get('method') or 'error'):<12} "
                     f"{'-' if r1 is None else f'{r1:.3f}':>7} {'-' if r2 is None else f'{r2:.3f}':>7} "
                     f"{f'{e}/{t}':>7} {r.get('seconds', 0):>8.1f}")
    return "\n".join(lines)
