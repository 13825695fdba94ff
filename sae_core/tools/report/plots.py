"""The report's matplotlib figures, each returned as a PNG data URI (no file, no pyplot state)."""

from __future__ import annotations

import base64
import io
import math

import numpy as np

from ..summary import Inspection

_SET_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _figure(w: float, h: float):
    # the Agg canvas, explicitly, and no pyplot: its global state (and backend) stay the caller's
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plain(text: str) -> str:
    """Text from the file (column and estimator names) as matplotlib shows it literally: an
    unescaped `$` would start mathtext, and a name such as `advantages_$x^$` would stop the
    report inside matplotlib's parser (an escaped one, `\\$`, shows as `$`)."""
    return text.replace("$", r"\$")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def plot_lengths(ins: Inspection) -> str:
    fig = _figure(11, 3.0)
    ax = fig.add_subplot()
    lo, hi = int(ins.row_valid.min()), int(ins.row_lengths.max())
    bins = np.linspace(lo, hi + 1, min(41, hi - lo + 2))
    ax.hist(ins.row_lengths, bins=bins, histtype="stepfilled", alpha=0.35, color="#1f77b4",
            label="all tokens")
    ax.hist(ins.row_valid, bins=bins, histtype="step", lw=1.5, color="#d62728", label="valid tokens (mask 1)")
    ax.set_xlabel("response length (tokens)")
    ax.set_ylabel("responses")
    ax.set_title(f"Response lengths ({ins.rows:,} responses)")
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    return _png(fig)


def _ccdf(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lengths x = 1..max, share of segments of length >= x) of a histogram counts[k] (k = length)."""
    total = counts.sum()
    at_least = total - np.concatenate([[0], np.cumsum(counts)])[1:-1]  # segments with length >= x
    return np.arange(1, counts.size), at_least / total


def plot_segments(ins: Inspection) -> str | None:
    from matplotlib import colormaps

    series = [(f"p = {t.threshold:g}: {100 * t.segments.fraction:.1f}% boundaries, "
               f"mean {t.segments.lengths.mean:.3g}" + (" (recorded)" if t.recorded_by else ""), t.segments)
              for t in ins.thresholds]
    sets = [(_plain(f"{s.name}: {100 * s.segments.fraction:.1f}% boundaries, "
                    f"mean {s.segments.lengths.mean:.3g}"), s.segments)
            for s in ins.sets if s.segmental and s.segments is not None]
    panels = [("logprob rule: a boundary where logprob < log p", series, "viridis"),
              ("output sets: their boundaries columns", sets, None)]
    panels = [(title, [x for x in ss if x[1].segments], cmap) for title, ss, cmap in panels]
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    fig = _figure(11, 4.0)
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True, sharex=True)[0]
    for ax, (title, ss, cmap) in zip(axes, panels):
        for i, (label, sg) in enumerate(ss):
            colour = (colormaps[cmap](0.85 * i / max(len(ss) - 1, 1)) if cmap
                      else _SET_COLOURS[i % len(_SET_COLOURS)])
            x, y = _ccdf(sg.counts)
            ax.step(x, y, where="post", lw=1.8, color=colour, label=label)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("segment length L (valid tokens), log scale")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(frameon=False, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    axes[0].set_ylabel("share of segments with length ≥ L")
    fig.suptitle("Segment lengths")
    return _png(fig)


def plot_advantages(ins: Inspection) -> str | None:
    sets = [s for s in ins.sets if s.sample.size]
    if not sets:
        return None
    cols = min(len(sets), 3)
    rows = math.ceil(len(sets) / cols)
    fig = _figure(11, 2.9 * rows)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True).ravel()
    lo = min(float(s.sample.min()) for s in sets)
    hi = max(float(s.sample.max()) for s in sets)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, 81)
    for i, (ax, s) in enumerate(zip(axes, sets)):
        a = s.advantages
        ax.hist(s.sample, bins=edges, color=_SET_COLOURS[i % len(_SET_COLOURS)], alpha=0.8)
        ax.axvline(0, color="#555", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(_plain(f"{s.name} ({s.estimator})"), fontsize=10)
        ax.text(0.02, 0.95, f"mean {a.mean:.3g}\nstd {a.std:.3g}\np01 {a.p01:.3g}  p99 {a.p99:.3g}",
                transform=ax.transAxes, va="top", fontsize=8, family="monospace")
        ax.grid(alpha=0.3)
        ax.tick_params(labelbottom=True)
        ax.set_xlabel("advantage")
    for ax in axes[len(sets):]:
        ax.set_visible(False)
    axes[0].set_ylabel("tokens (log)")
    sampled = any(not s.advantages.exact for s in sets)
    fig.suptitle("Advantages over valid tokens"
                 + (f" (uniform sample of up to {len(sets[0].sample):,} tokens per set)" if sampled else ""))
    return _png(fig)


__all__ = ["plot_advantages", "plot_lengths", "plot_segments"]
