"""Benchmark ppo_era.py: cost of ERA (SPS, ERA vs --no-era, one process) and return vs steps for both.

    python benchmarks/bench_ppo_era.py --mode sps                       # SPS ratio + policy forward/backward timing
    python benchmarks/bench_ppo_era.py --mode learn --env-ids HalfCheetah-v5 Hopper-v5 --seeds 1 2 \
        --total-timesteps 100000                                        # deterministic-eval return vs steps

Both variants run in THIS process, alternating order each round, on one torch thread, so machine load hits
them alike. Learning results are also written as JSON (--out) for later tables.
"""
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import List, Literal

import numpy as np
import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ppo_era  # noqa: E402


@dataclass
class BenchArgs:
    mode: Literal["sps", "learn", "both"] = "sps"
    """sps: speed of ERA vs --no-era; learn: return vs steps; both"""
    env_ids: List[str] = field(default_factory=lambda: ["HalfCheetah-v5", "Hopper-v5"])
    """envs (sps uses the first)"""
    seeds: List[int] = field(default_factory=lambda: [1, 2])
    """seeds for learn mode"""
    total_timesteps: int = 100000
    """learn mode: steps per run"""
    eval_every: int = 10
    """learn mode: iterations (of 2048 steps) between deterministic evaluations"""
    eval_episodes: int = 5
    """learn mode: episodes per evaluation"""
    sps_timesteps: int = 8192
    """sps mode: steps per timed run (4 iterations of CleanRL's 2048-step rollout)"""
    rounds: int = 3
    """sps mode: ERA / no-ERA pairs, order alternating"""
    runs_dir: str = "/tmp/bench_ppo_era/runs"
    """where the runs' tensorboard logs go"""
    out: str = "/tmp/bench_ppo_era/learn.json"
    """learn mode: results file"""


def time_policy(reps=200, blocks=20, obs_dim=17, act_dim=6, batch=64):
    """CPU seconds per minibatch forward+backward of get_action_and_value (the update's policy cost), ERA and
    no-ERA interleaved in blocks so both see the same machine state."""
    agents = {era: ppo_era.Agent(obs_dim, act_dim, ppo_era.Args(era=era)) for era in (True, False)}
    x, a = torch.randn(batch, obs_dim), torch.randn(batch, act_dim)
    cpu = {True: 0.0, False: 0.0}
    for block in range(blocks + 1):
        for era, agent in agents.items():
            start = time.process_time()
            for _ in range(reps):
                _, logprob, entropy, value = agent.get_action_and_value(x, a)
                (logprob.sum() + entropy.sum() + value.sum()).backward()
            if block:  # block 0 is warm-up
                cpu[era] += time.process_time() - start
    return {era: t / (reps * blocks) for era, t in cpu.items()}


def sps(bench):
    """Whole training runs, ERA and no-ERA alternating; SPS per wall second and per CPU second of this process
    (the latter is what to compare on a shared machine: other processes' load does not enter it)."""
    env_id = bench.env_ids[0]
    wall, cpu = {True: [], False: []}, {True: [], False: []}
    # warm-up run, not counted: the first run in a process pays lazy imports and allocator growth (~0.5-4 CPU-s)
    ppo_era.main(ppo_era.Args(env_id=env_id, total_timesteps=2048, eval_every=0, eval_episodes=1, save_every=0,
                              runs_dir=bench.runs_dir, cuda=False))
    for r in range(bench.rounds):
        for era in ([True, False] if r % 2 == 0 else [False, True]):
            args = ppo_era.Args(env_id=env_id, era=era, total_timesteps=bench.sps_timesteps, eval_every=0,
                                eval_episodes=1, save_every=0, runs_dir=bench.runs_dir, cuda=False, seed=r + 1)
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            out = ppo_era.main(args)
            steps = out["history"][-1]["global_step"]
            wall[era].append(steps / (time.perf_counter() - start_wall))
            cpu[era].append(steps / (time.process_time() - start_cpu))
            print(f"round {r} {'ERA   ' if era else 'no-ERA'} SPS wall {wall[era][-1]:.0f}  per CPU-s {cpu[era][-1]:.0f}",
                  flush=True)
    med = {k: {era: statistics.median(v[era]) for era in v} for k, v in [("wall", wall), ("cpu", cpu)]}
    print(f"\n{env_id}: {bench.sps_timesteps} steps/run (CleanRL sizes: 1 env, 2048-step rollouts, 10 epochs x 32 "
          f"minibatches), {bench.rounds} rounds, 1 torch thread, CPU; each run includes env creation and one "
          f"final evaluation episode")
    for k in ("wall", "cpu"):
        print(f"SPS per {k:4s} second, median: ERA {med[k][True]:.0f}  no-ERA {med[k][False]:.0f}  "
              f"ratio ERA/no-ERA {med[k][True] / med[k][False]:.3f}")
    t = time_policy()
    print(f"policy forward+backward per 64-sample minibatch (CPU time): ERA {t[True] * 1e6:.1f} us  "
          f"no-ERA {t[False] * 1e6:.1f} us  ratio {t[True] / t[False]:.3f}")


def learn(bench):
    results = []
    if os.path.exists(bench.out):
        results = json.load(open(bench.out))
    done = {(r["env_id"], r["seed"], r["era"]) for r in results}
    for env_id in bench.env_ids:
        for seed in bench.seeds:
            for era in [True, False]:
                if (env_id, seed, era) in done:
                    continue
                args = ppo_era.Args(env_id=env_id, era=era, seed=seed, total_timesteps=bench.total_timesteps,
                                    eval_every=bench.eval_every, eval_episodes=bench.eval_episodes, save_every=10,
                                    runs_dir=bench.runs_dir, cuda=False)
                start = time.perf_counter()
                out = ppo_era.main(args)
                from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
                acc = EventAccumulator(out["run_dir"])
                acc.Reload()
                train = [(e.step, e.value) for e in acc.Scalars("charts/episodic_return")]
                results.append({"env_id": env_id, "seed": seed, "era": era, "eval": out["eval_returns"],
                                 "train_last10": float(np.mean([v for _, v in train[-10:]])),
                                 "wall_s": time.perf_counter() - start, "run_dir": out["run_dir"]})
                os.makedirs(os.path.dirname(bench.out), exist_ok=True)
                json.dump(results, open(bench.out, "w"), indent=1)
                print(f"{env_id} seed {seed} {'ERA' if era else 'no-ERA'}: eval {out['eval_returns']}", flush=True)
    print_table(results)


def print_table(results):
    for env_id in sorted({r["env_id"] for r in results}):
        print(f"\n{env_id}: deterministic eval return (mean over seeds [per seed])")
        for era in [True, False]:
            runs = [r for r in results if r["env_id"] == env_id and r["era"] == era]
            if not runs:
                continue
            steps = [s for s, _ in runs[0]["eval"]]
            cells = []
            for i, step in enumerate(steps):
                vals = [r["eval"][i][1] for r in runs if len(r["eval"]) > i]
                cells.append(f"{step // 1000}k: {np.mean(vals):.0f} [{' '.join(f'{v:.0f}' for v in vals)}]")
            train = [r["train_last10"] for r in runs]
            print(f"  {'ERA   ' if era else 'no-ERA'} " + " | ".join(cells)
                  + f" | train return, last 10 episodes: {np.mean(train):.0f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    bench = tyro.cli(BenchArgs)
    if bench.mode in ("sps", "both"):
        sps(bench)
    if bench.mode in ("learn", "both"):
        learn(bench)
