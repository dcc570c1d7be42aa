"""Figures from summary cells. Every function takes `series` = {label: {cell id: summary cell}}, so one
run and a comparison of any number of columns draw through the same code; each returns the Figure
(tests read its data) and `save` writes it as a PNG."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1)))
MAX_SERIES = 6   # per panel: more lines than this are not readable, so they go to another row of panels
RATIO_TICKS = (0.1, 0.25, 0.33, 0.5, 0.67, 0.8, 0.9, 1, 1.1, 1.25, 1.5, 2, 3, 4, 10)   # marks on a log ratio axis


def _ok(cells, suite):
    return [c for c in cells.values() if c.get("suite") == suite and c["status"] == "ok"]


def _group(c, split):
    """(B, *split values) of a cell; decode cells from before the decode modes were eager."""
    p = c["params"]
    return (p["batch"],) + tuple(p.get(k, "eager" if k == "mode" else None) for k in split)


def _chunks(names):
    """The first series (the reference) in every chunk, then at most MAX_SERIES - 1 others each."""
    first, rest = names[:1], names[1:]
    return [first + rest[i:i + MAX_SERIES - 1] for i in range(0, max(len(rest), 1), MAX_SERIES - 1)]


def _line_per_batch(series, suite, x_key, metric, title, xlabel, ylabel, split=()):
    """One panel per (B, *split), one line per series (colour and dash fixed per series across panels)."""
    names = list(series)
    groups = sorted({_group(c, split) for cells in series.values() for c in _ok(cells, suite)})
    rows = _chunks(names)
    fig, axes = plt.subplots(len(rows), max(len(groups), 1), figsize=(4.2 * max(len(groups), 1) + 2, 3.6 * len(rows)),
                             squeeze=False, layout="constrained")
    for row, chunk in zip(axes, rows):
        for ax, group in zip(row, groups):
            xs_all = set()
            for k, name in enumerate(chunk):
                i = names.index(name)
                ok = [c for c in _ok(series[name], suite) if _group(c, split) == group]
                pts = sorted((c["params"][x_key], c["stats_ms"][metric]) for c in ok)
                if not pts:
                    continue
                xs_all.update(x for x, _ in pts)
                dodge = 1 + 0.03 * (k - (len(chunk) - 1) / 2)   # side by side, so the whiskers do not hide each other
                ax.errorbar([x * dodge for x, _ in pts], [s["p50"] for _, s in pts],
                            yerr=[[s["p50"] - s.get("p10", s["p50"]) for _, s in pts],   # p10: none before it was kept
                                  [s["p90"] - s["p50"] for _, s in pts]],
                            color=f"C{i}", linestyle=STYLES[i % len(STYLES)], marker="o", capsize=3, label=name)
            ax.set(xscale="log", xlabel=xlabel, ylabel=ylabel,
                   title=f"B={group[0]}" + "".join(f", {k_}={v}" for k_, v in zip(split, group[1:])))
            ax.set_xticks(sorted(xs_all), [str(x) for x in sorted(xs_all)])
            if xs_all:   # room for the dodged series, also when the grid has a single x
                ax.set_xlim(min(xs_all) / 1.4, max(xs_all) * 1.4)
            ax.minorticks_off()
            ax.grid(alpha=0.3)
    _legend(fig, names)
    fig.suptitle(title)
    return fig


def speedup_lines(rows, labels, x_key, title, xlabel, split=()):
    """Each candidate's speedup against the grid's length (log axes), one panel per (B, *split), its 95%
    interval as whiskers and a line at 1.0: rows are a comparison's (r["params"], r["speedup"], r["speedup_ci"])."""
    from matplotlib.ticker import FuncFormatter
    groups = sorted({_group({"params": r["params"]}, split) for r in rows})
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(4.2 * max(len(groups), 1) + 2, 3.6), squeeze=False,
                             layout="constrained")
    for ax, group in zip(axes[0], groups):
        mine = [r for r in rows if _group({"params": r["params"]}, split) == group]
        xs = sorted({r["params"][x_key] for r in mine})
        ax.axhline(1.0, color="0.3", linewidth=1)
        for k, label in enumerate(labels):
            pts = sorted((r["params"][x_key], r["speedup"][label], r["speedup_ci"][label]) for r in mine
                         if r["speedup"][label])
            if pts:
                dodge = 1 + 0.03 * (k - (len(labels) - 1) / 2)
                ax.errorbar([x * dodge for x, _, _ in pts], [s for _, s, _ in pts],
                            yerr=[[s - ci[0] for _, s, ci in pts], [ci[1] - s for _, s, ci in pts]], color=f"C{k + 1}",
                            linestyle=STYLES[(k + 1) % len(STYLES)], marker="o", capsize=3)
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="speedup (reference p50 / candidate p50)",
               title=f"B={group[0]}" + "".join(f", {k_}={v}" for k_, v in zip(split, group[1:])))
        low, high = ax.get_ylim()
        ax.set_yticks([t for t in RATIO_TICKS if low <= t <= high] or [1.0])
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlim(min(xs) / 1.4, max(xs) * 1.4)
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    _legend(fig, labels, first=1)   # colours as in the latency figure, where the reference is the first
    fig.suptitle(f"{title}\nwhiskers: the 95% interval; above 1.0 the candidate is faster", fontsize=10)
    return fig


def prefill_latency(series, model):
    return _line_per_batch(series, "prefill", "seq_len", "latency", f"prefill latency, {model} (p50, whiskers p10-p90)",
                           "sequence length S (tokens)", "latency (ms)")


def decode_latency(series, model):
    return _line_per_batch(series, "decode", "ctx", "step", f"decode step, {model} (p50, whiskers p10-p90)",
                           "context length (tokens)", "ms per token", split=("gen", "mode"))


def _legend(fig, names, first=0, lines=True):
    """One legend for the figure naming every series, drawn in a panel or not; series k has colour and dash
    first + k in every figure (points alone where the figure draws no lines)."""
    from matplotlib.lines import Line2D
    fig.legend([Line2D([], [], color=f"C{first + k}", marker="o",
                       linestyle=STYLES[(first + k) % len(STYLES)] if lines else "none")
                for k in range(len(names))], names, loc="outside lower center", ncol=min(4, max(len(names), 1)),
               fontsize=7)


def dims_latency(series, title):
    """One panel per sweep series (dims.table's): p50 against the swept dim, multiples of 8 marked, so a
    cliff at an alignment boundary shows as a step at a mark."""
    fig, axes = plt.subplots(1, len(series), figsize=(4.6 * len(series) + 1, 3.8), squeeze=False)
    for ax, s in zip(axes[0], series):
        xs, ys = [p["value"] for p in s["points"]], [p["p50_ms"] for p in s["points"]]
        ax.plot(xs, ys, color="C0", linestyle=STYLES[0], marker=".", label="p50")
        aligned = [(x, y) for x, y in zip(xs, ys) if x % 8 == 0]
        ax.plot([x for x, _ in aligned], [y for _, y in aligned], "o", color="C3", label="multiple of 8")
        for x, _ in aligned:
            ax.axvline(x, color="C3", alpha=0.15)
        at = ", ".join(f"{k}={s[k]}" for k in ("M", "batch", "seq") if k in s)
        fixed = " ".join(f"{k}={v}" for k, v in s["shape"].items())
        ax.set(xlabel=s["sweep"], ylabel="p50 (ms)", title=f"{at}\n{fixed}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def speedup_heatmaps(values, title, row_label, col_label, col_text):
    """One heatmap per candidate: values = {label: {(row, col): (reference p50 / candidate p50, its 95% interval)
    or None}}. The colour scale is logarithmic and centred on 1.0 (0.5x and 2x equally far from it), wide enough
    for the most extreme cell; a cell whose interval holds 1.0 is hatched (no measurable difference); each cell's
    text sits on a light box, readable on any colour; `col_text` names a column key."""
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import FuncFormatter
    rows = sorted({r for v in values.values() for r, _ in v})
    cols = sorted({c for v in values.values() for _, c in v})
    found = [x[0] for v in values.values() for x in v.values() if x]
    reach = max([max(x, 1 / x) for x in found] + [1.1])
    norm, cmap = LogNorm(1 / reach, reach), matplotlib.colormaps["RdYlGn"].with_extremes(bad="lightgrey")
    fig, axes = plt.subplots(1, len(values), figsize=(len(values) * (1.3 * len(cols) + 2.5), 0.8 * len(rows) + 2.6),
                             squeeze=False, layout="constrained")
    box = {"boxstyle": "round,pad=0.2", "facecolor": (1, 1, 1, 0.75), "edgecolor": "none"}   # readable on any colour
    for ax, (label, vals) in zip(axes[0], values.items()):
        grid = np.array([[vals[(r, c)][0] if vals.get((r, c)) else np.nan for c in cols] for r in rows], dtype=float)
        im = ax.imshow(grid, cmap=cmap, norm=norm)
        ax.set_xticks(range(len(cols)), [col_text(c) for c in cols], rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), [str(r) for r in rows])
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                cell = vals.get((r, c))
                if not cell:
                    ax.text(j, i, "missing", ha="center", va="center", fontsize=8)
                    continue
                (speedup, (lo, hi)) = cell
                ax.text(j, i, f"{speedup:.2f}x\n[{lo:.2f}, {hi:.2f}]", ha="center", va="center", fontsize=7, bbox=box)
                if lo <= 1 <= hi:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.35",
                                           linewidth=0))
        ax.set(xlabel=col_label, ylabel=row_label, title=label)
    bar = fig.colorbar(im, ax=list(axes[0]), label="speedup (reference p50 / candidate p50, log scale)")
    bar.set_ticks([t for t in RATIO_TICKS if 1 / reach <= t <= reach])
    bar.ax.minorticks_off()
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    fig.suptitle(f"{title}\nhatched: the 95% interval holds 1.0, no measurable difference", fontsize=10)
    return fig


def heatmap(grid, title):
    """Accuracy per (prompt length, needle depth), a longctx.accuracy_grid: where retrieval breaks shows as
    a corner going red. A cell without items is grey and "n/a", never drawn as a zero."""
    import numpy as np
    acc = np.array([[np.nan if v is None else v for v in row] for row in grid["acc"]], dtype=float)
    fig, ax = plt.subplots(figsize=(1.1 * len(grid["depths"]) + 2.5, 0.7 * len(grid["lengths"]) + 1.8))
    im = ax.imshow(acc, cmap=matplotlib.colormaps["RdYlGn"].with_extremes(bad="lightgrey"), vmin=0, vmax=1)
    ax.set_xticks(range(len(grid["depths"])), [f"{d:g}" for d in grid["depths"]])
    ax.set_yticks(range(len(grid["lengths"])), [str(n) for n in grid["lengths"]])
    for i, row in enumerate(grid["acc"]):
        for j, v in enumerate(row):
            ax.text(j, i, "n/a" if v is None else f"{v:.2f}\nn={grid['n'][i][j]}", ha="center", va="center", fontsize=8)
    ax.set(xlabel="needle depth (fraction of the filler)", ylabel="prompt length (tokens)", title=title)
    fig.colorbar(im, ax=ax, label="accuracy (exact match)")
    return fig


def grouped_bars(labels, bars, title, ylabel, errors=None):
    """bars = {series name: [value or None per label]}; None is drawn as a 'missing' mark."""
    fig, ax = plt.subplots(figsize=(min(14, max(6, 0.5 * len(labels) * len(bars))), 4.5))
    _bars(ax, labels, bars, title, ylabel, errors)
    fig.tight_layout()
    return fig


def paired_differences(specs, ylabel):
    """One panel per metric, specs = [(title, cells, {candidate: [(difference, its interval) or None per cell]})]:
    each candidate's paired difference to the reference with its interval, a line at zero (no difference), and
    one legend for the figure naming every candidate; a cell a candidate lacks is named, never drawn as zero."""
    fig, axes = plt.subplots(1, len(specs), figsize=(min(18, 6 * len(specs)), 4.8), squeeze=False,
                             layout="constrained")
    for ax, (title, cells, diffs) in zip(axes[0], specs):
        ax.axhline(0, color="0.3", linewidth=1)
        step = 0.6 / max(len(diffs), 1)
        for k, (name, vals) in enumerate(diffs.items()):
            for i, v in enumerate(vals):
                x = i - 0.3 + step * (k + 0.5)
                if v is None:   # at the panel's foot, whatever its scale
                    ax.text(x, 0.02, "missing", rotation=90, ha="center", va="bottom", fontsize=7, color=f"C{k}",
                            transform=ax.get_xaxis_transform())
                    continue
                d, (lo, hi) = v
                ax.errorbar(x, 100 * d, yerr=[[100 * (d - lo)], [100 * (hi - d)]], fmt="o", color=f"C{k}", capsize=4)
        ax.set_xticks(range(len(cells)), cells, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(cells) - 0.4)
        ax.set(title=title, ylabel=ylabel)
        ax.grid(axis="y", alpha=0.3)
    _legend(fig, list(specs[0][2]) if specs else [], lines=False)   # every candidate, drawn or not
    return fig


def panels(specs):
    """Side-by-side bar panels: specs = [(labels, bars, title, ylabel, errors or None), ...]. A panel without data
    (peak memory on CPU) is left out and named in the figure's title, not drawn empty."""
    empty = [s[2] for s in specs if not s[0] or all(v is None for vals in s[1].values() for v in vals)]
    drawn = [s for s in specs if s[2] not in empty] or specs[:1]
    fig, axes = plt.subplots(1, len(drawn), figsize=(min(18, 6 * len(drawn)), 4.8), squeeze=False,
                             layout="constrained")
    for ax, spec in zip(axes[0], drawn):
        _bars(ax, *spec)
    if empty and len(drawn) < len(specs):
        fig.suptitle(f"no data in these runs: {', '.join(empty)}", fontsize=9)
    return fig


def _bars(ax, labels, bars, title, ylabel, errors=None):
    if not labels or all(v is None for vals in bars.values() for v in vals):
        ax.text(0.5, 0.5, "not measured here\n(no CUDA device)" if "alloc" in title else "no data",
                ha="center", va="center", transform=ax.transAxes)
        ax.set(title=title, xticks=[], yticks=[])
        return
    width = 0.8 / max(len(bars), 1)
    for k, (name, vals) in enumerate(bars.items()):
        xs = [i + k * width for i in range(len(labels))]
        ys = [v if v is not None else 0 for v in vals]
        err = (errors or {}).get(name)
        drawn = ax.bar(xs, ys, width, label=name, yerr=[e or 0 for e in err] if err else None, capsize=3)
        if len(labels) * len(bars) <= 12:   # values on the bars only while they stay legible
            ax.bar_label(drawn, labels=["" if v is None else f"{v:.3g}" for v in vals], fontsize=7, padding=2)
        for x, v in zip(xs, vals):
            if v is None:
                ax.text(x, 0, "missing", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks([i + width * (len(bars) - 1) / 2 for i in range(len(labels))], labels, rotation=30, ha="right",
                  fontsize=8)
    ax.set(title=title, ylabel=ylabel)
    ax.legend(fontsize=8)


def stacked_bars(stacks, title, ylabel, marks=None):
    """stacks = {bar name: {segment: value}}, one bar per name, segments stacked in their order;
    marks = {bar name: value} drawn as a dash (e.g. the clock's time beside the profiler's sum)."""
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(stacks) + 2), 4.8))
    names = list(stacks)
    segments = list(dict.fromkeys(seg for parts in stacks.values() for seg in parts))
    bottom = [0.0] * len(names)
    for seg in segments:
        vals = [stacks[n].get(seg) or 0.0 for n in names]
        ax.bar(names, vals, 0.6, bottom=bottom, label=seg)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i, n in enumerate(names):
        if marks and marks.get(n) is not None:
            ax.plot([i - 0.35, i + 0.35], [marks[n]] * 2, "k--", lw=1.2, label="clock" if i == 0 else None)
    ax.tick_params(axis="x", labelrotation=20)
    ax.set(title=title, ylabel=ylabel)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def distribution(samples, title, ylabel):
    """samples = {series name: flat list of ms}: a box plot of the raw samples of one cell."""
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(samples)), 4.5))
    ax.boxplot(list(samples.values()), tick_labels=list(samples), showfliers=True)
    ax.tick_params(axis="x", labelrotation=20)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    ax.set(title=title, ylabel=ylabel)
    fig.tight_layout()
    return fig


def save(fig, path):
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path.name
