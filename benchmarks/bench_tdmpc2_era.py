"""Benchmark tdmpc2_era.py: ERA vs TD-MPC2 (--no-era) in one process.

    python benchmarks/bench_tdmpc2_era.py                      # time per update and per planned action
    python benchmarks/bench_tdmpc2_era.py --learn-steps 4000   # plus a short learning run of both variants

Timing: the same world-model sizes, buffer contents and seeds for both variants; ERA and baseline are
measured in alternating rounds so that load from other processes hits both alike; the median round counts.
Learning: `tdmpc2_era.main` on --env-id for each variant in turn, eval/episodic_return read back from the
event files and printed as a table of return vs agent steps.
"""
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import torch  # noqa: E402
import tyro  # noqa: E402

import tdmpc2_era as T  # noqa: E402


@dataclass
class BenchArgs:
    model_size: int = 5
    """world-model preset timed"""
    obs_dim: int = 223
    """observation size of the timed model (223, 38: dm_control dog)"""
    act_dim: int = 38
    """action size of the timed model"""
    updates: int = 5
    """updates per round"""
    actions: int = 3
    """planned actions per round"""
    rounds: int = 5
    """alternating ERA/baseline rounds"""
    threads: int = 1
    """torch threads"""
    cuda: bool = False
    """time on CUDA"""
    timing: bool = True
    """run the timing part"""
    learn_steps: int = 0
    """agent steps of the learning run per variant (0: no learning run)"""
    env_id: str = "dm_control/cartpole-swingup-v0"
    """task of the learning run"""
    learn_model_size: int = 1
    """model size of the learning run"""
    learn_seed_steps: Optional[int] = 1000
    """seed steps of the learning run (None: the official max(1000, 5 x episode length))"""
    learn_eval_every: int = 500
    """eval period of the learning run (agent steps)"""
    learn_eval_episodes: int = 2
    """eval episodes per evaluation"""
    runs_dir: str = "runs_bench"
    """where the learning runs write"""
    seed: int = 1
    """seed"""


def time_variants(b):
    device = torch.device("cuda" if b.cuda else "cpu")
    agents, buffers = {}, {}
    for era in (True, False):
        args = T.Args(model_size=b.model_size, era=era, cuda=b.cuda, seed=b.seed)
        T.check_args(args)
        torch.manual_seed(b.seed)
        agents[era] = T.Agent(b.obs_dim, b.act_dim, args, device, 0.99)
        buf = T.EpisodeBuffer(5, 500, b.obs_dim, b.act_dim, args, device)
        g = torch.Generator().manual_seed(b.seed)
        buf.obs.normal_(generator=g)
        buf.action.uniform_(-1, 1, generator=g)
        buf.reward.uniform_(0, 1, generator=g)
        buf.num_eps = 4
        buffers[era] = buf
    obs = torch.randn(b.obs_dim, device=device)
    sync = torch.cuda.synchronize if b.cuda else (lambda: None)

    def run(era):
        ag = agents[era]
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(b.updates):
            info = ag.update(buffers[era])
        info["total_loss"].item()
        sync()
        w1, c1 = time.perf_counter(), time.process_time()
        for i in range(b.actions):
            ag.act(obs, t0=i == 0).cpu()
        sync()
        w2, c2 = time.perf_counter(), time.process_time()
        return dict(update_wall=(w1 - w0) / b.updates, update_cpu=(c1 - c0) / b.updates,
                    plan_wall=(w2 - w1) / b.actions, plan_cpu=(c2 - c1) / b.actions)

    for era in (True, False):  # warm-up
        run(era)
    res = {True: [], False: []}
    for _ in range(b.rounds):
        for era in (True, False):
            res[era].append(run(era))
    out = {era: {k: statistics.median(r[k] for r in res[era]) for k in res[era][0]} for era in (True, False)}
    name = {True: "ERA", False: "TD-MPC2"}
    print(f"model size {b.model_size}, obs {b.obs_dim}, actions {b.act_dim}, device {device}, "
          f"threads {torch.get_num_threads()}, {agents[True].iterations} MPPI iterations, median of {b.rounds} "
          f"alternating rounds ({b.updates} updates + {b.actions} planned actions each); ms, wall / process CPU")
    for era in (True, False):
        o = out[era]
        print(f"  {name[era]:8s} update {o['update_wall'] * 1e3:8.2f} / {o['update_cpu'] * 1e3:8.2f}   "
              f"planned action {o['plan_wall'] * 1e3:8.2f} / {o['plan_cpu'] * 1e3:8.2f}")
    r = {k: out[True][k] / out[False][k] for k in out[True]}
    print(f"  ratio ERA/TD-MPC2: update {r['update_wall']:.3f} (cpu {r['update_cpu']:.3f}), "
          f"planned action {r['plan_wall']:.3f} (cpu {r['plan_cpu']:.3f})", flush=True)
    return out


def read_eval(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(run_dir)
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars("eval/episodic_return")]


def learn(b):
    curves = {}
    for era in (True, False):
        args = T.Args(env_id=b.env_id, model_size=b.learn_model_size, era=era, cuda=b.cuda, seed=b.seed,
                      total_timesteps=b.learn_steps, seed_steps=b.learn_seed_steps, eval_every=b.learn_eval_every,
                      eval_episodes=b.learn_eval_episodes, runs_dir=b.runs_dir, save_every=0, log_every=250)
        t0 = time.time()
        run_dir = T.main(args)
        curves[era] = read_eval(run_dir)
        print(f"{'ERA' if era else 'TD-MPC2'}: {b.learn_steps} agent steps in {time.time() - t0:.0f} s, {run_dir}",
              flush=True)
    print(f"\n{b.env_id}, model size {b.learn_model_size}: eval return (mean of {b.learn_eval_episodes} episodes)")
    print(f"{'agent steps':>12s} {'env steps':>10s} {'ERA':>8s} {'TD-MPC2':>8s}")
    base = dict(curves[False])
    for step, ret in curves[True]:
        print(f"{step:12d} {2 * step:10d} {ret:8.1f} {base.get(step, float('nan')):8.1f}")


if __name__ == "__main__":
    b = tyro.cli(BenchArgs)
    torch.set_num_threads(b.threads)
    if b.timing:
        time_variants(b)
    if b.learn_steps:
        learn(b)
