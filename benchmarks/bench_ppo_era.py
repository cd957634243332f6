"""CPU cost of ppo_era.py per 1,000 env steps: ERA, --no-era, --compile, and any other script at equal work.

    OMP_NUM_THREADS=1 python benchmarks/bench_ppo_era.py --env-id Hopper-v5 --rounds 3
    OMP_NUM_THREADS=1 python benchmarks/bench_ppo_era.py --compile \
        --compare "CleanRL=/path/to/cleanrl/ppo_continuous_action.py" "before=/tmp/old/ppo_era.py --no-era --eval-every 0"

Every variant runs through its command line, in a subprocess, at two budgets (--steps, default 2 and 10 iterations of
CleanRL's 2048-step rollout). Its cost per 1,000 env steps is the difference of the two runs' CPU time (user + sys
of the process and its children) divided by the difference in steps, so start-up, imports, compilation and the
final evaluation cancel out; the whole-run CPU time at the larger budget is printed too. The variants alternate
inside each round, and the table gives medians over rounds, so machine load hits them alike. CPU time, not wall
time: on a shared machine other processes' load does not enter it. Learning curves: benchmarks/run.py + plot.py.
"""
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import tyro

from timing import timed_run  # benchmarks/timing.py

REPO = Path(__file__).resolve().parent.parent


@dataclass
class BenchArgs:
    env_id: str = "Hopper-v5"
    """environment of every run"""
    steps: Tuple[int, int] = (4096, 20480)
    """the two budgets (env steps); cost per 1,000 steps = CPU difference / step difference"""
    rounds: int = 3
    """rounds; each runs every variant at both budgets, in alternating order"""
    seed: int = 1
    """seed of every run"""
    compile: bool = False
    """also time ppo_era.py --compile (ERA and --no-era)"""
    compare: Tuple[str, ...] = ()
    """other commands at equal work, each "LABEL=SCRIPT [FLAGS]"; --env-id, --total-timesteps and --seed are appended"""


def variants(bench):
    ours = f"{REPO / 'ppo_era.py'} --no-cuda --eval-every 0 --eval-episodes 1 --save-every 0"
    out = {"ERA": ours, "no-ERA": f"{ours} --no-era"}
    if bench.compile:
        out.update({"ERA --compile": f"{ours} --compile", "no-ERA --compile": f"{ours} --no-era --compile"})
    for spec in bench.compare:
        label, _, command = spec.partition("=")
        if not command:
            raise ValueError(f"--compare {spec!r}: expected LABEL=SCRIPT [FLAGS]")
        out[label] = command
    return out


def cpu_seconds(command, bench, steps):
    """User + sys CPU seconds of one run of `command` (a fresh working directory: its runs/ go there)."""
    cmd = [sys.executable, *shlex.split(command), "--env-id", bench.env_id, "--total-timesteps", str(steps),
           "--seed", str(bench.seed)]
    with tempfile.TemporaryDirectory() as cwd:
        if "ppo_era.py" in command:
            cmd += ["--runs-dir", cwd]
        return timed_run(cmd, cwd=cwd, env=dict(os.environ, PYTHONPATH=str(REPO)))[1]


def main(argv=None):
    bench = tyro.cli(BenchArgs, args=argv)
    small, large = bench.steps
    if not 0 < small < large:
        raise ValueError(f"--steps must be two budgets 0 < small < large, got {bench.steps}")
    commands = variants(bench)
    per_1000, whole = {k: [] for k in commands}, {k: [] for k in commands}
    print(f"{bench.env_id}, {bench.rounds} rounds, budgets {small} and {large} env steps, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average {os.getloadavg()[0]:.1f}",
          flush=True)
    for r in range(bench.rounds):
        order = list(commands) if r % 2 == 0 else list(commands)[::-1]
        for label in order:
            a, b = cpu_seconds(commands[label], bench, small), cpu_seconds(commands[label], bench, large)
            per_1000[label].append(1000 * (b - a) / (large - small))
            whole[label].append(b)
            print(f"round {r + 1} {label}: {per_1000[label][-1]:.3f} CPU-s per 1,000 steps, {b:.1f} CPU-s for "
                  f"{large} steps", flush=True)
    ref = next(iter(commands))
    print(f"\n{time.strftime('%Y-%m-%d')}, {bench.env_id}, medians over {bench.rounds} rounds "
          f"(load average now {os.getloadavg()[0]:.1f}); the ratio is the median of the per-round ratios:\n")
    print(f"| variant | CPU-s per 1,000 env steps | / {ref} | CPU-s, whole run of {large} steps |")
    print("|---|---|---|---|")
    for label in commands:
        ratio = statistics.median(a / b for a, b in zip(per_1000[label], per_1000[ref]))
        print(f"| {label} | {statistics.median(per_1000[label]):.3f} | {ratio:.3f} | {statistics.median(whole[label]):.1f} |")
    return {label: statistics.median(v) for label, v in per_1000.items()}


if __name__ == "__main__":
    main()
