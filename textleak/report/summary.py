"""The answer an audit opens with, for a reader with five minutes.

For this model and these training settings: what an attacker recovers (share of words, ROUGE-1,
and sentences recovered exactly), one example sentence beside what the attacker read, and the
settings that stop it with the accuracy they cost; then one row per setting. Units whose time
budget ran out are counted, because their scores are lower bounds on what leaks.

    audit_answer(merged, threshold) -> dict
    answer_html(merged, threshold) -> str    (a <section id='answer'>, placed first in report.html)
    answer_markdown(merged, threshold) -> str
"""

from __future__ import annotations

import html
import math
from typing import Any, Mapping, Sequence

from .analysis import baseline_accuracy, strongest, weakest_defending

Unit = Mapping[str, Any]


def _pairs(units: Sequence[Unit]) -> list[dict[str, Any]]:
    """(reference, recovered, rouge1, exact) per attacked sentence."""
    out = []
    for u in units:
        for e in u.get("per_example") or []:
            ref = u["references"][e["reference_index"]]
            rec = u["recovered"][e["prediction_index"]] if e["prediction_index"] >= 0 else ""
            out.append({"reference": ref, "recovered": rec, "rouge1": _score(e.get("rouge1", 0.0)),
                        "exact": bool(e.get("exact_match"))})
    return out


def _score(value: Any) -> float:
    """A ROUGE score as a float; anything else (a hand-edited results line) counts as 0."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else 0.0


def _leak(units: Sequence[Unit]) -> dict[str, Any]:
    pairs = _pairs(units)
    words = sum(p["rouge1"] for p in pairs) / len(pairs) if pairs else None
    return {"words": words, "exact": sum(p["exact"] for p in pairs), "sentences": len(pairs), "pairs": pairs,
            "methods": sorted({u.get("method") for u in units if u.get("method")}),
            "budget_ran_out": sum(1 for u in units if (u.get("budget") or {}).get("ran_out"))}


def _example(pairs: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """A telling example: the best-recovered sentence of moderate length."""
    if not pairs:
        return None
    return max(pairs, key=lambda p: (p["rouge1"], -abs(len(p["reference"].split()) - 10)))


def audit_answer(merged: Mapping[str, Any], threshold: float = 0.5) -> dict[str, Any]:
    table, units = merged["table"], merged.get("units", [])
    spec = merged.get("spec") or {}
    best = strongest(table)
    settings = list(dict.fromkeys(r["defence"] for r in table))
    base = baseline_accuracy(table)
    rows = []
    for d in settings:
        mine = [u for u in units if u["attack"] == best and u["defence"] == d]
        row = next((r for r in table if r["attack"] == best and r["defence"] == d), {})
        leak = _leak(mine)
        acc = row.get("accuracy")
        rows.append({"defence": d, **{k: v for k, v in leak.items() if k != "pairs"}, "accuracy": acc,
                     "cost": None if acc is None or base is None else base - acc,
                     "batch_size": max((u.get("batch_size", 1) for u in mine), default=None)})
    undefended = _leak([u for u in units if u["attack"] == best and u["defence"] == "none"])
    return {"attack": best, "model": spec.get("model") or "the packaged MiniLM", "task": spec.get("task"),
            "data": spec.get("data"), "undefended": {k: v for k, v in undefended.items() if k != "pairs"},
            "example": _example(undefended["pairs"]), "stop": weakest_defending(table, best, threshold),
            "threshold": threshold, "baseline_accuracy": base, "settings": rows,
            "budget_ran_out": sum(1 for u in units if (u.get("budget") or {}).get("ran_out")),
            "units": len(units)}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def headline(a: Mapping[str, Any]) -> str:
    u = a["undefended"]
    what = ("classifier fine-tuning" if a["task"] == "classify" else "masked-LM training") if a["task"] else "training"
    if not u["sentences"]:
        return f"No undefended sentence was attacked, so this audit cannot say what {a['attack']} recovers."
    batch = next((r["batch_size"] for r in a["settings"] if r["defence"] == "none"), None)
    return (f"For {a['model']} ({what}, batch size {batch}, the gradient of one step as data-parallel or federated "
            "training shares it, dropout off), "
            f"an attacker recovers {_pct(u['words'])} of the words and {u['exact']}/{u['sentences']} sentences "
            f"exactly (attack {a['attack']}" + ("" if u["methods"] == [a["attack"]] else
                                                 f": {', '.join(u['methods']) or '-'}") + ").")


def stop_sentence(a: Mapping[str, Any]) -> str:
    w = a["stop"]
    if w is None:
        return (f"None of the settings tested stops it: the strongest attack keeps ROUGE-1 at or above "
                f"{a['threshold']} under every one.")
    if w.get("cost") is not None:
        cost = (f"it costs {100 * w['cost']:.1f} accuracy points ({w['baseline_accuracy']:.3f} undefended, "
                f"{w['accuracy']:.3f} with it)")
    elif w.get("accuracy") is not None:
        cost = f"accuracy with it {w['accuracy']:.3f} (undefended accuracy not measured)"
    else:
        cost = "its accuracy cost was not measured"
    cut = next((r["budget_ran_out"] for r in a["settings"] if r["defence"] == w["defence"]), 0)
    warn = (f" But {cut} of its attacks ran out of their time budget: a longer attack may read more, so this "
            "is not yet evidence that it protects." if cut else "")
    return (f"What stops it: {w['defence']} brings ROUGE-1 down to {w['rouge1']:.2f} (below {a['threshold']}); "
            f"{cost}.{warn}")


def caveat(a: Mapping[str, Any]) -> str | None:
    if not a["budget_ran_out"]:
        return None
    return (f"{a['budget_ran_out']} of {a['units']} attacks ran out of their time budget and returned their best "
            "guess so far: where they did, what leaks is at least what is shown (give a larger --budget to tighten).")


def _row(r: Mapping[str, Any], threshold: float) -> str:
    acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
    cost = "-" if r["cost"] is None else f"{100 * r['cost']:.1f}"
    stops = r["words"] is not None and r["words"] < threshold and r["defence"] != "none"
    return (f"<tr{' class=stops' if stops else ''}><td>{html.escape(r['defence'])}</td><td>{_pct(r['words'])}</td><td>{r['exact']}/{r['sentences']}"
            f"</td><td>{acc}</td><td>{cost}</td><td>{r['budget_ran_out'] or ''}</td></tr>")


def answer_html(merged: Mapping[str, Any], threshold: float = 0.5) -> str:
    from .html import highlight

    a = audit_answer(merged, threshold)
    ex = a["example"]
    example = ("" if ex is None else
               f"<p class='example'>Example. Private: <q class='ref'>{html.escape(ex['reference'])}</q><br>"
               f"Attacker read: <q>{highlight(ex['recovered'], ex['reference'])}</q></p>")
    note = caveat(a)
    rows = "".join(_row(r, threshold) for r in a["settings"])
    return ("<section id='answer'><style>#answer{border:2px solid #444;padding:.2em 1em;margin:1em 0}"
            "#answer .lead{font-size:1.25em;font-weight:600}#answer .caveat{color:#8a4b00}#answer tr.stops td{background:#dff3df}</style><h2>The answer</h2>"
            f"<p class='lead'>{html.escape(headline(a))}</p>{example}"
            f"<p class='stop'>{html.escape(stop_sentence(a))}</p>"
            + (f"<p class='caveat'>{html.escape(note)}</p>" if note else "")
            + "<table class='settings'><tr><th>setting</th><th>words recovered</th><th>sentences exact</th>"
              "<th>accuracy</th><th>accuracy points lost</th><th>budget ran out</th></tr>"
            + rows + f"</table><p><small>Green rows: settings under which the attack recovers less than "
              f"{100 * threshold:.0f}% of the words.</small></p></section>")


def answer_markdown(merged: Mapping[str, Any], threshold: float = 0.5) -> str:
    a = audit_answer(merged, threshold)
    lines = ["## The answer", "", headline(a), ""]
    if a["example"]:
        lines += [f"Example. Private: \"{a['example']['reference']}\"; the attacker read: "
                  f"\"{a['example']['recovered']}\".", ""]
    lines += [stop_sentence(a), ""]
    if caveat(a):
        lines += [caveat(a), ""]
    return "\n".join(lines)
