"""PNG plots for BENCHMARKS.md, from the results the benchmarks saved."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .common import RESULTS

OUT = Path(__file__).resolve().parent.parent / "docs"


def lateness() -> Path | None:
    path = RESULTS / "lateness.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, field, title in ((axes[0], "cut_values", "cut − deadline"),
                             (axes[1], "start_values", "handler start − deadline")):
        for side, label in (("distbatch", "distbatch sweeper (wake on deadline)"),
                            ("baseline", "baseline: poll every 50 ms")):
            values = sorted(data[side][field])
            ys = [(i + 1) / len(values) for i in range(len(values))]
            ax.plot(values, ys, label=label)
        ax.set_title(f"{title} ({data['batches']} batches, {data['window_ms']} ms windows)")
        ax.set_xlabel("ms after the window deadline")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of batches (CDF)")
    axes[0].legend(loc="lower right")
    fig.tight_layout()
    OUT.mkdir(exist_ok=True)
    target = OUT / "lateness.png"
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def scaling() -> Path | None:
    path = RESULTS / "scaling.json"
    if not path.exists():
        return None
    rows = json.loads(path.read_text())["rows"]
    xs = [r["open_buffers"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("emit_many_us_per_event", "emit_many(100), µs per event"),
                       ("emit_us_per_call", "emit, µs per call"),
                       ("flush_us_per_call", "flush_expired (nothing due), µs per call")):
        ax.plot(xs, [r[key] for r in rows], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("open buffers (partitions)")
    ax.set_ylabel("µs")
    ax.set_title("Cost versus open partitions")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    OUT.mkdir(exist_ok=True)
    target = OUT / "scaling.png"
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def run(quick: bool = False) -> list[Path]:
    return [p for p in (lateness(), scaling()) if p]


if __name__ == "__main__":
    print(run())
