"""Cost of ERA in sac_era.py: SPS and milliseconds per gradient update, ERA vs --no-era, in one process.

    python benchmarks/bench_sac_era.py --env-id dm_control/cheetah-run-v0 --steps 1500 --repeats 3

Each repeat runs both variants back to back (order alternating) on the same env, seed and sizes, with updates
from step `learning_starts` on; the figures are medians over repeats. Prints a table and the ERA/baseline ratios.
"""
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sac_era  # noqa: E402


@dataclass
class BenchArgs:
    env_id: str = "dm_control/cheetah-run-v0"
    """environment both variants run on"""
    steps: int = 1500
    """agent steps per run"""
    learning_starts: int = 500
    """random steps before updates start (the timed updates are (steps - learning_starts) x utd_ratio)"""
    repeats: int = 3
    """runs per variant; medians are reported"""
    threads: int = 1
    """torch CPU threads"""
    cuda: bool = True
    """use CUDA when available"""


def main(bench):
    torch.set_num_threads(bench.threads)
    results = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(bench.repeats):
            for era in ((True, False) if repeat % 2 == 0 else (False, True)):
                args = sac_era.Args(env_id=bench.env_id, total_timesteps=bench.steps, era=era,
                                    learning_starts=bench.learning_starts, eval_every=0, save_every=0,
                                    runs_dir=tmp, cuda=bench.cuda, log_every=10**9)
                results[era].append(sac_era.main(args))
    device = "cuda" if bench.cuda and torch.cuda.is_available() else "cpu"
    print(f"\nsac_era.py on {bench.env_id}, {device}, {bench.steps} steps, {bench.repeats} repeats (medians)")
    print(f"{'variant':<10}{'SPS':>10}{'ms/update':>12}{'updates':>10}")
    rows = {}
    for era, name in ((True, "ERA"), (False, "baseline")):
        sps = statistics.median(r["sps"] for r in results[era])
        ms = statistics.median(r["update_ms"] for r in results[era])
        rows[era] = (sps, ms)
        print(f"{name:<10}{sps:>10.1f}{ms:>12.3f}{results[era][0]['num_updates']:>10}")
    print(f"ERA / baseline: time per update x{rows[True][1] / rows[False][1]:.3f}, "
          f"SPS x{rows[True][0] / rows[False][0]:.3f}  (target: time per update <= x1.03)")


if __name__ == "__main__":
    main(tyro.cli(BenchArgs))
