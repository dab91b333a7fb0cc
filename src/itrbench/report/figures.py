"""Figures in one house style (seaborn "whitegrid", colour-blind palette, fixed method colours), built from the
experiments' records (`tables.load_records`) and, where the paper prints the plotted values, the paper numbers.

Each `plot_<figure>` returns a matplotlib Figure; `FIGURES` maps the registry's figure names to them.
Toy and paper numbers live on different scales, so paper values are drawn in panels of their own.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import matplotlib.ticker
import matplotlib.transforms

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from itrbench import methods  # noqa: E402
from itrbench.errors import DataError  # noqa: E402
from itrbench.utils import atomic_path  # noqa: E402

PALETTE = sns.color_palette("colorblind")
METHOD_COLORS = {p.name: PALETTE[p.color % len(PALETTE)] for p in methods.all_plugins()}
METHOD_LABELS = methods.labels()
# Line styles for a switch that is on / off (e.g. M-DCL) and for paper-reported series.
STYLE_ON = {"marker": "o", "linestyle": "-"}
STYLE_OFF = {"marker": "s", "linestyle": "--"}
STYLE_PAPER = {"marker": "D", "linestyle": ":", "color": "0.35"}


def house_style() -> None:
    """Apply the suite's plotting style (idempotent)."""
    sns.set_theme(context="paper", style="whitegrid", palette=PALETTE, font_scale=1.1)
    plt.rcParams.update({
        "figure.dpi": 110, "savefig.dpi": 200, "savefig.bbox": "tight", "axes.titleweight": "bold",
        "axes.titlesize": "medium", "legend.frameon": False, "errorbar.capsize": 3, "lines.markersize": 6,
    })


def new_figure(nrows: int = 1, ncols: int = 1, panel: tuple[float, float] = (3.6, 2.9), **kwargs):
    """A figure of nrows x ncols panels of a standard size; `axes` is always a 2-D array."""
    house_style()
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows), squeeze=False, **kwargs)
    return fig, axes


def finish(fig, title: str, footer: str | None = None):
    fig.suptitle(title, fontsize="large", fontweight="bold")
    fig.tight_layout()
    place_legends_below(fig)
    if footer:
        fig.text(0.99, below_everything(fig), footer, ha="right", va="top", fontsize="x-small", color="0.4")
    return fig


def below_everything(fig, gap_pt: float = 3.0) -> float:
    """The figure y coordinate just under all that is drawn so far (legends under the panels included), for a
    footer line that must not run into a legend."""
    bottom_in = fig.get_tightbbox(fig.canvas.get_renderer()).y0
    return (bottom_in - gap_pt / 72.0) / fig.get_figheight()


def stamp(fig, provenance: str) -> None:
    """The provenance line (config, scale, commit, date, seeds) under the figure, as on top of every table."""
    fig.text(0.01, below_everything(fig), provenance, ha="left", va="top", fontsize="x-small", color="0.4",
             family="monospace")


LEGEND_GAP_PT = 4.0  # space between a panel's x-axis label and the legend under it


def legend_below(ax, ncol: int = 2) -> None:
    """The legend under the panel, outside the axes, so it never covers data; `finish` moves it under the x label."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        legend = ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol,
                           fontsize="small", title=None)
        legend._itrbench_below = True


def place_legends_below(fig) -> None:
    """Hang every `legend_below` legend a fixed distance under its panel's tick labels and x label.

    The distance is measured in points, not as a fraction of the panel height: a fraction put the legend on top of
    a two-line x label or, in a short panel, on the tick labels (CODER Table 4 did both). Tick labels and x label do
    not change size when `tight_layout` resizes the panels, so the offset stays right after the second layout pass.
    """
    legends = [ax.get_legend() for ax in fig.axes if getattr(ax.get_legend(), "_itrbench_below", False)]
    if not legends:
        return
    renderer = fig.canvas.get_renderer()
    for legend in legends:
        ax = legend.axes
        below = ax.get_window_extent(renderer).y0 - ax.xaxis.get_tightbbox(renderer).y0  # pixels under the frame
        drop = (below + LEGEND_GAP_PT * fig.dpi / 72.0) / fig.dpi  # inches
        legend.set_bbox_to_anchor((0.5, 0.0), transform=ax.transAxes + matplotlib.transforms.ScaledTranslation(
            0.0, -drop, fig.dpi_scale_trans))
    fig.tight_layout()  # make room for the legends where they now hang


def data_label(records: pd.DataFrame, protocol: str) -> str:
    """The data a panel was made from, e.g. `toy-coco 5K`: the runs' data set folder and the protocol's size."""
    size = {"f30k_1k": "1K", "coco_1k": "1K", "coco_5k": "5K"}[protocol]
    names = sorted(set(records["dataset"])) if len(records) else []
    return f"{'/'.join(names) or {'f30k_1k': 'Flickr30K', 'coco_1k': 'MSCOCO', 'coco_5k': 'MSCOCO'}[protocol]} {size}"


def save_figure(fig, path) -> None:
    """Write a PNG atomically and free the figure."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def empty_panel(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


# ---------------------------------------------------------------------------------------------- data helpers
def main_protocol(dataset_key: str) -> str:
    """The protocol a figure reports for a data set: Flickr30K 1K; MSCOCO 5K (AsCL's setting)."""
    return {"f30k": "f30k_1k", "coco": "coco_5k"}[dataset_key]


def config_value(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def with_column(records: pd.DataFrame, name: str, dotted: str) -> pd.DataFrame:
    out = records.copy()
    out[name] = [config_value(c, dotted) for c in out["config"]]
    return out


def summarise(records: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """Mean and std over seeds of each metric per group (std 0 for a single seed, so error bars vanish)."""
    g = records.groupby(by, sort=True, dropna=False)[metrics]
    out = g.mean().add_suffix("_mean").join(g.std(ddof=1).fillna(0.0).add_suffix("_std")).join(g.size().rename("n"))
    return out.reset_index()


def experiment_label(name: str, registry: dict) -> str:
    """A short label: the paper row the experiment reproduces, else the last part of its name."""
    reports = registry["experiments"].get(name, {}).get("reports") or []
    return reports[-1]["row"] if reports else name.rsplit("/", 1)[-1]


def seeds_footer(records: pd.DataFrame) -> str:
    seeds = sorted(records["seed"].unique()) if len(records) else []
    return f"mean ± std over seeds {', '.join(map(str, seeds))}" if seeds else ""


def _on_main_protocol(records: pd.DataFrame) -> pd.DataFrame:
    if records.empty:
        return records
    keep = [p == main_protocol(d) for p, d in zip(records["protocol"], records["dataset_key"])]
    return records[keep]


# ---------------------------------------------------------------------------------------------- CODER figures
THROUGHPUT_UNITS = [(1e9, "Gpps", "billion"), (1e6, "Mpps", "million"), (1e3, "Kpps", "thousand")]


def throughput_unit(pairs_per_second) -> tuple[float, str, str]:
    """The unit that keeps the throughput tick labels short: Kpps, or Mpps / Gpps for fast similarity functions."""
    values = np.asarray(pairs_per_second, dtype=float)
    typical = float(np.nanmedian(values)) if values.size and np.isfinite(values).any() else 1e3
    return next((u for u in THROUGHPUT_UNITS if typical >= 10 * u[0]), THROUGHPUT_UNITS[-1])


def tick_text(value: float) -> str:
    """A tick label without exponent notation: 20, 2,000, 0.5."""
    return f"{value:,.0f}" if value >= 1 and float(value).is_integer() else f"{value:g}"


def readable_log_ticks(ax, axis: str = "x") -> None:
    """At least two labelled ticks inside the view of a log axis: decades, else 1-2-5, else every digit, else three
    rounded values spread over the view. Matplotlib labels decades only, which left a one-tick axis (CODER Fig. 4)."""
    lo, hi = (ax.get_xlim() if axis == "x" else ax.get_ylim())
    lo, hi = min(lo, hi), max(lo, hi)
    decades = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
    for subs in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = [float(f"{m * 10.0 ** e:.12g}") for e in decades for m in subs if lo <= m * 10.0 ** e <= hi]
        if len(ticks) >= 2:
            break
    else:
        ticks = sorted({float(f"{t:.2g}") for t in np.geomspace(lo, hi, 5)[1:-1]})
    set_ticks = ax.set_xticks if axis == "x" else ax.set_yticks
    set_ticks(ticks, labels=[tick_text(t) for t in ticks])
    set_ticks([], minor=True)
    (ax.set_xlim if axis == "x" else ax.set_ylim)(lo, hi)  # set_ticks may widen the view; keep the margins


def separate_labels(fig, labels, gap_points: float = 1.0):
    """Move point labels down until none overlaps another: two methods with close throughput and recall (the
    cross-attention methods on the toy) would otherwise print their names on top of each other."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed = []
    for label in sorted(labels, key=lambda a: -a.get_window_extent(renderer).y1):
        for _ in range(len(labels)):
            box = label.get_window_extent(renderer)
            hits = [other for other in placed if box.overlaps(other)]
            if not hits:
                break
            shift = (box.y1 - min(other.y0 for other in hits)) * 72 / fig.dpi + gap_points
            x, y = label.xyann
            label.xyann = (x, y - shift)
        placed.append(label.get_window_extent(renderer))


def plot_coder_fig4_latency_recall(records, paper, registry):
    """Similarity throughput (pairs/s, log) against R@sum: one point per method and data set."""
    recs = _on_main_protocol(records)
    datasets = [d for d in ("f30k", "coco") if d in set(recs["dataset_key"])] or ["f30k"]
    scale, unit, words = throughput_unit(recs["pairs_per_second"] if len(recs) else [])
    fig, axes = new_figure(1, len(datasets), panel=(4.2, 3.3))
    point_labels = []
    for ax, ds in zip(axes[0], datasets):
        part = recs[recs["dataset_key"] == ds]
        if part.empty:
            empty_panel(ax, "no runs yet")
            continue
        part = part.assign(tput=part["pairs_per_second"].astype(float) / scale)
        summary = summarise(part, ["method"], ["tput", "rsum"])
        # throughput bar = min..max over seeds: a ± std bar can reach below 0, i.e. off a log axis
        spread = part.groupby("method")["tput"].agg(["min", "max"])
        for rec in summary.to_dict("records"):
            lo, hi = spread.loc[rec["method"], "min"], spread.loc[rec["method"], "max"]
            xerr = [[rec["tput_mean"] - lo], [hi - rec["tput_mean"]]]
            ax.errorbar(rec["tput_mean"], rec["rsum_mean"], xerr=xerr, yerr=rec["rsum_std"], fmt="o",
                        color=METHOD_COLORS.get(rec["method"]), label=METHOD_LABELS.get(rec["method"], rec["method"]))
        ax.set_xscale("log")
        ax.margins(x=0.25, y=0.2)  # room for the labels beside the points
        readable_log_ticks(ax, "x")
        (x0, x1) = np.log10(ax.get_xlim())
        for rec in summary.to_dict("records"):
            # the method's name beside its point, on the side with room, so it stays inside the panel
            right = (np.log10(rec["tput_mean"]) - x0) / (x1 - x0) < 0.55
            name = METHOD_LABELS.get(rec["method"], rec["method"])
            point_labels.append(ax.annotate(name, (rec["tput_mean"], rec["rsum_mean"]), textcoords="offset points",
                                            xytext=(6 if right else -6, 4), ha="left" if right else "right",
                                            fontsize="small"))
        ax.set_xlabel(f"similarity throughput ({unit}, log scale)")
        ax.set_ylabel("R@sum")
        ax.set_title(data_label(part, main_protocol(ds)))
    footer = seeds_footer(recs)
    finish(fig, "CODER Fig. 4: throughput vs recall",
           footer and f"{unit} = {words} image-caption pairs scored per second\n"
                      f"R@sum {footer}; throughput mean, bar = min..max over the same seeds")
    separate_labels(fig, point_labels)  # after the layout: it moves the points on the page
    return fig


# ---------------------------------------------------------------------------------------------- AsCL figures
def read_alignment_uniformity(record_dir) -> dict:
    path = Path(record_dir) / "alignment_uniformity.json"
    try:
        data = json.loads(path.read_text())
        return {
            "I-T alignment": float(data["alignment"]["image_text"]),
            "T-T alignment": float(data["alignment"]["text_text"]),
            "image uniformity": float(data["uniformity"]["image"]["mean"]),
            "text uniformity": float(data["uniformity"]["text"]["mean"]),
        }
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DataError(f"{path}: expected alignment.{{image_text,text_text}} and uniformity.{{image,text}}.mean "
                        f"({type(err).__name__})") from None


def plot_ascl_fig4_alignment_uniformity(records, paper, registry):
    """Mean distance of positive pairs (lower = better aligned) and among all items (higher = more uniform)."""
    recs = records[records["protocol"] == "coco_5k"].drop_duplicates("record_dir")
    rows = [{"label": experiment_label(r["experiment"], registry), "seed": r["seed"], **read_alignment_uniformity(r["record_dir"])}
            for r in recs.to_dict("records")]
    fig, axes = new_figure(1, 2, panel=(4.0, 3.0))
    if not rows:
        for ax in axes[0]:
            empty_panel(ax, "no runs yet")
        return finish(fig, "AsCL Fig. 4: alignment and uniformity")
    long = pd.DataFrame(rows).melt(id_vars=["label", "seed"], var_name="measure", value_name="distance")
    for ax, measures, title in ((axes[0, 0], ["I-T alignment", "T-T alignment"], "(a) alignment ↓"),
                                (axes[0, 1], ["image uniformity", "text uniformity"], "(b) uniformity ↑")):
        sns.barplot(data=long[long["measure"].isin(measures)], x="measure", y="distance", hue="label",
                    errorbar="sd", ax=ax, palette=[PALETTE[1], PALETTE[7]])
        ax.set_title(title)
        ax.set_xlabel("")
        ax.set_ylabel("mean Euclidean distance")
        legend_below(ax)
    return finish(fig, f"AsCL Fig. 4: alignment and uniformity ({data_label(recs, 'coco_5k')})", seeds_footer(recs))


LENGTH_EDGES = [0, 7, 9, 11, 13, 16, 1000]  # words; buckets (0, 7], (7, 9], ... as in AsCL Fig. 5's short/long split
LENGTH_LABELS = ["≤7", "8–9", "10–11", "12–13", "14–16", "≥17"]


def t2i_r1_by_length(ranks_path, captions: list[str]) -> pd.Series:
    """Text-to-image R@1 (percent) per caption-length bucket, from a run's saved per-caption ranks."""
    try:
        with np.load(ranks_path) as z:
            t2i = z["t2i"]  # written by evaluation.evaluate_model
    except (OSError, KeyError, ValueError) as err:
        raise DataError(f"{ranks_path}: expected per-caption text-to-image ranks under 't2i' ({type(err).__name__})") from None
    lengths = np.array([len(c.split()) for c in captions[: len(t2i)]])
    if len(lengths) != len(t2i):
        raise DataError(f"{ranks_path}: {len(t2i)} ranks but only {len(lengths)} captions in the evaluation split")
    bucket = pd.cut(lengths, LENGTH_EDGES, labels=LENGTH_LABELS)
    return pd.Series(100.0 * (np.asarray(t2i) < 1), index=bucket).groupby(level=0, observed=False).mean()


def plot_ascl_fig5_query_length(records, paper, registry):
    """Text-to-image R@1 per query-length bucket, AsCL vs w/o P&N, one panel per data set."""
    from itrbench.data.precomp import open_split

    recs = _on_main_protocol(records)
    datasets = [d for d in ("coco", "f30k") if d in set(recs["dataset_key"])] or ["coco"]
    fig, axes = new_figure(1, len(datasets), panel=(4.2, 3.1))
    for ax, ds in zip(axes[0], datasets):
        part = recs[recs["dataset_key"] == ds]
        if part.empty:
            empty_panel(ax, "no runs yet")
            continue
        rows = []
        for r in part.to_dict("records"):
            d = r["config"]["data"]
            captions = open_split(d["root"], d["dataset"], d["eval_split"]).captions
            by_len = t2i_r1_by_length(Path(r["run_dir"]) / "ranks.npz", captions)
            rows += [{"label": experiment_label(r["experiment"], registry), "seed": r["seed"], "length": k, "R@1": v}
                     for k, v in by_len.items()]
        sns.barplot(data=pd.DataFrame(rows), x="length", y="R@1", hue="label", order=LENGTH_LABELS, errorbar="sd",
                    ax=ax, palette=[PALETTE[1], PALETTE[7]])
        ax.set_title(data_label(part, main_protocol(ds)))
        ax.set_xlabel("query length (words)")
        ax.set_ylabel("text-to-image R@1")
        legend_below(ax)
    return finish(fig, "AsCL Fig. 5: image retrieval by query length", seeds_footer(recs))


def plot_toy_learning_curves(records, paper, registry):
    from itrbench.report.curves import plot_learning_curves  # its own module (convergence, docs/evaluation.md)

    return plot_learning_curves(records, paper, registry)


FIGURES = {
    "coder_fig4_latency_recall": plot_coder_fig4_latency_recall,
    "ascl_fig4_alignment_uniformity": plot_ascl_fig4_alignment_uniformity,
    "ascl_fig5_query_length": plot_ascl_fig5_query_length,
    "toy_learning_curves": plot_toy_learning_curves,
}


def figure_plotters() -> dict:
    """Every figure's plotter: the suite's (FIGURES) and those of the method plugins (`MethodPlugin.figures`, the
    figures that plot a method's own options, kept in its package). Loaded on call: a method's figures module
    imports this one."""
    import importlib

    plotters = dict(FIGURES)
    for plugin in methods.all_plugins():
        if plugin.figures:
            plotters.update(importlib.import_module(plugin.figures).FIGURES)
    return plotters

__all__ = ["FIGURES", "figure_plotters", "house_style", "new_figure", "save_figure", "finish", "stamp", "legend_below", "data_label", "summarise", "t2i_r1_by_length"]
