"""Benchmark tdmpc2_era.py through its command line only: speed of ERA vs TD-MPC2, and the entropy of both priors.

    python benchmarks/bench_tdmpc2_era.py speed                        # agent steps / s, ERA vs --no-era
    python benchmarks/bench_tdmpc2_era.py speed --variants era --extra="--no-mpc"           # the CPU-friendly setting
    git show d5f2915:tdmpc2_era.py > old.py && python benchmarks/bench_tdmpc2_era.py speed --scripts old.py tdmpc2_era.py
    python benchmarks/bench_tdmpc2_era.py entropy --out docs/results/tdmpc2_entropy   # CSV + PNG of both priors

`speed` runs each script and variant in turn, `--rounds` times (alternating, so that load from other processes hits
every one alike), each run a fresh process with the same flags, and reports medians: the agent steps per second
after the burst of seed updates (from the logged `charts/SPS`), the CPU seconds of the whole process, and its
wall time. `entropy` runs ERA and --no-era once each and writes `charts/policy_entropy`, `charts/action_std`,
`charts/era_entropy_bound` and `eval/episodic_return` side by side.
"""
import csv
import os
import shlex
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Tuple

import tyro
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from timing import timed_run  # benchmarks/timing.py

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"era": [], "noera": ["--no-era"], "era-compile": ["--compile"], "noera-compile": ["--no-era", "--compile"]}
SPEED = ["--env-id", "dm_control/cartpole-swingup-v0", "--model-size", "1", "--episode-length", "100", "--seed-steps",
         "100", "--total-timesteps", "200", "--eval-every", "0", "--save-every", "0", "--log-every", "10"]
ENTROPY = ["--env-id", "dm_control/walker-walk-v0", "--model-size", "1", "--mlp-dim", "128", "--latent-dim", "64",
           "--num-samples", "128", "--num-elites", "16", "--num-pi-trajs", "8", "--iterations", "4",
           "--seed-steps", "1000", "--total-timesteps", "4000", "--eval-every", "4000", "--eval-episodes", "1",
           "--log-every", "100", "--save-every", "1000"]


@dataclass
class Args:
    mode: tyro.conf.Positional[Literal["speed", "entropy"]] = "speed"
    """speed: agent steps per second; entropy: one run per variant, the priors' entropies as CSV + PNG"""
    scripts: Tuple[str, ...] = (str(ROOT / "tdmpc2_era.py"),)
    """the scripts to run (other versions of tdmpc2_era.py, e.g. from `git show <rev>:tdmpc2_era.py`, work too)"""
    variants: Tuple[Literal["era", "noera", "era-compile", "noera-compile"], ...] = ("era", "noera")
    """speed: which of era, noera, era-compile, noera-compile"""
    rounds: int = 3
    """speed: runs of each variant, alternating"""
    flags: Optional[str] = None
    """the script's flags, as one string: --flags="..." (default: a 200-step cartpole-swingup run for speed, a
    walker-walk run for entropy)"""
    extra: str = ""
    """flags appended to those, as one string, e.g. --extra="--no-mpc" """
    seed: int = 1
    """seed of every run"""
    threads: int = 1
    """OMP_NUM_THREADS of every run"""
    steady_from: int = 0
    """speed: measure agent steps per second from the first logged SPS at or after this step (0: right after the
    burst); with --compile, a step after the planner's first calls leaves their compiling out"""
    runs_dir: Optional[str] = None
    """where the runs write (default: a temporary directory)"""
    out: str = "tdmpc2_entropy"
    """entropy: write OUT.csv and OUT.png"""


def run(b, script, flags, runs_dir):
    """Run the script once; (its run directory, wall seconds, CPU seconds)."""
    cmd = [sys.executable, script, *flags, "--seed", str(b.seed), "--runs-dir", str(runs_dir)]
    env = dict(os.environ, OMP_NUM_THREADS=str(b.threads), MKL_NUM_THREADS=str(b.threads), PYTHONUNBUFFERED="1")
    _, cpu, wall = timed_run(cmd, env=env)
    dirs = sorted({p.parent for p in Path(runs_dir).rglob("events.out.tfevents.*")}, key=os.path.getmtime)
    return dirs[-1], wall, cpu


def scalars(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def steady_sps(sps, steady_from=0):
    """Agent steps per second between the first logged SPS at or after `steady_from` (by default the one right
    after the burst) and the last one. charts/SPS at step s is s / (seconds since the start): the time at s is
    s / SPS(s)."""
    (s0, v0), (s1, v1) = next(x for x in sps if x[0] >= steady_from), sps[-1]
    return (s1 - s0) / (s1 / v1 - s0 / v0)


def speed(b):
    flags = shlex.split(b.flags) if b.flags else SPEED
    results = {(s, v): [] for s in b.scripts for v in b.variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(b.rounds):
            for i, (s, v) in enumerate(results):
                run_dir, wall, cpu = run(b, s, [*flags, *shlex.split(b.extra), *VARIANTS[v]], Path(b.runs_dir or tmp) / f"{i}-{v}-{r}")
                results[s, v].append((steady_sps(scalars(run_dir)["charts/SPS"], b.steady_from), cpu, wall))
                print(f"round {r + 1} {s} {v}: {results[s, v][-1][0]:6.2f} agent steps/s after the burst, "
                      f"{cpu:6.1f} CPU s, {wall:6.1f} wall s", flush=True)
    print(f"\n{shlex.join([*flags, *shlex.split(b.extra)])}, OMP_NUM_THREADS={b.threads}, median of {b.rounds} alternating rounds\n\n"
          f"| script | variant | agent steps/s from step {b.steady_from or 'after the burst'} | CPU s per run | wall s per "
          "run |\n|---|---|---|---|---|")
    for (s, v), res in results.items():
        med = [statistics.median(x[i] for x in res) for i in range(3)]
        print(f"| {s} | {v} | {med[0]:.2f} | {med[1]:.1f} | {med[2]:.1f} |")


def entropy(b):
    flags = shlex.split(b.flags) if b.flags else ENTROPY
    logs, walls = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for v in ("era", "noera"):
            run_dir, walls[v], cpu = run(b, b.scripts[0], [*flags, *shlex.split(b.extra), *VARIANTS[v]], Path(b.runs_dir or tmp) / v)
            logs[v] = scalars(run_dir)
            print(f"{v}: {walls[v]:.0f} s wall, {cpu:.0f} CPU s, {run_dir}", flush=True)
    bound = logs["era"]["charts/era_entropy_bound"][0][1]
    tags = ("charts/policy_entropy", "charts/action_std", "charts/episodic_return", "eval/episodic_return")
    rows = sorted({s for v in logs for t in tags for s, _ in logs[v].get(t, [])})
    out = Path(b.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "era_entropy_bound", *[f"{v}:{t}" for v in logs for t in tags]])
        for s in rows:
            w.writerow([s, bound, *[dict(logs[v].get(t, [])).get(s, "") for v in logs for t in tags]])
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, tag in zip(axes, tags[:3]):
        for v, color in (("era", "tab:red"), ("noera", "tab:blue")):
            steps, values = zip(*logs[v][tag])
            ax.plot(steps, values, color=color, label="TD-MPC2-ERA" if v == "era" else "TD-MPC2")
        if tag == "charts/policy_entropy":
            ax.axhline(bound, color="k", ls="--", label=f"ERA's guaranteed floor {bound:.2f}")
        ax.set(title=tag, xlabel="agent steps")
        ax.legend()
    fig.suptitle(f"tdmpc2_era.py {shlex.join([*flags, *shlex.split(b.extra)])} (seed {b.seed})", fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)
    for v in logs:
        ent = [x for _, x in logs[v]["charts/policy_entropy"]]
        print(f"{v}: policy_entropy from {ent[0]:.2f} to {ent[-1]:.2f} (min {min(ent):.2f}, bound {bound:.2f}), "
              f"{sum(x < bound for x in ent)} of {len(ent)} logged values below the bound, wall {walls[v]:.0f} s")
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    b = tyro.cli(Args)
    speed(b) if b.mode == "speed" else entropy(b)
