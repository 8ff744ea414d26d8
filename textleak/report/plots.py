"""Matplotlib figures (Agg backend) from a merged sweep table, returned as PNG bytes.

rouge_vs_strength   ROUGE-1 (solid) and ROUGE-2 (dashed) of each attack against each defence's
                    strength, the undefended level as a dotted line; fixed defences as bars.
success_vs_accuracy attack ROUGE-1 against the defended model's accuracy, one point per setting.
frontier            privacy (1 - ROUGE-1 of the strongest attack) against accuracy, with the
                    Pareto-optimal settings joined: the privacy-utility frontier.
"""

from __future__ import annotations

import io
from typing import Any, Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .analysis import attacks, pareto, strongest  # noqa: E402

Row = Mapping[str, Any]
LOG_AXIS = {"noise", "laplace", "dpeps"}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _colours(names: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def rouge_vs_strength(table: Sequence[Row]) -> bytes | None:
    graded = sorted({r["defence_name"] for r in table if r.get("strength") is not None})
    fixed = [r for r in table if r.get("strength") is None]
    panels = graded + (["fixed"] if fixed else [])
    if not panels:
        return None
    names = attacks(table)
    colour = _colours(names)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False, sharey=True)
    for ax, panel in zip(axes[0], panels):
        if panel == "fixed":
            specs = sorted({r["defence"] for r in fixed}, key=lambda s: (s != "none", s))
            width = 0.8 / len(names)
            for j, a in enumerate(names):
                vals = [next((r["rouge1"] for r in fixed if r["attack"] == a and r["defence"] == s), 0) for s in specs]
                ax.bar([i + j * width for i in range(len(specs))], vals, width, color=colour[a], label=a)
            ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(specs))], specs)
            ax.set_title("no-parameter defences")
        else:
            for a in names:
                rows = sorted((r for r in table if r["attack"] == a and r["defence_name"] == panel),
                              key=lambda r: r["strength"])
                xs = [r["strength"] for r in rows]
                ax.plot(xs, [r["rouge1"] for r in rows], "o-", color=colour[a], label=f"{a} ROUGE-1")
                if all("rouge2" in r for r in rows):
                    ax.plot(xs, [r["rouge2"] for r in rows], "s--", color=colour[a], alpha=0.6, label=f"{a} ROUGE-2")
                base = next((r["rouge1"] for r in table if r["attack"] == a and r["defence"] == "none"), None)
                if base is not None:
                    ax.axhline(base, color=colour[a], linestyle=":", linewidth=1)
            if panel in LOG_AXIS:
                ax.set_xscale("log")
            label = next(r["strength_label"] for r in table if r["defence_name"] == panel)
            ax.set_xlabel(label)
            ax.set_title(panel)
        ax.axhline(0.5, color="grey", linewidth=0.6)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("ROUGE (dotted: undefended ROUGE-1)")
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle("Attack success against defence strength", y=1.03)
    return _png(fig)


def success_vs_accuracy(table: Sequence[Row]) -> bytes | None:
    rows = [r for r in table if r.get("accuracy") is not None]
    if not rows:
        return None
    names = attacks(rows)
    colour = _colours(names)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for a in names:
        pts = [r for r in rows if r["attack"] == a]
        ax.scatter([r["accuracy"] for r in pts], [r["rouge1"] for r in pts], color=colour[a], label=a)
        for r in pts:
            ax.annotate(r["defence"], (r["accuracy"], r["rouge1"]), fontsize=6, alpha=0.8,
                        xytext=(3, 3), textcoords="offset points")
    ax.axhline(0.5, color="grey", linewidth=0.6)
    ax.set_xlabel("accuracy of the model trained under the defence")
    ax.set_ylabel("attack ROUGE-1")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Attack success against model accuracy")
    return _png(fig)


def frontier(table: Sequence[Row]) -> bytes | None:
    best = strongest(table)
    rows = [r for r in table if r["attack"] == best and r.get("accuracy") is not None]
    if not rows:
        return None
    pts = [(1 - r["rouge1"], r["accuracy"]) for r in rows]
    front = pareto(pts)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.scatter(*zip(*pts), color="lightgrey", edgecolor="grey", label="setting")
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "o-", color="tab:red", label="Pareto frontier")
    for r, (x, y) in zip(rows, pts):
        ax.annotate(r["defence"], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"privacy: 1 - ROUGE-1 of {best}")
    ax.set_ylabel("accuracy")
    ax.set_xlim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Privacy-utility frontier")
    return _png(fig)


#: name -> (figure function, caption)
FIGURES: dict[str, tuple[Callable[[Sequence[Row]], bytes | None], str]] = {
    "rouge_vs_strength": (rouge_vs_strength, "ROUGE of each attack against each defence's strength"),
    "success_vs_accuracy": (success_vs_accuracy, "Attack ROUGE-1 against the accuracy the defence leaves"),
    "frontier": (frontier, "Privacy-utility frontier for the strongest attack"),
}
