"""AsCL Fig. 3: the figure that plots AsCL's own options (generated positives and negatives), house style.

Report code kept with its method: only the report loads it (`itrbench.report.figures.figure_plotters`), never the
library. Each plotter takes the experiments' records, the paper numbers and the registry, returns a Figure.
"""
from __future__ import annotations

from itrbench.report.figures import (
    PALETTE, _on_main_protocol, data_label, empty_panel, finish, main_protocol, new_figure, seeds_footer, summarise,
    with_column,
)


def plot_ascl_fig3_samples(records, paper, registry):
    """R@sum per kind of generated positive (negatives as in the full model) and negative (positives likewise)."""
    recs = _on_main_protocol(records)
    # one data set per figure (the registry runs Fig. 3 on Flickr30K only): never a mean over two data sets
    ds = "coco" if (recs["dataset_key"] == "coco").any() else "f30k"
    recs = recs[recs["dataset_key"] == ds]
    recs = with_column(with_column(recs, "positives", "ascl.positives"), "negatives", "ascl.negatives")
    bases = registry.get("bases", {}).get("ascl", {}).get("ascl", {})
    full_pos, full_neg = bases.get("positives", "both"), bases.get("negatives", "mixture")
    fig, axes = new_figure(1, 2, panel=(4.0, 3.0))
    panels = [("positives", recs[recs["negatives"] == full_neg], ["long", "short", "both"], "(a) positives (Asymmetry-II & III)"),
              ("negatives", recs[recs["positives"] == full_pos], ["shuffle", "dropout", "gaussian", "cutoff", "mixture"],
               "(b) negatives (Asymmetry-I)")]
    for ax, (key, part, order, title) in zip(axes[0], panels):
        part = part[part[key].isin(order)]
        if part.empty:
            empty_panel(ax, "no runs yet")
        else:
            summary = summarise(part, [key], ["rsum"]).set_index(key).reindex([o for o in order if o in set(part[key])])
            # points with ± std intervals, not bars: the differences are small, and a bar must start at 0
            ax.errorbar(list(summary.index), summary["rsum_mean"], yerr=summary["rsum_std"], fmt="o", color=PALETTE[1],
                        capsize=4)
            ax.margins(x=0.15, y=0.25)
        ax.set_title(f"{title}\n{data_label(recs, main_protocol(ds))}" if len(recs) else title)
        ax.set_ylabel("R@sum")
    return finish(fig, "AsCL Fig. 3: generated samples (mean ± std over seeds)", seeds_footer(recs))


FIGURES = {"ascl_fig3_samples": plot_ascl_fig3_samples}
