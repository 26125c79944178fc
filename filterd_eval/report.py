"""The evaluation's table (and, when matplotlib is installed, its ROC plot)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from filterd_eval.runs import Row

HEADER = (
    f"{'run':<10} {'data':<26} {'filter':<11} {'(1-ROCA)%':>10} {'FN@FP<=0.1%':>12} "
    f"{'ham>=cut':>9} {'spam<cut':>9} {'ham':>5} {'spam':>5} {'train/s':>8} {'score/s':>8}"
)


def line(row: Row) -> str:
    f = row.figures
    return (
        f"{row.run:<10} {row.data:<26} {row.filter:<11} {f.roca:>10.4f} {f.fn_at_fp:>11.2f}% "
        f"{f.ham_flagged:>8.2f}% {f.spam_missed:>8.2f}% {f.nham:>5} {f.nspam:>5} "
        f"{row.train_rate:>8.0f} {row.score_rate:>8.0f}"
    )


def render(rows: Sequence[Row], cutoff: float) -> str:
    return "\n".join(
        [
            f"cutoff {cutoff} for ham>=cut / spam<cut; rates are messages per CPU second",
            HEADER,
            *(line(r) for r in rows),
            *spread(rows),
        ]
    )


def spread(rows: Sequence[Row]) -> list[str]:
    """Median and range over several hash splits of one corpus (data "SA", "SA#2", "SA#3"...)."""
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.run, r.data.partition("#")[0], r.filter), []).append(r)
    out: list[str] = []
    for (run, data, name), group in groups.items():
        if len(group) < 2:
            continue
        if not out:
            out = ["", "over several hash splits: median [min - max] of (1-ROCA)%, then of FN@FP<=0.1%"]
        roca = [g.figures.roca for g in group]
        fn = [g.figures.fn_at_fp for g in group]
        out.append(
            f"{run:<10} {data + f' x{len(group)}':<26} {name:<11} "
            f"{np.median(roca):.4f} [{min(roca):.4f} - {max(roca):.4f}]   "
            f"{np.median(fn):.2f}% [{min(fn):.2f} - {max(fn):.2f}]"
        )
    return out


def write_roc_plot(rows: Sequence[Row], path: Path) -> None:
    """One panel per run and data set, every filter in it; error form, both axes in log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    panels = list(dict.fromkeys((r.run, r.data) for r in rows))
    cols = min(3, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 4.2 * nrows), squeeze=False)
    for ax, (run, data) in zip(axes.ravel(), panels, strict=False):
        for r in rows:
            if (r.run, r.data) != (run, data):
                continue
            fpr, tpr, _ = roc_curve(r.y, r.scores)
            ax.plot(
                np.maximum(fpr * 100, 0.01),
                np.maximum((1 - tpr) * 100, 0.01),
                label=f"{r.filter}: {r.figures.roca:.3f}",
                drawstyle="steps-post",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(0.01, 100)
        ax.set_ylim(0.01, 100)
        ax.axvline(0.1, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("ham flagged (%, log)")
        ax.set_ylabel("spam missed (%)")
        ax.set_title(f"{run}: {data}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower left", title="(1-ROCA)%")
    for ax in axes.ravel()[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
