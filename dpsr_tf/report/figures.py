"""The report's figures as PNG files (matplotlib, Agg backend: no display needed).

Each function takes the gathered data (gather.py) and a path, draws one figure and returns
the path, or None when there is nothing to draw.
"""
import logging
import os
import re
import warnings
from typing import Dict, List, Optional

import numpy as np

# The per-head share scalars of model_fn (train/head_<h>_share_of_positives).
HEAD_SHARE_TAG = re.compile(r"train/head_(\d+)_share_of_positives")
HEAD_MARKERS = ["X", "*", "P", "D", "^", "s", "v", "<", ">", "p"]
HEAD_COLORS = ["black", "red", "blue", "darkgreen", "darkorange", "purple", "brown", "teal",
               "magenta", "olive"]


# Fonts with CJK glyphs, tried in order (Debian packages; tools/apt-packages.txt installs the
# first). Catalog titles and queries may be Chinese; DejaVu Sans alone draws them as boxes.
CJK_FONT_FILES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",      # fonts-wqy-microhei
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",        # fonts-wqy-zenhei
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",  # fonts-noto-cjk
)
_FONTS_SET = []


def _use_cjk_fallback(matplotlib) -> Optional[str]:
    """Adds the first CJK font found as a per-glyph fallback behind DejaVu Sans (matplotlib
    >= 3.6 falls back along font.family); returns its name, None when there is none. The
    font is added by file, so a font installed after matplotlib built its cache is found."""
    from matplotlib import font_manager  # optional: matplotlib (`dpsr report` only)
    for path in CJK_FONT_FILES:
        if os.path.exists(path):
            font_manager.fontManager.addfont(path)
            name = font_manager.FontProperties(fname=path).get_name()
            matplotlib.rcParams["font.family"] = ["DejaVu Sans", name]
            return name
    return None


def _plt():
    import matplotlib  # optional: matplotlib (`dpsr report` only)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display needed
    if not _FONTS_SET:
        _FONTS_SET.append(_use_cjk_fallback(matplotlib))
        if _FONTS_SET[0] is None:
            logging.getLogger("dpsr_tf.report").warning(
                "no CJK font found (%s): Chinese or Japanese labels in the figures are drawn "
                "as boxes; apt-get install fonts-wqy-microhei", ", ".join(CJK_FONT_FILES))
            # One line above instead of a warning per missing glyph.
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from current font")
    return plt


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def training_curves(models: List[Dict], path: str) -> Optional[str]:
    """Train and eval loss, eval Top-1/Top-10/AUC and the heads' share of positives by step."""
    if not any(m["curves"]["train"] or m["curves"]["eval"] for m in models):
        return None
    plt = _plt()
    has_heads = any(HEAD_SHARE_TAG.fullmatch(tag) for m in models for tag in m["curves"]["train"])
    ncols = 3 if has_heads else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 3.8))
    for n, m in enumerate(models):
        color = f"C{n}"
        train, ev = m["curves"]["train"], m["curves"]["eval"]
        for tag, curves, style, label in (("loss", train, "-", "train loss"),
                                          ("loss", ev, "o--", "eval loss")):
            if tag in curves:
                steps, values = zip(*curves[tag])
                axes[0].plot(steps, values, style, color=color, label=f"{m['name']}: {label}",
                             markersize=4)
        for tag, style in (("top10", "o-"), ("top1", "s:"), ("auc_labeled", "^--")):
            if tag in ev:
                steps, values = zip(*ev[tag])
                axes[1].plot(steps, values, style, color=color, label=f"{m['name']}: {tag}",
                             markersize=5)
        if has_heads:
            for tag in sorted(t for t in train if HEAD_SHARE_TAG.fullmatch(t)):
                steps, values = zip(*train[tag])
                h = int(HEAD_SHARE_TAG.fullmatch(tag).group(1))
                axes[2].plot(steps, values, color=HEAD_COLORS[h % len(HEAD_COLORS)],
                             linestyle=["-", "--", ":", "-."][n % 4],
                             label=f"{m['name']}: head {h}")
    axes[0].set_title("loss")
    axes[1].set_title("evaluation during training")
    axes[1].set_ylim(-0.02, 1.02)
    if has_heads:
        axes[2].set_title("share of batch positives won by each head")
        axes[2].set_ylim(-0.02, 1.02)
    for ax in axes:
        ax.set_xlabel("global step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(fig, path)


def head_usage(models: List[Dict], path: str) -> Optional[str]:
    """Grouped bars: each head's share of the top-10 and top-100 results and of clicked items."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 3.4), squeeze=False)
    for ax, m in zip(axes[0], models):
        usage = m["head_usage"]
        groups = [key for key in ("results@10", "results@100", "clicked") if key in usage]
        nh = usage["num_heads"]
        width = 0.8 / nh
        x = np.arange(len(groups))
        for h in range(nh):
            values = [usage[g][h] for g in groups]
            ax.bar(x + (h - (nh - 1) / 2) * width, values, width,
                   color=HEAD_COLORS[h % len(HEAD_COLORS)], alpha=0.75, label=f"head {h}")
        ax.set_xticks(x, ["top-10 results", "top-100 results", "clicked items"][:len(groups)]
                      if groups == ["results@10", "results@100", "clicked"] else groups)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{m['name']}: share won by each head", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _category_colors(plt, labels: np.ndarray):
    """(point colours, legend handles): the 12 most common labels get tab20 colours (ties by
    name), the rest grey; the same labels give the same colours in every figure."""
    names, counts = np.unique(labels, return_counts=True)
    top = [n for n, _ in sorted(zip(names, counts), key=lambda t: (-t[1], t[0]))[:12]]
    color_of = {name: plt.get_cmap("tab20")(i % 20) for i, name in enumerate(top)}
    other = (0.75, 0.75, 0.75, 1.0)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=color_of[n], label=n)
               for n in top]
    if len(names) > len(top):
        handles.append(plt.Line2D([], [], marker="o", linestyle="", color=other, label="other"))
    return [color_of.get(l, other) for l in labels], handles


def _legend_below(fig, handles, title: Optional[str]) -> None:
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncol=min(len(handles), 13),
               title=title or None, title_fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))


SENSE_COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd")
NO_SENSE_COLOR = "#7f7f7f"


def _sense_marks(ax, xy: np.ndarray, index_of: Dict, query: Dict, top_k: int) -> None:
    """A polysemous query's panel: each head's items with the head's marker, coloured by the
    item's sense (grey: no sense of the query)."""
    names = [i.split("|")[0] + ("" if i.split("|")[1] == "*" else f" ({i.split('|')[1]})")
             for i in query["intents"]]
    for h, (rows, item_senses) in enumerate(zip(query["heads"], query["senses"])):
        pts = xy[[index_of[r] for r in rows]]
        colors = [SENSE_COLORS[s % len(SENSE_COLORS)] if s >= 0 else NO_SENSE_COLOR
                  for s in item_senses]
        ax.scatter(pts[:, 0], pts[:, 1], s=70, marker=HEAD_MARKERS[h % 10], c=colors,
                   edgecolors="black", linewidths=0.6)
    for h in range(len(query["heads"])):   # legend entries: head markers, sense colours
        ax.scatter([], [], s=70, marker=HEAD_MARKERS[h % 10], c="white", edgecolors="black",
                   label=f"head {h} top-{top_k}")
    for s, name in enumerate(names):
        ax.scatter([], [], s=40, marker="s", c=SENSE_COLORS[s % len(SENSE_COLORS)],
                   label=f"sense: {name}")


def embedding_map(map_data: Dict, path: str) -> Optional[str]:
    """t-SNE map colored by category; one panel per marked query with each head's items."""
    if not map_data or not map_data["rows"]:
        return None
    plt = _plt()
    xy = np.asarray(map_data["xy"])
    point_colors, handles = _category_colors(plt, np.asarray(map_data["labels"]))
    panels = map_data["marked"] or [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 5.0), squeeze=False)
    index_of = {row: i for i, row in enumerate(map_data["rows"])}
    for p, (ax, query) in enumerate(zip(axes[0], panels)):
        ax.scatter(xy[:, 0], xy[:, 1], s=6, c=point_colors, alpha=0.55, linewidths=0)
        if query is not None and "senses" in query:
            _sense_marks(ax, xy, index_of, query, map_data["top_k"])
            ax.set_title(f"q{p + 1}: {query['query']!r}", fontsize=10)
            ax.legend(fontsize=7, loc="lower right")
        elif query is not None:
            for h, rows in enumerate(query["heads"]):
                pts = xy[[index_of[r] for r in rows]]
                ax.scatter(pts[:, 0], pts[:, 1], s=70, marker=HEAD_MARKERS[h % 10],
                           c=HEAD_COLORS[h % 10], edgecolors="white", linewidths=0.6,
                           label=f"head {h} top-{map_data['top_k']}")
            ax.set_title(f"q{p + 1}: {query['query']!r}", fontsize=10)
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xticks([])
        ax.set_yticks([])
    _legend_below(fig, handles, map_data["feature"])
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def model_maps_figure(map_data: Dict, models: List[Dict]):
    """The matplotlib Figure of model_maps (one axes per model), or None with fewer than 2."""
    panels = (map_data or {}).get("models") or []
    if len(panels) < 2 or not map_data["rows"]:
        return None
    plt = _plt()
    point_colors, handles = _category_colors(plt, np.asarray(map_data["labels"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 5.4), squeeze=False)
    for ax, panel, model in zip(axes[0], panels, models):
        xy = np.asarray(panel["xy"])
        ax.scatter(xy[:, 0], xy[:, 1], s=6, c=point_colors, alpha=0.6, linewidths=0)
        purity = model.get("category_purity") or {}
        title = panel["name"]
        if purity.get("purity") is not None:
            title += f"\ncategory purity@{purity['k']} = {purity['purity']:.3f}"
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    _legend_below(fig, handles, map_data["feature"])
    return fig


def model_maps(map_data: Dict, models: List[Dict], path: str) -> Optional[str]:
    """One t-SNE panel per model, side by side, over the same items in the same colours; the
    panel title is the model's name and its category purity. None with fewer than 2 models.

    Args:
      map_data: gather's "map" (its "models": [{"name", "xy"}] per model, "labels", ...).
      models: gather's "models" (their "category_purity", in the same order).
    """
    fig = model_maps_figure(map_data, models)
    if fig is None:
        return None
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def alpha_sweep(sweep: Optional[Dict], path: str) -> Optional[str]:
    """Figure 7: alpha against mean log-popularity of the retrieved items (and Recall@100)."""
    if not sweep or not sweep["runs"]:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    alphas = [r["alpha"] for r in sweep["runs"]]
    for k, style in zip(sweep["ks"], ("o-", "s--")):
        ax.plot(alphas, [r[f"mean_log_popularity@{k}"] for r in sweep["runs"]], style,
                label=f"mean log(1 + clicks), top-{k}")
    ax.axhline(sweep["catalog_mean_log_popularity"], color="gray", linestyle=":",
               label="catalog mean")
    ax.set_xlabel("alpha (weight of random negatives)")
    ax.set_ylabel("popularity of retrieved items")
    ax.grid(alpha=0.3)
    k = max(sweep["ks"])
    twin = ax.twinx()
    twin.plot(alphas, [r.get(f"recall@{k}", np.nan) for r in sweep["runs"]], "^:",
              color="C3", label=f"Recall@{k}")
    twin.set_ylabel(f"Recall@{k}", color="C3")
    lines = ax.get_legend_handles_labels()
    extra = twin.get_legend_handles_labels()
    ax.legend(lines[0] + extra[0], lines[1] + extra[1], fontsize=7)
    ax.set_title(f"alpha sweep ({sweep['steps']} steps per model)", fontsize=10)
    return _save(fig, path)
