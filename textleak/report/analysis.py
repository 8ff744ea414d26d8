"""Reading a merged sweep table: which attack is strongest, which defence setting stops it."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

Row = Mapping[str, Any]


def attacks(table: Sequence[Row]) -> list[str]:
    return sorted({r["attack"] for r in table})


def strongest(table: Sequence[Row]) -> str:
    """The attack with the highest mean ROUGE-1 over every setting it ran on."""
    def mean_r1(a: str) -> float:
        vals = [r["rouge1"] for r in table if r["attack"] == a and r.get("rouge1") is not None]
        return sum(vals) / len(vals) if vals else -1.0
    return max(attacks(table), key=mean_r1)


def baseline_accuracy(table: Sequence[Row]) -> float | None:
    return next((r["accuracy"] for r in table if r["defence"] == "none" and r.get("accuracy") is not None), None)


def weakest_defending(table: Sequence[Row], attack: str, threshold: float = 0.5) -> dict[str, Any] | None:
    """The setting that brings `attack` below ROUGE-1 `threshold` at the least accuracy cost.

    Per defence family the weakest such setting is the smallest strength that defends (the
    largest, where a smaller strength defends more: a privacy budget epsilon); among
    families the one that keeps the most accuracy wins (ties: the lower ROUGE-1). Returns the
    table row plus `cost` (baseline accuracy minus its accuracy, when both are known) and the
    per-family list, or None when no setting defends."""
    rows = [r for r in table if r["attack"] == attack and r["defence"] != "none" and r.get("rouge1") is not None
            and r["rouge1"] < threshold]
    if not rows:
        return None
    families: dict[str, Row] = {}
    for r in rows:
        best = families.get(r["defence_name"])
        sign = 1 if r.get("strength_grows", True) else -1
        if best is None or sign * (r.get("strength") or 0) < sign * (best.get("strength") or 0):
            families[r["defence_name"]] = r
    base = baseline_accuracy(table)

    def cost(r: Row) -> float | None:
        return None if base is None or r.get("accuracy") is None else base - r["accuracy"]

    per_family = [{**r, "cost": cost(r)} for r in families.values()]
    per_family.sort(key=lambda r: (-(r.get("accuracy") if r.get("accuracy") is not None else -1), r["rouge1"]))
    return {**per_family[0], "per_family": per_family, "threshold": threshold, "baseline_accuracy": base}


def pareto(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated when both coordinates are to be maximised, by x."""
    keep = [i for i, (x, y) in enumerate(points)
            if not any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for x2, y2 in points)]
    return sorted(keep, key=lambda i: points[i][0])


def at_budgets(table: Sequence[Row], attack: str) -> list[Row]:
    """The rows of `attack` whose defence is set by a privacy budget (an `epsilon`), largest first."""
    rows = [r for r in table if r["attack"] == attack and r.get("epsilon") is not None and r.get("rouge1") is not None]
    return sorted(rows, key=lambda r: -r["epsilon"])
