"""The terminal summary: one table (defence x attack ROUGE-1/2, accuracy) and the verdict."""

from __future__ import annotations

from typing import Any, Mapping

from .analysis import attacks, baseline_accuracy, strongest, weakest_defending


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def verdict(merged: Mapping[str, Any], threshold: float = 0.5) -> str:
    table = merged["table"]
    best = strongest(table)
    w = weakest_defending(table, best, threshold)
    if w is None:
        return f"No setting brought {best} below ROUGE-1 {threshold}."
    if w.get("accuracy") is None:
        acc = "accuracy not measured"
    elif w.get("cost") is None:
        acc = f"accuracy {_f(w['accuracy'])}"
    else:
        acc = (f"accuracy {_f(w['accuracy'])} vs {_f(w['baseline_accuracy'])} undefended: "
               f"costs {100 * w['cost']:.1f} accuracy points")
    lines = [f"Weakest setting at which {best} falls below ROUGE-1 {threshold}: **{w['defence']}** "
             f"(ROUGE-1 {_f(w['rouge1'])}; {acc})."]
    base = next((r["rouge1"] for r in table if r["attack"] == best and r["defence"] == "none"), None)
    if base is not None and base < threshold:
        lines.append(f"Caution: undefended, {best} already scores ROUGE-1 {_f(base)} < {threshold} with these "
                     "attack settings, so falling below the threshold says little about the defence; "
                     "compare each setting with the undefended score (or give the attack more steps).")
    others = [f"{r['defence']} (ROUGE-1 {_f(r['rouge1'])}, accuracy {_f(r.get('accuracy'))})" for r in w["per_family"][1:]]
    if others:
        lines.append("Weakest defending setting of each other defence: " + "; ".join(others) + ".")
    return "\n".join(lines)


def render_markdown(merged: Mapping[str, Any], *, title: str = "textleak privacy audit", threshold: float = 0.5) -> str:
    table = merged["table"]
    spec = merged.get("spec") or {}
    names = attacks(table)
    defences = list(dict.fromkeys(r["defence"] for r in table))
    by = {(r["attack"], r["defence"]): r for r in table}
    n = max((r["n"] for r in table), default=0)
    from .summary import answer_markdown

    out = [f"# {title}", "", answer_markdown(merged, threshold)]
    if spec:
        out.append(f"Model: {spec.get('model') or 'packaged MiniLM'} [{spec.get('task')}]; data: {spec.get('data')} "
                   f"rows {spec.get('offset', 0)}..{spec.get('offset', 0) + spec.get('n', 0) - 1}; "
                   f"seeds {spec.get('seeds')}; up to {n} runs per cell.")
        if spec.get("attack_options"):
            out.append(f"Attack options: {spec['attack_options']}.")
        out.append("")
    head = ["defence", "accuracy"] + [f"{a} R-1 / R-2" for a in names]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in defences:
        acc = next((by[(a, d)].get("accuracy") for a in names if (a, d) in by), None)
        cells = [d, _f(acc)]
        for a in names:
            r = by.get((a, d))
            cells.append("-" if r is None else f"{_f(r.get('rouge1'))} / {_f(r.get('rouge2'))}"
                         + (f" (n={r['n']})" if r["n"] != n else ""))
        out.append("| " + " | ".join(cells) + " |")
    base = baseline_accuracy(table)
    out += ["", verdict(merged, threshold)]
    eps = [r for r in merged.get("utility", []) if r.get("epsilon") is not None]
    if eps:
        out.append("DP-SGD epsilon (Opacus RDP accountant): " + "; ".join(
            f"{r['defence']}: eps {r['epsilon']:.2f} at delta {r.get('delta')}" for r in eps) + ".")
    if base is None:
        out.append("Accuracy was not measured (no utility units in this sweep).")
    return "\n".join(out) + "\n"
