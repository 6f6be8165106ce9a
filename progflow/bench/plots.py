"""The benchmarks' plots: FD against training step (``bench quality``), endpoint error and FD
against NFE (``bench solvers``). matplotlib is optional (``progflow[plot]``); without it the
JSON is written and the plots are skipped with a note."""

from __future__ import annotations

from pathlib import Path

from progflow.bench.arms import ARMS, DATASETS


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or None (with a note) when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install progflow[plot]); no plots written")
        return None
    return plt


def quality_plot(runs: list[dict], path: Path, title: str = DATASETS["fashion-mnist"]["title"]) -> None:
    """FD against training step, one line per arm and seed; the ablations in a second panel."""
    plt = pyplot()
    if plt is None:
        return
    arms = sorted({r["arm"] for r in runs})
    ablations = [a for a in arms if a not in ARMS]
    fig, axes = plt.subplots(1, 2 if ablations else 1, figsize=(13 if ablations else 6, 4.5), squeeze=False)
    first_seed = min(r["seed"] for r in runs)
    panels = [("base, DFM, FlowAR, cascade, Pyramidal Flow", [a for a in arms if a in ARMS])]
    if ablations:
        panels.append((f"ablations (seed {first_seed})", ["base", "dfm2", "flowar", *ablations]))
    cmap = plt.get_cmap("tab20")  # its dark shades first, then the light ones: 20 distinct colours
    palette = [cmap(2 * k + light) for light in (0, 1) for k in range(10)]
    colors = {a: palette[i % 20] for i, a in enumerate([*ARMS, *ablations])}
    for i, (ax, (panel, shown)) in enumerate(zip(axes[0], panels)):
        for r in runs:
            if r["arm"] not in shown or (i == 1 and r["seed"] != first_seed):
                continue
            style = "--" if r["arm"] not in ARMS else ("-" if r["seed"] == first_seed else ":")
            ax.plot([c["step"] for c in r["curve"]], [c["fd"] for c in r["curve"]], marker="o", markersize=3,
                    label=f"{r['arm']} seed {r['seed']}", linestyle=style, color=colors[r["arm"]])
        ax.set_xlabel("training step")
        ax.set_ylabel("FD (classifier features, cfg 1)")
        ax.set_yscale("log")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_title(f"{title}: {panel}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def solvers_plots(runs: list[dict], stem: Path) -> list[Path]:
    """Endpoint error and FD against NFE, a panel per run: ``STEM_error.png``, ``STEM_fd.png``."""
    plt = pyplot()
    if plt is None:
        return []
    names = sorted({e["solver"] for r in runs for e in r["endpoint"]})
    colors = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
    written = []
    for what, ylabel in (("error", "endpoint RMS vs dopri5 (log)"), ("fd", "FD (classifier features)")):
        fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs), 4), squeeze=False)
        for ax, r in zip(axes[0], runs):
            for n in names:
                if what == "error":
                    best = r["best_shift"].get(n, {})
                    for style, pick in (("-", lambda e: e["shift"] == best.get(str(e["nfe"]))),
                                        (":", lambda e: e["shift"] == 1.0)):
                        pts = sorted((e["nfe"], e["rms"]) for e in r["endpoint"] if e["solver"] == n and pick(e))
                        if pts:
                            ax.plot(*zip(*pts), style, marker="o", ms=3, color=colors[n],
                                    label=n if style == "-" else None)
                else:
                    pts = sorted((f["nfe"], f["fd"]) for f in r["fd"] if f["solver"] == n)
                    if pts:
                        ax.plot(*zip(*pts), "-", marker="o", ms=3, color=colors[n], label=n)
            ax.set_xscale("log")
            ticks = sorted({e["nfe"] for e in r["endpoint"]})
            ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=7)
            ax.minorticks_off()
            if what == "error":
                ax.set_yscale("log")
            ax.set_xlabel("NFE")
            ax.set_ylabel(ylabel)
            note = "solid: best shift, dotted: uniform" if what == "error" else "at the best shift"
            ax.set_title(f"{r['arm']} ({r['preset']}, {r['train_steps']} steps)\n{note}", fontsize=8)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = stem.with_name(f"{stem.name}_{what}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
