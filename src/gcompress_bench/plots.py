"""Figures from summary cells. Every function takes `series` = {variant: {cell id: summary cell}}, so one
run and a baseline-vs-palu comparison draw through the same code; each returns the Figure (tests read
its data) and `save` writes it as a PNG."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"baseline": "-", "palu": "--"}


def _ok(cells, suite):
    return [c for c in cells.values() if c.get("suite") == suite and c["status"] == "ok"]


def _group(c, split):
    """(B, *split values) of a cell; decode cells from before the decode modes were eager."""
    p = c["params"]
    return (p["batch"],) + tuple(p.get(k, "eager" if k == "mode" else None) for k in split)


def _line_per_batch(series, suite, x_key, metric, title, xlabel, ylabel, split=()):
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    groups = sorted({_group(c, split) for cells in series.values() for c in _ok(cells, suite)})
    color = {g: f"C{i}" for i, g in enumerate(groups)}   # one colour per (B, *split) across variants
    xs_all, k, n = set(), 0, len(groups) * len(series)
    for variant, cells in series.items():
        ok = _ok(cells, suite)
        for group in sorted({_group(c, split) for c in ok}):
            pts = sorted((c["params"][x_key], c["stats_ms"][metric]) for c in ok if _group(c, split) == group)
            label = f"{variant} B={group[0]}" + "".join(f" {k_}={v}" for k_, v in zip(split, group[1:]))
            xs_all.update(x for x, _ in pts)
            dodge = 1 + 0.025 * (k - (n - 1) / 2)   # side by side, so the p90 bars do not hide each other
            k += 1
            ax.errorbar([x * dodge for x, _ in pts], [s["p50"] for _, s in pts],
                        yerr=[[0] * len(pts), [s["p90"] - s["p50"] for _, s in pts]], color=color[group],
                        linestyle=STYLE.get(variant, ":"), marker="o", capsize=3, label=label)
    ax.set(xscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    ax.set_xticks(sorted(xs_all), [str(x) for x in sorted(xs_all)])
    if xs_all:   # room for the dodged series, also when the grid has a single x
        ax.set_xlim(min(xs_all) / 1.4, max(xs_all) * 1.4)
    ax.minorticks_off()
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def prefill_latency(series, model):
    return _line_per_batch(series, "prefill", "seq_len", "latency", f"prefill latency, {model} (p50, bar to p90)",
                           "sequence length S (tokens)", "latency (ms)")


def decode_latency(series, model):
    return _line_per_batch(series, "decode", "ctx", "step", f"decode step, {model} (p50, bar to p90)",
                           "context length (tokens)", "ms per token", split=("gen", "mode"))


def speedup_heatmap(rows, cols, values, title, row_label, col_label):
    """values[(row, col)] = baseline p50 / palu p50 (None: missing on a side)."""
    import numpy as np
    grid = np.array([[values.get((r, c)) if values.get((r, c)) is not None else np.nan for c in cols] for r in rows],
                    dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 2.5, 0.8 * len(rows) + 2))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0.5, vmax=1.5)
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, "missing" if np.isnan(grid[i, j]) else f"{grid[i, j]:.2f}x", ha="center", va="center",
                    fontsize=8)
    ax.set(xlabel=col_label, ylabel=row_label, title=title)
    fig.colorbar(im, ax=ax, label="speedup (baseline p50 / palu p50)")
    fig.tight_layout()
    return fig


def grouped_bars(labels, bars, title, ylabel, errors=None):
    """bars = {series name: [value or None per label]}; None is drawn as a 'missing' mark."""
    fig, ax = plt.subplots(figsize=(min(14, max(6, 0.5 * len(labels) * len(bars))), 4.5))
    _bars(ax, labels, bars, title, ylabel, errors)
    fig.tight_layout()
    return fig


def panels(specs):
    """Side-by-side bar panels: specs = [(labels, bars, title, ylabel, errors or None), ...]."""
    fig, axes = plt.subplots(1, len(specs), figsize=(min(18, 6 * len(specs)), 4.8), squeeze=False)
    for ax, spec in zip(axes[0], specs):
        _bars(ax, *spec)
    fig.tight_layout()
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


def distribution(samples, title, ylabel):
    """samples = {series name: flat list of ms}: a box plot of the raw samples of one cell."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.boxplot(list(samples.values()), tick_labels=list(samples), showfliers=True)
    ax.set(title=title, ylabel=ylabel)
    fig.tight_layout()
    return fig


def save(fig, path):
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name
