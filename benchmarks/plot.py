"""ERA vs baseline: curves of one tensorboard tag (mean +- std or IQM over seeds) and a Markdown results table.

    python benchmarks/plot.py results --tag eval/episodic_return --out results/sac.png

Reads every directory under the given roots that holds tensorboard event files. A run made by
benchmarks/run.py is identified by its run.json (script, group, variant, seed): one panel per script and
group. Any other run is identified by its hyperparameters text (env_id or dataset, era, seed) and its
CleanRL-style name `<env>__<exp_name>__<seed>__<time>` (exp_name ending in "_noera" = baseline).
Seeds are interpolated onto a common grid: the logged steps inside the step range every run of a panel
covers. The table's final value of a run is the mean of its last `--last` values logged up to that range's end.
"""
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402
from tensorboard.backend.event_processing import event_accumulator as ea  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402

VARIANTS = {"era": ("ERA", "tab:red"), "baseline": ("baseline", "tab:blue")}


@dataclass
class Args:
    roots: tyro.conf.Positional[Tuple[str, ...]] = ("results",)
    """directories to search for runs (a benchmarks/run.py --out, or a scripts' runs/ directory)"""
    tag: str = "eval/episodic_return"
    """the scalar to plot"""
    out: str = "era_vs_baseline.png"
    """PNG to write; the Markdown table goes next to it with the suffix .md"""
    iqm: bool = False
    """draw the interquartile mean with a 25-75 % percentile band instead of mean +- std"""
    last: int = 1
    """the final value of a run is the mean of its last N logged values"""
    points: int = 200
    """at most this many points per curve"""


def hyperparameters(acc: ea.EventAccumulator) -> dict:
    """The CleanRL-style `|name|value|` Markdown table a script logged as text 'hyperparameters'."""
    if "hyperparameters/text_summary" not in acc.Tags()["tensors"]:
        return {}
    text = tensor_util.make_ndarray(acc.Tensors("hyperparameters/text_summary")[0].tensor_proto).item()
    rows = (line.strip().strip("|").split("|") for line in text.decode().splitlines())
    return {r[0].strip(): r[1].strip() for r in rows if len(r) == 2}


def identify(run_dir: Path, root: Path, acc: ea.EventAccumulator) -> Optional[Tuple[str, str, str, int, bool]]:
    """(script stem, group, variant, seed, finished) of one event directory, or None when it cannot be told."""
    for anc in run_dir.parents:
        if (anc / "run.json").is_file():
            if anc / "runs" not in [run_dir, *run_dir.parents]:
                return None  # e.g. runs.stale1/: an abandoned attempt
            meta = json.loads((anc / "run.json").read_text())
            group = meta.get("label", meta["group"])
            return Path(meta["script"]).stem, group, meta["variant"], int(meta["seed"]), (anc / "DONE").is_file()
        if anc == root:
            break
    hp, parts = hyperparameters(acc), run_dir.name.split("__")
    if len(parts) < 4:  # not `<env>__<exp_name>__<seed>__<time>`: all of it must be in the hyperparameters
        parts = [None, hp.get("exp_name", "?"), None]
    try:
        seed = int(hp.get("seed") or parts[2])
    except (TypeError, ValueError):
        return None
    group = hp.get("env_id") or hp.get("dataset") or parts[0]
    era = hp["era"] == "True" if "era" in hp else not parts[1].endswith("_noera")
    if group is None:
        return None
    return parts[1].removesuffix("_noera"), group, "era" if era else "baseline", seed, True  # cannot tell


def load_runs(roots: Tuple[str, ...], tag: str) -> dict:
    """{(stem, group): {variant: {seed: (steps, values)}}} of `tag` (a step logged twice: the last value), and
    {(stem, group, variant): seeds of runs.py runs without DONE}."""
    runs, unfinished = defaultdict(lambda: defaultdict(dict)), defaultdict(set)
    for root in map(Path, roots):
        if not root.is_dir():
            raise ValueError(f"{root}: no such directory")
        for run_dir in sorted({f.parent for f in root.rglob("events.out.tfevents.*")}):
            acc = ea.EventAccumulator(str(run_dir), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
            acc.Reload()
            key = identify(run_dir, root, acc)
            if key is None or tag not in acc.Tags()["scalars"]:
                print(f"skipping {run_dir}: " + ("not a run" if key is None else f"no tag {tag}"), file=sys.stderr)
                continue
            stem, group, variant, seed, finished = key
            if not finished:
                unfinished[stem, group, variant].add(seed)
            old = runs[stem, group][variant].get(seed, ([], []))
            by_step = dict(zip(*old))
            events = sorted(acc.Scalars(tag), key=lambda e: e.wall_time)
            by_step.update((e.step, e.value) for e in events)  # the later write wins (a resumed run)
            steps = sorted(by_step)
            runs[stem, group][variant][seed] = (steps, [by_step[s] for s in steps])
    if not runs:
        raise ValueError(f"no runs with scalar tag {tag!r} under {', '.join(roots)}")
    return runs, unfinished


def common_grid(panel: dict, points: int) -> np.ndarray:
    """The logged steps inside the range every run of the panel covers, at most `points` of them."""
    curves = [c for seeds in panel.values() for c in seeds.values()]
    lo, hi = max(s[0] for s, _ in curves), min(s[-1] for s, _ in curves)
    grid = np.unique(np.concatenate([np.asarray(s, dtype=np.float64) for s, _ in curves]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    if len(grid) > points:
        grid = np.unique(grid[np.linspace(0, len(grid) - 1, points).round().astype(int)])
    return grid


def aggregate(y: np.ndarray, iqm: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre and band over seeds (axis 0): mean +- std (ddof=1), or IQM with the 25-75 % percentiles."""
    if iqm:
        cut = int(0.25 * len(y))  # as scipy.stats.trim_mean(y, 0.25)
        centre = np.sort(y, axis=0)[cut:len(y) - cut].mean(0)
        return centre, np.percentile(y, 25, axis=0), np.percentile(y, 75, axis=0)
    mean, std = y.mean(0), y.std(0, ddof=1) if len(y) > 1 else np.zeros(y.shape[1:])
    return mean, mean - std, mean + std


def finals(curves: dict, end: float, last: int) -> np.ndarray:
    """Per seed: the mean of the last `last` values logged at steps <= end."""
    out = []
    for seed in sorted(curves):
        steps, values = map(np.asarray, curves[seed])
        out.append(values[steps <= end][-last:].mean())
    return np.asarray(out, dtype=np.float64)


def fmt(x: float) -> str:
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.0f}"


def markdown_table(rows: List[dict], tag: str, last: int) -> str:
    def cell(r):
        if r is None:
            return "– | 0"
        n = f"{r['n']}" + (f" ({r['unfinished']} unfinished)" if r["unfinished"] else "")
        return f"{fmt(r['mean'])} ± {fmt(r['std'])} | {n}"

    lines = [f"`{tag}`: final value (mean of the last {last} logged) at the last step all runs of a panel "
             f"reached; mean ± std (ddof=1) over n seeds.", "",
             "| env / data set | step | ERA | n | baseline | n | ERA / baseline |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        ratio = "–" if row["ratio"] is None else f"{row['ratio']:.3f}"
        lines.append(f"| {row['panel']} | {row['step']} | {cell(row['era'])} | {cell(row['baseline'])} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> List[dict]:
    args = tyro.cli(Args, args=argv)
    if args.last < 1 or args.points < 2:
        raise ValueError(f"--last must be >= 1 (got {args.last}) and --points >= 2 (got {args.points})")
    runs, unfinished = load_runs(args.roots, args.tag)
    multi_script = len({stem for stem, _ in runs}) > 1
    panels = []
    for (stem, group), panel in sorted(runs.items()):
        title, grid = f"{stem}: {group}" if multi_script else group, common_grid(panel, args.points)
        if len(grid) == 0:
            print(f"skipping panel {title}: its runs' step ranges do not overlap", file=sys.stderr)
        else:
            panels.append((stem, group, title, grid, panel))
    if not panels:
        raise ValueError("nothing to plot: in every panel the runs' step ranges do not overlap")
    ncols, rows = min(3, len(panels)), []
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
    for ax, (stem, group, title, grid, panel) in zip(axes.flat, panels):
        row = {"panel": title, "step": int(grid[-1]), "era": None, "baseline": None, "ratio": None, "curves": {}}
        for variant in [v for v in VARIANTS if v in panel]:
            seeds = sorted(panel[variant])
            y = np.stack([np.interp(grid, *panel[variant][s]) for s in seeds])
            centre, low, high = aggregate(y, args.iqm)
            label, color = VARIANTS[variant]
            ax.plot(grid, centre, color=color, label=f"{label} (n={len(seeds)})")
            ax.fill_between(grid, low, high, color=color, alpha=0.2, linewidth=0)
            row["curves"][variant] = (grid, centre, low, high)
            f = finals(panel[variant], grid[-1], args.last)
            row[variant] = {"mean": f.mean(), "std": f.std(ddof=1) if len(f) > 1 else 0.0, "n": len(f),
                            "seeds": seeds, "finals": f.tolist(), "unfinished": len(unfinished[stem, group, variant])}
        if row["era"] and row["baseline"] and row["baseline"]["mean"] != 0:
            row["ratio"] = row["era"]["mean"] / row["baseline"]["mean"]
        ax.set(title=title, xlabel="step", ylabel=args.tag)
        ax.legend()
        ax.grid(alpha=0.3)
        rows.append(row)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    band = "IQM, 25-75 % percentile band" if args.iqm else "mean ± std"
    fig.suptitle(f"{args.tag}\nERA vs baseline, {band} over seeds", fontsize=10)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    table = markdown_table(rows, args.tag, args.last)
    print(table)
    out.with_suffix(".md").write_text(table)
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
