"""The study's results as text tables (`sae lab`), Markdown tables (docs/lab.md) and a plot.

Every table is built from the summary of `study.run` (means with t-intervals over seeds, and the
pre-registered contrasts), so docs/lab.md's tables are regenerated from docs/lab-results.json by
`update_doc`, and a test checks that they still are.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_bytes_atomic
from .stats import CONTRASTS, format_interval

MAIN_METRIC = "cos_batch"
PROFILE_COLUMNS = (("reward_rate", "reward rate"), ("mean_length", "tokens"), ("boundary_rate_p0.05", "bnd p0.05"),
                   ("boundary_rate_p0.2", "bnd p0.2"), ("boundary_rate_p0.5", "bnd p0.5"),
                   ("aligned_mass", "aligned mass"), ("zero_advantage_share", "A = 0"))


def _cell(entry: Sequence[float] | None, digits: int = 3) -> str:
    if entry is None:
        return "-"
    mean, half = entry[0], entry[1]
    if isinstance(mean, float) and math.isnan(mean):
        return "nan"
    return format_interval(mean, half, digits)


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _text(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The CLI's table renderer (`tools.summary_format.text_table`: columns never run together)."""
    from ..tools.summary_format import text_table

    return "\n".join(text_table(header, rows, left=2 if header and header[1] == "critic" else 1))


def contrast_cells(entry: Mapping[str, Any], metric: str = MAIN_METRIC) -> dict[str, str]:
    """{contrast name: 'mean ± half'} of one (setting, critic) summary on `metric`."""
    out = {}
    for c in entry["contrasts"]:
        if c["metric"] == metric:
            out[c["name"]] = format_interval(c["mean"], c["half_width"], 3) + ("*" if _excludes_zero(c) else "")
    return out


def _excludes_zero(c: Mapping[str, Any]) -> bool:
    return not math.isnan(c["half_width"]) and abs(c["mean"]) > c["half_width"]


def tables(summary: Mapping[str, Any], metric: str = MAIN_METRIC, markdown: bool = True) -> dict[str, str]:
    """Named tables of a study summary: "settings" (each setting's profile), "critics" (learned critics'
    fit), "contrasts" (the pre-registered contrasts on `metric` per setting and critic, * where the
    interval excludes 0), and "estimators: SETTING" (every estimator's `metric` per critic)."""
    render = _markdown if markdown else _text
    out = {}
    rows = [[name] + [_cell(s["profile"].get(k), 4 if "rate" in k else 3) if k != "mean_length"
                      else f"{s['profile'][k][0]:.0f}" for k, _ in PROFILE_COLUMNS]
            for name, s in summary.items()]
    out["settings"] = render(["setting"] + [h for _, h in PROFILE_COLUMNS], rows)
    fit_rows = []
    for name, s in summary.items():
        for critic, e in s["critics"].items():
            if e["fit"]:
                keys = list(e["fit"])
                fit_rows.append([name, critic] + [_cell(e["fit"][k]) for k in keys])
    if fit_rows:
        out["critics"] = render(["setting", "critic"] + keys, fit_rows)
    names = [n for n, _, _ in CONTRASTS]
    rows = []
    for name, s in summary.items():
        for critic, e in s["critics"].items():
            cells = contrast_cells(e, metric)
            sae = e["metrics"].get("sae p0.2", {}).get(metric)
            rows.append([name, critic, _cell(sae)] + [cells.get(n, "-") for n in names])
    out["contrasts"] = render(["setting", "critic", f"sae p0.2 {metric}"] + names, rows)
    for name, s in summary.items():
        critics = list(s["critics"])
        labels = list(next(iter(s["critics"].values()))["metrics"])
        rows = [[lab] + [_cell(s["critics"][c]["metrics"][lab].get(metric)) for c in critics] for lab in labels]
        out[f"estimators: {name}"] = render(["estimator"] + critics, rows)
    return out


def loop_table(loop_summary: Mapping[str, Any], markdown: bool = True) -> str:
    """The closed loop: per estimator, the area under the exact expected-reward curve and the final
    expected reward (mean ± t half-width over seeds), then the pre-registered contrasts on both."""
    render = _markdown if markdown else _text
    rows = [[k, _cell(v["auc"]), _cell(v["final"])] for k, v in loop_summary["metrics"].items()]
    for c in loop_summary["contrasts"]:
        if c["metric"] == "auc":
            final = next(d for d in loop_summary["contrasts"] if d["name"] == c["name"] and d["metric"] == "final")
            rows.append([f"{c['name']} (b = {c['b']})", format_interval(c["mean"], c["half_width"], 3)
                         + ("*" if _excludes_zero(c) else ""),
                         format_interval(final["mean"], final["half_width"], 3) + ("*" if _excludes_zero(final) else "")])
    return render(["estimator or contrast", "AUC of J", "final J"], rows)


def bias_table(expected: Mapping[str, Any], markdown: bool = True) -> str:
    """With the exact critic: each estimator's exact bias |E g_hat - g|^2 / |g|^2 per setting (the
    dynamic programme of `estimators.expected_gradient`; nan where it does not apply)."""
    render = _markdown if markdown else _text
    settings = list(expected)
    labels = list(next(iter(expected.values())))
    def cell(x: float) -> str:  # below 1e-20: zero up to rounding (the unbiased estimators give ~1e-29)
        return "nan" if math.isnan(x) else "0" if abs(x) < 1e-20 else f"{x:.1e}"

    rows = [[lab] + [cell(expected[s][lab]["bias2_exact"]) for s in settings] for lab in labels]
    return render(["estimator"] + settings, rows)


SECONDARY = ("cos_batch", "cos_pooled", "bias2_debiased", "pearson_segment", "pearson_segment_exact",
             "segment_truth_check", "pearson_nonzero", "pearson_pg")
DETAIL_CELLS = (("absorbing", "exact"), ("absorbing", "learned mc n32"))  # every metric shown for these


def metrics_table(summary: Mapping[str, Any], setting: str, critic: str, markdown: bool = True) -> str:
    """Every estimator's `SECONDARY` metrics (mean ± t half-width) for one setting and critic."""
    render = _markdown if markdown else _text
    rows = [[lab] + [_cell(row.get(m)) for m in SECONDARY]
            for lab, row in summary[setting]["critics"][critic]["metrics"].items()]
    return render(["estimator"] + list(SECONDARY), rows)


def all_tables(doc: Mapping[str, Any], metric: str = MAIN_METRIC, markdown: bool = True) -> dict[str, str]:
    """Every named table of a `study.run` document: `tables` of its summary, "exact-critic bias" and,
    when it ran, "closed loop"."""
    out = tables(doc["summary"], metric, markdown)
    for setting, critic in DETAIL_CELLS:
        if critic in doc["summary"].get(setting, {}).get("critics", {}):
            out[f"metrics: {setting} | {critic}"] = metrics_table(doc["summary"], setting, critic, markdown)
    if doc.get("expected_bias"):
        out["exact-critic bias"] = bias_table(doc["expected_bias"], markdown)
    if doc.get("closed_loop"):
        out["closed loop"] = loop_table(doc["closed_loop"]["summary"], markdown)
    return out


MARK = re.compile(r"(<!-- lab:table (?P<name>[^>]+?) -->\n)(?P<body>.*?)(<!-- /lab:table -->)", re.S)


def update_doc(doc: str, named: Mapping[str, str]) -> str:
    """`doc` with the body between each `<!-- lab:table NAME -->` and `<!-- /lab:table -->` replaced by
    named[NAME]; a marker naming no table raises ValueError naming it."""
    def sub(m: re.Match) -> str:
        name = m.group("name").strip()
        if name not in named:
            raise ValueError(f"docs: table marker {name!r} names no table; known: {', '.join(named)}")
        return m.group(1) + named[name] + "\n" + m.group(4)
    return MARK.sub(sub, doc)


def doc_tables(doc: str) -> dict[str, str]:
    """{name: body} of the marked tables in `doc`."""
    return {m.group("name").strip(): m.group("body").removesuffix("\n") for m in MARK.finditer(doc)}


def plot(summary: Mapping[str, Any], path: str | Path, metric: str = MAIN_METRIC, *, overwrite: bool = False) -> Path:
    """A dot plot of the contrast "sae - best gae" on `metric` with its t-interval, one row per
    (setting, critic), written to `path` (PNG). Needs matplotlib (the `report` extra)."""
    from ..extras import require

    require("matplotlib", extra="report", needed_by="the lab's plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels, means, halves, others = [], [], [], {}
    for name, s in summary.items():
        for critic, e in s["critics"].items():
            found = {c["name"]: c for c in e["contrasts"] if c["metric"] == metric}
            if "sae - best gae" not in found:
                continue
            labels.append(f"{name} | {critic}")
            means.append(found["sae - best gae"]["mean"])
            halves.append(found["sae - best gae"]["half_width"])
            for n in ("sae - gae matched", "sae - random"):
                others.setdefault(n, []).append(found[n]["mean"] if n in found else math.nan)
    fig = Figure(figsize=(8.5, 0.28 * len(labels) + 1.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    y = list(range(len(labels)))[::-1]
    ax.errorbar(means, y, xerr=halves, fmt="o", color="#1f4e79", capsize=2, label="sae p0.2 - best gae (95% t-CI)")
    markers = {"sae - gae matched": ("s", "#c55a11"), "sae - random": ("^", "#548235")}
    for n, xs in others.items():
        ax.plot(xs, y, markers[n][0], color=markers[n][1], alpha=0.7, ms=4, label=n.replace("sae", "sae p0.2"))
    ax.axvline(0.0, color="#555", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel(f"difference in {metric} (cosine to the exact policy gradient); right of 0: SAE better")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    return write_bytes_atomic(path, buf.getvalue(), overwrite=overwrite)
