"""Cost of sac_era.py, through its command line only: CPU seconds of whole runs, ERA vs --no-era (and --compile).

    OMP_NUM_THREADS=1 python benchmarks/bench_sac_era.py                       # the defaults: 512 wide, 2 updates/step
    OMP_NUM_THREADS=1 python benchmarks/bench_sac_era.py --env-id Hopper-v5 --steps 3000 --learning-starts 1000 \
        --batch-size 256 --hidden-dim 256 --utd-ratio 1 --rounds 3              # issue 13's CleanRL-sized workload

Each round runs every variant once, in an order that alternates between rounds (the machine may be shared). Per
variant, the medians over rounds of:

* `run CPU s`: user + system CPU seconds of the whole process (startup, random warm-up, training, final
  evaluation), from the OS;
* `ms/update`: CPU milliseconds per gradient update, i.e. (run CPU − CPU of the same run stopped right after its
  random warm-up steps) / updates; it includes the env step and the action of each training step;
* `SPS`: the `charts/SPS` the run logged at its last step (agent steps per wall second).
"""
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tyro
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator



@dataclass
class Args:
    script: str = str(Path(__file__).resolve().parent.parent / "sac_era.py")
    """the script to time (another version of sac_era.py, say, for a before/after comparison)"""
    env_id: str = "dm_control/cheetah-run-v0"
    """environment of every run"""
    steps: int = 1500
    """agent steps per run"""
    learning_starts: int = 500
    """random warm-up steps; the run makes (steps - learning_starts) x utd_ratio updates"""
    batch_size: int = 256
    """sac_era.py --batch-size"""
    hidden_dim: int = 512
    """sac_era.py --hidden-dim"""
    utd_ratio: int = 2
    """sac_era.py --utd-ratio"""
    rounds: int = 3
    """runs per variant; medians are reported"""
    compile: bool = False
    """also time the --compile runs of both variants"""
    cuda: bool = False
    """run on the GPU (CPU seconds then measure the host side only)"""


def cpu_seconds_of(cmd):
    """(user + system CPU seconds of the finished subprocess, its CompletedProcess)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-3000:]}")
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def last_sps(runs_dir):
    acc = EventAccumulator(str(next(Path(runs_dir).rglob("events.out.tfevents.*")).parent))
    acc.Reload()
    return acc.Scalars("charts/SPS")[-1].value


def main(bench):
    variants = [("ERA", ["--era"]), ("--no-era", ["--no-era"])]
    variants += [(f"{name} --compile", flags + ["--compile"]) for name, flags in variants] if bench.compile else []
    common = [sys.executable, bench.script, "--env-id", bench.env_id, "--learning-starts", bench.learning_starts,
              "--batch-size", bench.batch_size, "--hidden-dim", bench.hidden_dim, "--utd-ratio", bench.utd_ratio,
              "--eval-every", 0, "--eval-episodes", 1, "--save-every", 0, "--log-every", bench.steps,
              "--cuda" if bench.cuda else "--no-cuda"]
    updates = (bench.steps - bench.learning_starts - 1) * bench.utd_ratio
    results = {name: [] for name, _ in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(bench.rounds):
            for name, flags in variants if r % 2 == 0 else variants[::-1]:
                runs = os.path.join(tmp, f"{r}{name}")
                cmd = [str(c) for c in common + flags]
                full = cpu_seconds_of(cmd + ["--total-timesteps", str(bench.steps), "--runs-dir", runs + "full"])
                warmup = cpu_seconds_of(cmd + ["--total-timesteps", str(bench.learning_starts + 1), "--runs-dir", runs])
                results[name].append((full, 1000 * (full - warmup) / updates, last_sps(runs + "full")))
                print(f"round {r + 1}: {name}: {full:.1f} CPU s, {results[name][-1][1]:.1f} ms/update", flush=True)
    print(f"\n{bench.script} on {bench.env_id}: {bench.steps} steps ({bench.learning_starts} random), batch {bench.batch_size}, "
          f"{bench.hidden_dim} wide, {bench.utd_ratio} updates/step, {'cuda' if bench.cuda else 'cpu'}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, medians of {bench.rounds} rounds\n")
    print("| variant | run CPU s | ms/update | SPS |\n|---|---|---|---|")
    medians = {name: [statistics.median(x) for x in zip(*rows)] for name, rows in results.items()}
    for name, (cpu, ms, sps) in medians.items():
        print(f"| {name} | {cpu:.1f} | {ms:.1f} | {sps:.0f} |")
    print(f"\nERA / --no-era, CPU per update: {medians['ERA'][1] / medians['--no-era'][1]:.3f}")


if __name__ == "__main__":
    main(tyro.cli(Args))
