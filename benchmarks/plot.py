"""Curves of tensorboard tags (mean +- std or IQM over seeds) and a Markdown results table.

    python benchmarks/plot.py results --tag eval/episodic_return --out results/sac.png      # ERA vs baseline
    python benchmarks/plot.py /work/exp/results --env Hopper-v5 HalfCheetah-v5 \\
        --curve "PPO={env}/baseline" "PPO init σ={env}-init/baseline" "ERA pin={env}/era" "ERA floor={env}-floor/era" \\
        --tag eval/episodic_return losses/entropy --out results/ppo_mujoco.png               # chosen curves

Reads every directory under the given roots that holds tensorboard event files. A run made by
benchmarks/run.py is identified by its run.json (script, group, variant, seed) and its DONE file (finished, wall
time). Any other run is identified by its hyperparameters text (env_id or dataset, era, seed) and its
CleanRL-style name `<env>__<exp_name>__<seed>__<time>` (exp_name ending in "_noera" = baseline).

Without --curve, each script and group gets a row of panels with two curves, ERA and baseline. With --curve, each
curve is the runs of one run.py group and variant, labelled as given ("LABEL=GROUP/VARIANT"); with --env, "{env}"
in GROUP stands for each env in turn and each env gets a row. Either way there is one panel per --tag in a row.
Seeds are interpolated onto a common grid: the logged steps inside the step range every run of a panel covers.
The table's final value of a run is the mean of its last `--last` values logged up to that range's end.
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
COLORS = ["tab:blue", "tab:orange", "tab:red", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:gray"]
STYLES = ["-", "--", "-.", ":"]  # curves that coincide (a floor that never binds is PPO) stay visible


@dataclass
class Args:
    roots: tyro.conf.Positional[Tuple[str, ...]] = ("results",)
    """directories to search for runs (a benchmarks/run.py --out, or a scripts' runs/ directory)"""
    tag: Tuple[str, ...] = ("eval/episodic_return",)
    """the scalars to plot, one panel each, side by side"""
    curve: Tuple[str, ...] = ()
    """curves "LABEL=GROUP/VARIANT" of benchmarks/run.py runs (default: ERA and baseline of every group)"""
    env: Tuple[str, ...] = ()
    """with --curve: one row of panels per env, each substituted for "{env}" in the curves' groups"""
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


def identify(run_dir: Path, root: Path, acc: ea.EventAccumulator) -> Optional[dict]:
    """stem, group (label), group_dir, variant, seed, finished, wall_s and attempts of one event directory, or None
    when it cannot be told. wall_s (run.py's DONE) is the wall time of the run's last attempt; attempts counts the
    times run.py started it (an interrupted run is resumed in a new attempt)."""
    for anc in run_dir.parents:
        if (anc / "run.json").is_file():
            if anc / "runs" not in [run_dir, *run_dir.parents]:
                return None  # e.g. runs.stale1/: an abandoned attempt
            meta = json.loads((anc / "run.json").read_text())
            done = json.loads((anc / "DONE").read_text()) if (anc / "DONE").is_file() else None
            log = anc / "log.txt"
            return dict(stem=Path(meta["script"]).stem, group=meta.get("label", meta["group"]), group_dir=meta["group"],
                        variant=meta["variant"], seed=int(meta["seed"]), finished=done is not None,
                        wall_s=done.get("wall_s") if done else None,
                        attempts=log.read_text().count("\n### ") if log.is_file() else 1)
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
    return dict(stem=parts[1].removesuffix("_noera"), group=group, group_dir=group, variant="era" if era else "baseline",
                seed=seed, finished=True, wall_s=None, attempts=1)  # finished: cannot tell


def load_runs(roots: Tuple[str, ...], tags: Tuple[str, ...]) -> List[dict]:
    """Every identified run with at least one of `tags`: identify()'s fields and curves {tag: (steps, values)}
    (a step logged twice, as by a resumed run: the later value)."""
    runs = {}
    for root in map(Path, roots):
        if not root.is_dir():
            raise ValueError(f"{root}: no such directory")
        for run_dir in sorted({f.parent for f in root.rglob("events.out.tfevents.*")}):
            acc = ea.EventAccumulator(str(run_dir), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
            acc.Reload()
            run = identify(run_dir, root, acc)
            present = [t for t in tags if t in acc.Tags()["scalars"]]
            if run is None or not present:
                print(f"skipping {run_dir}: " + ("not a run" if run is None else f"none of {list(tags)}"), file=sys.stderr)
                continue
            run = runs.setdefault((run["stem"], run["group"], run["variant"], run["seed"]), dict(run, curves={}))
            for tag in present:
                by_step = dict(zip(*run["curves"].get(tag, ([], []))))
                by_step.update((e.step, e.value) for e in sorted(acc.Scalars(tag), key=lambda e: e.wall_time))
                steps = sorted(by_step)
                run["curves"][tag] = (steps, [by_step[s] for s in steps])
    if not runs:
        raise ValueError(f"no runs with scalar tag {' or '.join(map(repr, tags))} under {', '.join(roots)}")
    return list(runs.values())


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


def wall_time(runs: List[dict]) -> str:
    """Mean (min-max) of the runs' DONE wall times, in hours; * when a run was resumed (its last attempt only)."""
    walls = [r["wall_s"] / 3600 for r in runs if r["wall_s"] is not None]
    if not walls:
        return "–"
    star = "*" if any(r["attempts"] > 1 for r in runs if r["wall_s"] is not None) else ""
    return f"{np.mean(walls):.2f}{star} ({min(walls):.2f}–{max(walls):.2f})" if len(walls) > 1 else f"{walls[0]:.2f}{star}"


def era_vs_baseline_rows(runs: List[dict]) -> List[Tuple[str, list]]:
    """(row name, [(key, curve label, color, runs)]) for the default figure: ERA and baseline of every group."""
    groups = defaultdict(list)
    for r in runs:
        groups[r["stem"], r["group"]].append(r)
    multi_script = len({stem for stem, _ in groups}) > 1
    return [(f"{stem}: {group}" if multi_script else group,
             [(v, label, color, [r for r in rs if r["variant"] == v]) for v, (label, color) in VARIANTS.items()])
            for (stem, group), rs in sorted(groups.items())]


def chosen_rows(runs: List[dict], curves: Tuple[str, ...], envs: Tuple[str, ...]) -> List[Tuple[str, list]]:
    """(env, [(key, curve label, color, runs)]) for --curve: each curve the runs of one run.py group and variant."""
    specs = []
    for spec in curves:
        label, _, where = spec.partition("=")
        group, _, variant = where.rpartition("/")
        if not (label and group and variant):
            raise ValueError(f"--curve {spec!r}: expected LABEL=GROUP/VARIANT, e.g. 'ERA pin={{env}}/era'")
        specs.append((label, group, variant))
    if not envs and any("{env}" in g for _, g, _ in specs):
        raise ValueError("--curve uses {env}: name the envs with --env")
    rows = []
    for env in envs or ("",):
        row = []
        for i, (label, group, variant) in enumerate(specs):
            group = group.replace("{env}", env)
            match = [r for r in runs if group in (r["group"], r["group_dir"]) and r["variant"] == variant]
            if not match:
                found = sorted({f"{r['group']}/{r['variant']}" for r in runs})
                raise ValueError(f"--curve {label}={group}/{variant}: no such runs (found: {', '.join(found)})")
            if len({r["stem"] for r in match}) > 1:
                raise ValueError(f"--curve {label}: group {group} exists for several scripts; pass one script's tree")
            row.append((label, label, COLORS[i % len(COLORS)], match))
        rows.append((env or ", ".join(dict.fromkeys(g for _, g, _ in specs)), row))  # no --env: the curves' groups
    return rows


def era_table(rows: List[dict], tag: str, last: int) -> str:
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


def curves_table(rows: List[dict], tags: Tuple[str, ...], last: int) -> str:
    """One line per env and curve: final value of each tag (mean ± std over seeds), n, wall time per run."""
    lines = [f"Final value (mean of the last {last} logged) at the last step all runs of an env reached (step "
             f"column); mean ± std (ddof=1) over n seeds. Wall time per run: mean (min–max) in hours, from run.py's "
             f"DONE; * = a run was resumed and only its last attempt is counted.", "",
             "| env | variant | n | " + " | ".join(f"`{t}` | step" for t in tags) + " | wall time per run (h) |",
             "|---" * (4 + 2 * len(tags)) + "|"]
    for env_rows in rows:
        for label in env_rows["labels"]:
            cells = []
            for tag in tags:
                r = env_rows["tags"].get(tag, {}).get(label)
                cells.append("– | –" if r is None else f"{fmt(r['mean'])} ± {fmt(r['std'])} | {r['step']}")
            n = env_rows["n"][label]
            unfinished = env_rows["unfinished"][label]
            n = f"{n}" + (f" ({unfinished} unfinished)" if unfinished else "")
            lines.append(f"| {env_rows['env']} | {label} | {n} | " + " | ".join(cells) + f" | {env_rows['wall'][label]} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> List[dict]:
    args = tyro.cli(Args, args=argv)
    if args.last < 1 or args.points < 2:
        raise ValueError(f"--last must be >= 1 (got {args.last}) and --points >= 2 (got {args.points})")
    if args.env and not args.curve:
        raise ValueError("--env needs --curve (the groups it is substituted into)")
    runs = load_runs(args.roots, args.tag)
    figure_rows = chosen_rows(runs, args.curve, args.env) if args.curve else era_vs_baseline_rows(runs)
    panels = [(name, tag, curves) for name, curves in figure_rows for tag in args.tag]
    ncols = len(args.tag) if args.curve or len(args.tag) > 1 else min(3, len(panels))  # else: a grid of groups
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.8 * nrows), squeeze=False)
    era_rows, summaries = {tag: [] for tag in args.tag}, {}
    for ax, (name, tag, curves) in zip(axes.flat, panels):
        summary = summaries.setdefault(name, dict(
            env=name, labels=[c[1] for c in curves], tags={}, n={label: len({r["seed"] for r in rs}) for _, label, _, rs in curves},
            unfinished={label: sum(not r["finished"] for r in rs) for _, label, _, rs in curves},
            wall={label: wall_time(rs) for _, label, _, rs in curves}))
        panel = {key: {r["seed"]: r["curves"][tag] for r in rs if tag in r["curves"]} for key, _, _, rs in curves}
        panel = {key: seeds for key, seeds in panel.items() if seeds}
        grid = common_grid(panel, args.points) if panel else np.array([])
        row = {"panel": name, "step": int(grid[-1]) if len(grid) else None, "era": None, "baseline": None,
               "ratio": None, "curves": {}}
        summary["tags"][tag] = {}
        for key, label, color, rs in curves:
            if key not in panel or not len(grid):
                continue
            seeds = sorted(panel[key])
            y = np.stack([np.interp(grid, *panel[key][s]) for s in seeds])
            centre, low, high = aggregate(y, args.iqm)
            style = STYLES[[c[0] for c in curves].index(key) % len(STYLES)] if args.curve else "-"
            ax.plot(grid, centre, color=color, linestyle=style, label=f"{label} (n={len(seeds)})")
            ax.fill_between(grid, low, high, color=color, alpha=0.2, linewidth=0)
            f = finals(panel[key], grid[-1], args.last)
            row["curves"][key] = (grid, centre, low, high)
            row[key] = summary["tags"][tag][label] = {
                "mean": f.mean(), "std": f.std(ddof=1) if len(f) > 1 else 0.0, "n": len(f), "seeds": seeds,
                "finals": f.tolist(), "step": int(grid[-1]),
                "unfinished": sum(not r["finished"] for r in rs if r["seed"] in panel[key])}
        if not len(grid):
            print(f"{name}, {tag}: " + ("no runs" if not panel else "the runs' step ranges do not overlap"), file=sys.stderr)
        if row["era"] and row["baseline"] and row["baseline"]["mean"] != 0:
            row["ratio"] = row["era"]["mean"] / row["baseline"]["mean"]
        era_rows[tag].append(row)
        ax.set(title=name, xlabel="step", ylabel=tag)
        if row["curves"]:
            ax.legend()
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    env_rows = list(summaries.values())
    if not any(row["curves"] for rows in era_rows.values() for row in rows):
        raise ValueError("nothing to plot: in every panel the runs' step ranges do not overlap")
    band = "IQM, 25-75 % percentile band" if args.iqm else "mean ± std"
    fig.suptitle(f"{'ERA vs baseline, ' if not args.curve else ''}{band} over seeds", fontsize=10)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    if args.curve:
        table = curves_table(env_rows, args.tag, args.last)
    else:
        table = "\n".join(era_table([r for r in era_rows[tag] if r["curves"]], tag, args.last) for tag in args.tag)
    print(table)
    out.with_suffix(".md").write_text(table)
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return env_rows if args.curve else [row for tag in args.tag for row in era_rows[tag] if row["curves"]]


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:  # a flag that names nothing plottable: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
