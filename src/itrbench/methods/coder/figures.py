"""CODER Fig. 3 and Table 4 as a plot: the figures that plot CODER's own options (M-DCL, PGC clusters K), in
the report's house style.

Report code kept with its method: only the report loads it (`itrbench.report.figures.figure_plotters`), never the
library. Each plotter takes the experiments' records, the paper numbers and the registry, returns a Figure.
"""
from __future__ import annotations

import re

from itrbench.report.figures import (
    PALETTE, STYLE_OFF, STYLE_ON, data_label, empty_panel, finish, legend_below, new_figure, seeds_footer,
    summarise, with_column,
)


def plot_coder_fig3_batch_size(records, paper, registry):
    """R@1 (text and image retrieval) against batch size, with and without M-DCL; paper values below."""
    recs = with_column(with_column(records[records["protocol"] == "f30k_1k"], "batch", "train.batch_size"), "mdcl", "coder.mdcl")
    fig, axes = new_figure(2, 2)
    metrics = [("i2t_r1", "Text retrieval R@1"), ("t2i_r1", "Image retrieval R@1")]
    summary = summarise(recs, ["mdcl", "batch"], [m for m, _ in metrics]) if len(recs) else None
    for col, (m, label) in enumerate(metrics):
        ax = axes[0, col]
        if summary is None:
            empty_panel(ax, "no runs yet")
        else:
            for mdcl, part in summary.groupby("mdcl"):
                ax.errorbar(part["batch"], part[f"{m}_mean"], yerr=part[f"{m}_std"],
                            label="w M-DCL" if mdcl else "w/o M-DCL", color=PALETTE[0] if mdcl else PALETTE[3],
                            **(STYLE_ON if mdcl else STYLE_OFF))
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(summary["batch"].unique()), labels=[str(b) for b in sorted(summary["batch"].unique())])
            legend_below(ax)
        ax.set_title(f"reproduced, {data_label(recs, 'f30k_1k')}\n{label}")
        ax.set_xlabel("mini-batch size")
        ax.set_ylabel(label)
        ax = axes[1, col]
        ref = paper[(paper["paper"] == "coder") & (paper["table"] == "fig3")].copy()
        ref["batch"] = [int(re.search(r"batch (\d+)", r).group(1)) for r in ref["row"]]
        ref = ref.sort_values("batch").dropna(subset=[m])
        # only the batch sizes the paper gives a number for, as points: no line through one it does not give
        ax.plot(ref["batch"], ref[m], label="w/o M-DCL (paper text)", marker="D", linestyle="none", color="0.35")
        ax.set_xscale("log", base=2)
        ax.set_xticks([32, 64, 128], labels=["32", "64", "128"])
        ax.set_title(f"paper, Flickr30K 1K\n{label}")
        ax.margins(y=0.3)
        ax.set_xlabel("mini-batch size")
        ax.set_ylabel(label)
        legend_below(ax)
    return finish(fig, "CODER Fig. 3: batch size with / without M-DCL", seeds_footer(recs))


def plot_coder_table4_k(records, paper, registry):
    """R@1 against the number of PGC clusters K (paper-scale K; toy runs scale it), reproduced and paper."""
    recs = with_column(records[records["protocol"] == "f30k_1k"], "K", "coder.pgc_k_paper")
    ref = paper[(paper["paper"] == "coder") & (paper["table"] == "4")].copy()
    ref["K"] = [int(r.split("=")[1]) for r in ref["row"]]
    fig, axes = new_figure(1, 2)
    series = [("i2t_r1", "text retrieval R@1", PALETTE[0]), ("t2i_r1", "image retrieval R@1", PALETTE[2])]
    ax = axes[0, 0]
    if recs.empty:
        empty_panel(ax, "no runs yet")
    else:
        summary = summarise(recs, ["K"], [m for m, _, _ in series])
        for m, label, color in series:
            ax.errorbar(summary["K"], summary[f"{m}_mean"], yerr=summary[f"{m}_std"], label=label, color=color, **STYLE_ON)
        legend_below(ax, ncol=1)  # one column: two columns were wider than the panel and ran into the next legend
    ax.set_title(f"reproduced ({data_label(recs, 'f30k_1k')})")
    ax = axes[0, 1]
    for m, label, color in series:
        ax.plot(ref["K"], ref[m], label=label, color=color, marker="D", linestyle=":")
    ax.set_title("paper (Flickr30K 1K, Table 4)")
    legend_below(ax, ncol=1)
    for ax in axes[0]:
        ax.set_xlabel("PGC clusters K (paper scale)")
        ax.set_ylabel("R@1")
    return finish(fig, "CODER Table 4: number of PGC clusters", seeds_footer(recs))


FIGURES = {
    "coder_fig3_batch_size": plot_coder_fig3_batch_size,
    "coder_table4_k": plot_coder_table4_k,
}
