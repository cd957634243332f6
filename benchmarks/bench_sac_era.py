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

With `--cleanrl PATH` CleanRL's `sac_continuous_action.py` runs the same work as a third variant, timed the same
way (it has 256-wide networks and one update per step, so `--hidden-dim 256 --utd-ratio 1`), e.g. in its own venv
at its pinned gymnasium 0.29 (Hopper-v4; ours runs Hopper-v5). The venv used for README's figures:

    git clone https://github.com/vwxyzjn/cleanrl && git -C cleanrl checkout fe8d8a0
    python -m venv --system-site-packages cleanrl-venv   # torch, tyro, tensorboard from this project's install
    cleanrl-venv/bin/pip install gymnasium==0.29.1 mujoco==2.3.3 stable-baselines3==2.1.0   # CleanRL's pins
    OMP_NUM_THREADS=1 python benchmarks/bench_sac_era.py --env-id Hopper-v5 --steps 3000 --learning-starts 1000 \
        --hidden-dim 256 --utd-ratio 1 --cleanrl cleanrl/cleanrl/sac_continuous_action.py \
        --cleanrl-python cleanrl-venv/bin/python --cleanrl-env-id Hopper-v4
"""
import math
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tyro
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from timing import timed_run  # benchmarks/timing.py


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
    cleanrl: str | None = None
    """also time CleanRL's sac_continuous_action.py at this path (needs --hidden-dim 256 --utd-ratio 1)"""
    cleanrl_python: str = sys.executable
    """the interpreter (venv) that runs --cleanrl"""
    cleanrl_env_id: str | None = None
    """CleanRL's env id (default: --env-id), e.g. Hopper-v4 for its pinned gymnasium 0.29"""


def last_sps(runs_dir):
    acc = EventAccumulator(str(next(Path(runs_dir).rglob("events.out.tfevents.*")).parent))
    acc.Reload()
    return acc.Scalars("charts/SPS")[-1].value if "charts/SPS" in acc.Tags()["scalars"] else math.nan  # CleanRL: every 100


def main(bench):
    variants = [("ERA", ["--era"]), ("--no-era", ["--no-era"])]
    variants += [(f"{name} --compile", flags + ["--compile"]) for name, flags in variants] if bench.compile else []
    common = [sys.executable, bench.script, "--env-id", bench.env_id, "--learning-starts", bench.learning_starts,
              "--batch-size", bench.batch_size, "--hidden-dim", bench.hidden_dim, "--utd-ratio", bench.utd_ratio,
              "--eval-every", 0, "--eval-episodes", 1, "--save-every", 0, "--log-every", bench.steps,
              "--cuda" if bench.cuda else "--no-cuda"]
    updates = (bench.steps - bench.learning_starts - 1) * bench.utd_ratio
    if bench.cleanrl:  # it has no --hidden-dim/--utd-ratio/eval flags
        if (bench.hidden_dim, bench.utd_ratio, bench.cuda) != (256, 1, False):
            sys.exit("error: --cleanrl: CleanRL's SAC is 256 wide with one update per step on this CPU run: "
                     "add --hidden-dim 256 --utd-ratio 1 --no-cuda")
        variants.append(("CleanRL", [bench.cleanrl_python, os.path.abspath(bench.cleanrl), "--env-id",
                                     bench.cleanrl_env_id or bench.env_id, "--learning-starts", bench.learning_starts,
                                     "--batch-size", bench.batch_size, "--seed", 1, "--no-cuda"]))
        here = os.path.dirname(os.path.abspath(bench.cleanrl))  # cleanrl_utils/: beside the script or one level up
        cleanrl_env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.path.dirname(here)])}
    results = {name: [] for name, _ in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(bench.rounds):
            for name, flags in variants if r % 2 == 0 else variants[::-1]:
                runs = os.path.join(tmp, f"{r}{name}")
                if name == "CleanRL":  # its runs/ go to its working directory
                    for d in (runs, runs + "full"):
                        os.makedirs(d)
                    cpu = lambda steps, d: timed_run(flags + ["--total-timesteps", steps], cwd=d, env=cleanrl_env)[1]
                else:
                    cpu = lambda steps, d: timed_run(common + flags + ["--total-timesteps", steps, "--runs-dir", d])[1]
                full, warmup = cpu(bench.steps, runs + "full"), cpu(bench.learning_starts + 1, runs)
                results[name].append((full, 1000 * (full - warmup) / updates, last_sps(runs + "full")))
                print(f"round {r + 1}: {name}: {full:.1f} CPU s, {results[name][-1][1]:.1f} ms/update", flush=True)
    print(f"\n{bench.script} on {bench.env_id}: {bench.steps} steps ({bench.learning_starts} random), batch {bench.batch_size}, "
          f"{bench.hidden_dim} wide, {bench.utd_ratio} updates/step, {'cuda' if bench.cuda else 'cpu'}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, medians of {bench.rounds} rounds\n")
    if bench.cleanrl:
        print(f"CleanRL: {bench.cleanrl} on {bench.cleanrl_env_id or bench.env_id} with {bench.cleanrl_python}\n")
    print("| variant | run CPU s | ms/update | SPS |\n|---|---|---|---|")
    medians = {name: [statistics.median(x) for x in zip(*rows)] for name, rows in results.items()}
    for name, (cpu, ms, sps) in medians.items():
        print(f"| {name} | {cpu:.1f} | {ms:.1f} | {sps:.0f} |")
    print(f"\nERA / --no-era, CPU per update: {medians['ERA'][1] / medians['--no-era'][1]:.3f}")
    if bench.cleanrl:
        for name in ("--no-era", "ERA"):
            ratios = [a[1] / b[1] for a, b in zip(results[name], results["CleanRL"])]
            print(f"{name} / CleanRL, CPU per update: {medians[name][1] / medians['CleanRL'][1]:.3f} (per round: "
                  f"{', '.join(f'{x:.2f}' for x in ratios)}); whole run: {medians[name][0] / medians['CleanRL'][0]:.3f}")


if __name__ == "__main__":
    main(tyro.cli(Args))
