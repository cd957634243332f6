"""Cost of every script at a fixed amount of work, ERA against --no-era, eager against --compile, in one table.

    OMP_NUM_THREADS=1 python benchmarks/bench_speed.py                      # all five scripts on CPU
    OMP_NUM_THREADS=1 python benchmarks/bench_speed.py --scripts sac ppo --rounds 3 --no-compile
    OMP_NUM_THREADS=1 python benchmarks/bench_speed.py --paired --no-compile --rounds 5  # ERA/--no-era, drift cancelled
    python benchmarks/bench_speed.py --cuda --scripts sac tdmpc2            # on a GPU: wall seconds instead

Each cell runs the script through its command line, in a subprocess, at two budgets of the same configuration
(WORK below: the script's defaults where a CPU affords them). Its cost per 1,000 units is the difference of the
two runs' cost divided by the difference in units, so start-up, imports, compilation, warm-up steps and the final
evaluation cancel out. The unit is what the script's loop repeats: SAC gradient updates (critics + actor +
temperature), PPO env steps, TD-MPC2 agent steps (one planning + one update each), ResNet training images, GRPO
steps. On CPU the cost is CPU seconds (user + sys of the run and its children; the load of other processes does not
enter it); with --cuda it is wall seconds. The variants alternate inside each round and the table gives medians
over rounds; the ERA/--no-era ratio is the median of the per-round ratios. Only the scripts' command lines are used.

Runs one after another see the machine drift (here ±15 % between runs of the same work: three 3-7-round PPO
measurements gave ERA/--no-era medians of 1.15, 1.10 and 0.97); with --paired, ERA and --no-era run at the same
time, each pinned to its own core, so the drift hits both alike (10 paired PPO rounds: 0.985-1.068, median 1.026).
The absolute figures of paired runs include the contention of two processes for memory and cache, so compare them
only with each other.
"""
import contextlib
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

import torch
import tyro

from timing import timed_run, timed_runs  # benchmarks/timing.py

REPO = Path(__file__).resolve().parent.parent

# script: (unit, flags of every run, budget flag, the two budgets, units done at a budget)
WORK = {
    "sac": ("update", "--env-id Hopper-v5 --learning-starts 100 --eval-episodes 1 --eval-every 0 --save-every 0",
            "--total-timesteps", (300, 1100), lambda b: 2 * (b - 100)),  # the defaults: 512 wide, 2 updates per step
    "ppo": ("env step", "--env-id Hopper-v5 --eval-episodes 1 --eval-every 0 --save-every 0",
            "--total-timesteps", (4096, 20480), lambda b: b),
    "tdmpc2": ("agent step", "--env-id dm_control/cartpole-swingup-v0 --model-size 1 --seed-steps 500 "  # runs end
               "--eval-every 0 --save-every 0", "--total-timesteps", (1000, 1500), lambda b: b),  # with an episode
    "resnet": ("image", "--dataset digits --num-workers 0 --eval-every 0 --save-every 0", "--epochs", (1, 5),
               lambda b: 1437 * b),  # recipe small (resnet8, batch 64); the final evaluation cancels out
    "grpo": ("GRPO step", "--model-name tiny --dataset parity --batch-size 16 --num-generations 4 --save-every 0",
             "--total-steps", (2, 202), lambda b: b),
}


@dataclass
class Bench:
    scripts: Tuple[str, ...] = tuple(WORK)
    """which scripts (sac ppo tdmpc2 resnet grpo)"""
    rounds: int = 1
    """rounds; each runs every variant at both budgets, in alternating order"""
    compile: bool = True
    """also time --compile (ERA and --no-era)"""
    paired: bool = False
    """run ERA and --no-era at the same time, one per CPU core (swapped every round), instead of one after the other:
    the machine's drift then hits both alike and their ratio is far less noisy (CPU only; takes both cores)"""
    cuda: bool = False
    """run on the GPU (--cuda) and report wall seconds; default: --no-cuda and CPU seconds"""
    seed: int = 1
    """seed of every run"""
    extra: Tuple[str, ...] = ()
    """more flags for one script, each "SCRIPT=FLAGS", e.g. "tdmpc2=--model-size 5 --env-id dm_control/dog-run-v0"
    (appended after the defaults, so they override them)"""


def cost(bench, script, variants, budget):
    """[(CPU seconds, wall seconds)] of one run per variant (a list of flags), each in a fresh working directory that
    also holds its runs/ and its own torch.compile cache: every --compile run compiles cold, so compilation cancels in
    the difference of two runs (with the shared cache the second run could load what the first compiled, and the
    difference came out negative). One variant runs alone; two run at the same time, one per core (--paired)."""
    _, common, budget_flag, _, _ = WORK[script]
    with contextlib.ExitStack() as stack:
        cwds = [stack.enter_context(tempfile.TemporaryDirectory()) for _ in variants]
        cmds = [[sys.executable, str(REPO / f"{script}_era.py"), *shlex.split(common), *flags, budget_flag, str(budget),
                 "--seed", str(bench.seed), "--runs-dir", cwd, "--cuda" if bench.cuda else "--no-cuda"]
                for flags, cwd in zip(variants, cwds)]
        envs = [{**os.environ, "TORCHINDUCTOR_CACHE_DIR": os.path.join(cwd, "inductor")} for cwd in cwds]
        if len(cmds) == 1:
            return [timed_run(cmds[0], cwd=cwds[0], env=envs[0])[1:]]
        return timed_runs(cmds, sorted(os.sched_getaffinity(0))[:2], cwds, envs)  # the caller swaps the order each round


def main(argv=None):
    bench = tyro.cli(Bench, args=argv)
    extra: Dict[str, list] = {s: [] for s in WORK}
    for spec in bench.extra:
        script, _, flags = spec.partition("=")
        if script not in WORK:
            raise SystemExit(f"error: --extra {spec!r}: SCRIPT must be one of {', '.join(WORK)}")
        extra[script] += shlex.split(flags)
    if unknown := [s for s in bench.scripts if s not in WORK]:
        raise SystemExit(f"error: --scripts must be among {', '.join(WORK)} (got {' '.join(unknown)})")
    if bench.rounds < 1:
        raise SystemExit(f"error: --rounds must be >= 1 (got {bench.rounds})")
    variants = {"ERA": [], "--no-era": ["--no-era"]}
    if bench.compile:
        variants.update({"ERA --compile": ["--compile"], "--no-era --compile": ["--no-era", "--compile"]})
    if bench.paired and (bench.cuda or len(os.sched_getaffinity(0)) < 2):
        raise SystemExit("error: --paired runs two variants at once on two CPU cores: not with --cuda, and 2 cores needed")
    groups = [list(variants)[i:i + 2] for i in range(0, len(variants), 2)] if bench.paired else [[v] for v in variants]
    kind = "wall" if bench.cuda else "CPU"
    device = torch.cuda.get_device_name() if bench.cuda else f"{platform.processor() or platform.machine()} CPU"
    print(f"{time.strftime('%Y-%m-%d')}, {device}, {os.cpu_count()} cores, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, torch {torch.__version__}, {bench.rounds} round(s)"
          f"{', ERA and --no-era paired (at the same time, one per core)' if bench.paired else ''}", flush=True)
    per_1000 = {(s, v): [] for s in bench.scripts for v in variants}
    for r in range(bench.rounds):
        for s in bench.scripts:
            unit, _, _, budgets, units = WORK[s]
            for group in groups if r % 2 == 0 else [g[::-1] for g in groups[::-1]]:  # odd rounds: reversed, cores swapped
                runs = [cost(bench, s, [[*variants[v], *extra[s]] for v in group], b) for b in budgets]
                for v, (c0, w0), (c1, w1) in zip(group, *runs):
                    per_1000[s, v].append(1000 * ((w1 - w0) if bench.cuda else (c1 - c0)) / (units(budgets[1]) - units(budgets[0])))
                    print(f"round {r + 1} {s} {v}: {per_1000[s, v][-1]:.3f} {kind}-s per 1,000 {unit}s "
                          f"({kind} s of the two runs: {(w0, w1) if bench.cuda else (c0, c1)})", flush=True)
    print(f"\n{kind} seconds per 1,000 units of work (median over {bench.rounds} round(s); ratio: median of per-round "
          "ratios to the same script's ERA eager)\n")
    print(f"| script | unit | {' | '.join(variants)} | --no-era / ERA |" + (" ERA --compile / ERA |" if bench.compile else ""))
    print("|---|---|" + "---|" * len(variants) + "---|" + ("---|" if bench.compile else ""))
    for s in bench.scripts:
        ratio = lambda v: statistics.median(a / b for a, b in zip(per_1000[s, v], per_1000[s, "ERA"]))
        cells = " | ".join(f"{statistics.median(per_1000[s, v]):.3f}" for v in variants)
        print(f"| {s}_era.py | {WORK[s][0]} | {cells} | {ratio('--no-era'):.3f} |" +
              (f" {ratio('ERA --compile'):.3f} |" if bench.compile else ""))
    print("\nflags: " + "; ".join(f"{s}_era.py {WORK[s][1]} {shlex.join(extra[s])} {WORK[s][2]} "
                                  f"{WORK[s][3][0]}|{WORK[s][3][1]}" for s in bench.scripts))
    return {k: statistics.median(v) for k, v in per_1000.items()}


if __name__ == "__main__":
    main()
