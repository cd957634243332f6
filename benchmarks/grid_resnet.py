"""The paper's vision comparison in one command: {baseline, ERA, label smoothing 0.1/0.2/0.3, dropout 0.1/0.2/0.3}
x seeds x {plain, augmented} with resnet_era.py on one data set. Writes one table (top-1, top-5, NLL, ECE, mean
entropy; mean ± std over seeds) and a reliability diagram (accuracy against confidence per method, the test images
of all seeds pooled).

    OMP_NUM_THREADS=1 python benchmarks/grid_resnet.py --dataset digits --seeds 1 2 3 4 5 \\
        --out results/resnet_grid_digits --report docs/results/resnet_digits_grid -- --epochs 8 --num-workers 0 --no-cuda

Everything after `--` is passed to every run of resnet_era.py (not --seed, --runs-dir, --era/--no-era, --resume).
"plain" is --augmentation crop-flip, "augmented" is --augmentation randaugment; the other methods are --no-era with
--label-smoothing or --dropout. Runs go one at a time, seed by seed, each in <out>/<setting>/<method>/seed<k>/:

    runs/         the run's --runs-dir (tensorboard events, checkpoint.pt)
    log.txt       its output
    metrics.json  written when it has finished: the `--resume <checkpoint> --test-only` output (metrics and the
                  confidence bins), the command, and the seconds it took

A cell with metrics.json is skipped; a cell with a checkpoint is continued with `--resume` alone. Ctrl-C (or SIGTERM)
is passed to the running cell, which saves its checkpoint; the grid then exits 130 (143), and the same command
continues where it stopped. The report (<report>.md, <report>.png) covers the cells finished so far. Only the
command line of resnet_era.py and its output are used.
"""
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Tuple

import numpy as np
import tyro

REPO = Path(__file__).resolve().parent.parent
METHODS = {  # name in the table: (directory, flags)
    "baseline": ("baseline", ["--no-era"]),
    "ERA": ("era", []),
    "LS 0.1": ("ls0.1", ["--no-era", "--label-smoothing", "0.1"]),
    "LS 0.2": ("ls0.2", ["--no-era", "--label-smoothing", "0.2"]),
    "LS 0.3": ("ls0.3", ["--no-era", "--label-smoothing", "0.3"]),
    "dropout 0.1": ("dropout0.1", ["--no-era", "--dropout", "0.1"]),
    "dropout 0.2": ("dropout0.2", ["--no-era", "--dropout", "0.2"]),
    "dropout 0.3": ("dropout0.3", ["--no-era", "--dropout", "0.3"]),
}
METHOD_KEYS = {"baseline": "baseline", "era": "ERA", "ls0.1": "LS 0.1", "ls0.2": "LS 0.2", "ls0.3": "LS 0.3",
               "dropout0.1": "dropout 0.1", "dropout0.2": "dropout 0.2", "dropout0.3": "dropout 0.3"}
SETTINGS = {"plain": ["--augmentation", "crop-flip"], "augmented": ["--augmentation", "randaugment"]}
RESERVED = ("--seed", "--runs-dir", "--era", "--no-era", "--resume", "--test-only", "--augmentation")


@dataclass
class Args:
    dataset: Literal["cifar10", "cifar100", "imagenet", "digits"] = "digits"
    """the data set (resnet_era.py --dataset)"""
    seeds: Tuple[int, ...] = (1, 2, 3, 4, 5)
    """seeds, each for every method and setting"""
    methods: Tuple[Literal["baseline", "era", "ls0.1", "ls0.2", "ls0.3", "dropout0.1", "dropout0.2", "dropout0.3"], ...] = (
        "baseline", "era", "ls0.1", "ls0.2", "ls0.3", "dropout0.1", "dropout0.2", "dropout0.3")
    """methods to run"""
    settings: Tuple[Literal["plain", "augmented"], ...] = ("plain", "augmented")
    """plain: random crop and flip; augmented: also RandAugment and random erasing"""
    out: str = "results/resnet_grid"
    """root of the cells <out>/<setting>/<method>/seed<k>/"""
    report: Optional[str] = None
    """write the table to <report>.md and the reliability diagram to <report>.png (default: <out>/report)"""


RUNNING = []  # the cell's process, to pass a Ctrl-C or SIGTERM on to it
STOPPED = []  # the signal that stopped the grid


def forward(signum, frame):
    STOPPED.append(signum)
    for proc in RUNNING:
        proc.send_signal(signum)


def run_cell(cell, command):
    """Run one cell's training in its own session (so a terminal's Ctrl-C reaches it once, through `forward`)."""
    with open(cell / "log.txt", "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
        RUNNING.append(proc)
        code = proc.wait()
        RUNNING.remove(proc)
    return code


def cell_metrics(args, extra, setting, method, seed):
    """The metrics of one finished cell (running or continuing it first); None if it was stopped."""
    directory, flags = METHODS[method]
    cell = Path(args.out) / setting / directory / f"seed{seed}"
    if (cell / "metrics.json").exists():
        print(f"skip   {setting:9s} {method:12s} seed {seed} (finished)", flush=True)
        return json.loads((cell / "metrics.json").read_text())
    cell.mkdir(parents=True, exist_ok=True)
    checkpoints = sorted((cell / "runs").glob("*/checkpoint.pt"))
    script = [sys.executable, str(REPO / "resnet_era.py")]
    if checkpoints:
        command = [*script, "--resume", str(checkpoints[-1])]
        print(f"resume {setting:9s} {method:12s} seed {seed} from {checkpoints[-1]}", flush=True)
    else:
        shutil.rmtree(cell / "runs", ignore_errors=True)  # a run stopped before its first checkpoint starts again
        command = [*script, "--dataset", args.dataset, "--seed", str(seed), "--runs-dir", str(cell / "runs"),
                   *flags, *SETTINGS[setting], *extra]
        print(f"run    {setting:9s} {method:12s} seed {seed}", flush=True)
    start = time.time()
    code = run_cell(cell, command)
    if STOPPED or code != 0:
        if not STOPPED:
            sys.exit(f"the run failed (exit {code}): see {cell / 'log.txt'}")
        return None
    (checkpoint,) = (cell / "runs").glob("*/checkpoint.pt")
    test = subprocess.run([*script, "--resume", str(checkpoint), "--test-only"], capture_output=True, text=True, cwd=REPO,
                          start_new_session=True)
    if test.returncode != 0:
        sys.exit(f"--test-only failed (exit {test.returncode}):\n{test.stderr[-2000:]}")
    metrics = json.loads(test.stdout.splitlines()[-1])
    metrics.update(command=command, seconds=time.time() - start)
    (cell / "metrics.json").write_text(json.dumps(metrics))
    print(f"       top-1 {metrics['top1']:.4f}  nll {metrics['nll']:.4f}  ece {metrics['ece']:.4f}  "
          f"entropy {metrics['entropy']:.3f}  ({metrics['seconds']:.0f} s)", flush=True)
    return metrics


def mean_std(values, scale, digits):
    values = scale * np.asarray(values)
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.{digits}f} ± {std:.{digits}f}"


def write_report(args, results, extra, prefix):
    """<prefix>.md: the table; <prefix>.png: accuracy against mean confidence in each of the 15 confidence bins."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = {method: f"ERA H0={era_h0(extra)}" if method == "ERA" else method for method in METHODS}
    seeds = sorted({seed for runs in results.values() for seed in runs})
    seconds = sum(m["seconds"] for runs in results.values() for m in runs.values())
    lines = [f"resnet_era.py on {args.dataset}, seeds {' '.join(map(str, seeds))}, flags `{' '.join(extra)}`; "
             f"mean ± std over seeds; ECE with 15 equal-width bins; {seconds / 3600:.2f} h of runs in all.", "",
             "| setting | method | seeds | top-1 % | top-5 % | NLL | ECE % | mean entropy (nats) |",
             "|---|---|---|---|---|---|---|---|"]
    fig, axes = plt.subplots(1, len(args.settings), figsize=(5.5 * len(args.settings), 5), squeeze=False)
    colours = {"baseline": "black", "ERA": "tab:red", "LS 0.1": "#9ecae1", "LS 0.2": "#4292c6", "LS 0.3": "#08519c",
               "dropout 0.1": "#a1d99b", "dropout 0.2": "#41ab5d", "dropout 0.3": "#006d2c"}
    for ax, setting in zip(axes[0], args.settings):
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
        for method in METHODS:
            runs = list(results.get((setting, method), {}).values())
            if not runs:
                continue
            cells = [mean_std([r["top1"] for r in runs], 100, 2), mean_std([r["top5"] for r in runs], 100, 2),
                     mean_std([r["nll"] for r in runs], 1, 4), mean_std([r["ece"] for r in runs], 100, 2),
                     mean_std([r["entropy"] for r in runs], 1, 3)]
            lines.append(f"| {setting} | {label[method]} | {len(runs)} | {' | '.join(cells)} |")
            bins = np.sum([r["bins"] for r in runs], axis=0)  # [15, (count, sum of confidence, sum of correct)]
            used = bins[:, 0] > 0
            ece = np.abs(bins[:, 2] - bins[:, 1]).sum() / bins[:, 0].sum()
            ax.plot(bins[used, 1] / bins[used, 0], bins[used, 2] / bins[used, 0], "o-", ms=3, lw=1.2,
                    color=colours[method], label=f"{label[method]} (ECE {100 * ece:.1f} %)")
        ax.set(title=f"{args.dataset}, {setting}", xlabel="mean confidence in the bin", ylabel="accuracy in the bin",
               xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Reliability: test images of {len(seeds)} seed(s) pooled, 15 equal-width confidence bins", fontsize=9)
    fig.tight_layout()
    fig.savefig(f"{prefix}.png", dpi=110)
    Path(f"{prefix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {prefix}.md and {prefix}.png")


def era_h0(extra):
    return extra[extra.index("--min-entropy") + 1] if "--min-entropy" in extra else "0.6"


def main():
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args, extra = tyro.cli(Args, args=argv[:split]), argv[split + 1:]
    reserved = [flag for flag in extra if flag.split("=")[0] in RESERVED + ("--dataset",)]
    if reserved:
        sys.exit(f"error: {reserved[0]} is set by the grid per run; remove it after `--`")
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    results = {}
    for seed, setting, key in [(seed, setting, key) for seed in args.seeds for setting in args.settings for key in args.methods]:
        if STOPPED:
            break
        metrics = cell_metrics(args, extra, setting, METHOD_KEYS[key], seed)
        if metrics is not None:
            results.setdefault((setting, METHOD_KEYS[key]), {})[seed] = metrics
    if results:
        write_report(args, results, extra, args.report or str(Path(args.out) / "report"))
    if STOPPED:
        print(f"stopped by signal {STOPPED[0]}: run the same command again to continue", file=sys.stderr)
        sys.exit(128 + STOPPED[0])


if __name__ == "__main__":
    main()
