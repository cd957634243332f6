"""Benchmark grpo_era.py on `tiny` + `parity` on CPU: GRPO vs ERA, through the script's command line only.

1. Learning figures over a few seeds: token entropy, accuracy and distinct correct answers per group of 8 vs
   optimizer steps (from the tensorboard logs), then a diversity probe of each final policy (its saved
   policy_<step>/ directory, loaded with transformers): 256 samples per prompt digit, the number of distinct correct
   answers (of 25 possible) and the mean entropy of the two answer tokens.
2. ERA's extra time per update: both variants run the same short job, interleaved, several times; the median of
   the logged update-phase time (`perf/update_time`, rollout excluded) is compared.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_grpo_era.py --seeds 1 2 3 --total-steps 500
"""
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
import tyro
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class BenchArgs:
    seeds: Tuple[int, ...] = (1, 2, 3)
    """seeds of the learning runs"""
    total_steps: int = 500
    """optimizer steps per learning run"""
    learning_rate: float = 1e-3
    """AdamW learning rate of the tiny model"""
    omega_low: float = 1.4
    """ERA ω_low for this tiny task (a diverse correct policy has 1.61 nats per answer token; default 0.45)"""
    report_every: int = 50
    """table rows every N steps (values averaged over the N steps up to the row and over seeds)"""
    probe_samples: int = 256
    """samples per prompt digit in the final diversity probe"""
    timing_steps: int = 40
    """optimizer steps per timing run"""
    timing_repeats: int = 5
    """interleaved timing runs per variant"""
    learning: bool = True
    """run part 1 (the learning figures); --no-learning runs only the timings"""
    out_dir: str = ""
    """where the runs go (default: a temporary folder)"""


def read_scalars(run_dir, tag):
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return np.array([e.value for e in acc.Scalars(tag)])


def run(bench, out, seed, era, steps, tag=""):
    """One grpo_era.py run through its command line; returns its run directory and wall time (s)."""
    runs_dir = os.path.join(out, f"{'era' if era else 'grpo'}{tag}_s{seed}")
    cmd = [sys.executable, os.path.join(ROOT, "grpo_era.py"), "--no-cuda", "--seed", str(seed),
           "--era" if era else "--no-era", "--omega-low", str(bench.omega_low), "--total-steps", str(steps),
           "--learning-rate", str(bench.learning_rate), "--runs-dir", runs_dir, "--save-every", "0"]
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    (run_dir,) = [os.path.join(runs_dir, d) for d in os.listdir(runs_dir)]
    return run_dir, time.time() - t0


@torch.no_grad()
def diversity_probe(policy_dir, n):
    """Distinct correct answers per prompt digit (of 25) and mean entropy of the two answer tokens, sampled from
    the saved policy at temperature 1 with plain transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils.logging import disable_progress_bar

    disable_progress_bar()
    model, tok = AutoModelForCausalLM.from_pretrained(policy_dir), AutoTokenizer.from_pretrained(policy_dir)
    distinct, entropy = [], []
    for d in range(10):
        prompt = torch.tensor([tok(f"{d}=", add_special_tokens=False)["input_ids"]])
        out = model.generate(prompt.expand(n, -1), attention_mask=torch.ones(n, prompt.shape[1], dtype=torch.long),
                             do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=2, min_new_tokens=2,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
        answers = tok.batch_decode(out.sequences[:, prompt.shape[1]:])
        distinct.append(len({a for a in answers if a.isdigit() and all(int(c) % 2 == d % 2 for c in a)}))
        logp = torch.stack(out.logits, 1).log_softmax(-1)
        entropy.append(-(logp.exp() * logp).sum(-1).mean().item())
    return float(np.mean(distinct)), float(np.mean(entropy))


def print_learning(curves, probes, bench):
    w = bench.report_every
    print(f"\nmean over seeds of the {w} steps up to each row (entropy in nats; distinct correct of 8 per group)")
    print(f"{'step':>6} | {'GRPO entropy':>12} {'ERA entropy':>11} | {'GRPO acc':>8} {'ERA acc':>7} | "
          f"{'GRPO distinct':>13} {'ERA distinct':>12}")
    for end in range(w, bench.total_steps + 1, w):
        row = []
        for tag in ("charts/token_entropy", "charts/accuracy", "charts/distinct_correct_per_group"):
            for name in ("GRPO", "ERA"):
                row.append(np.mean([c[end - w: end].mean() for c in curves[(name, tag)]]))
        print(f"{end:>6} | {row[0]:>12.3f} {row[1]:>11.3f} | {row[2]:>8.3f} {row[3]:>7.3f} | "
              f"{row[4]:>13.2f} {row[5]:>12.2f}")
    print(f"\nfinal policies, {bench.probe_samples} samples per digit (mean ± std over seeds):")
    for name in ("GRPO", "ERA"):
        p = np.array(probes[name])
        print(f"  {name:4s}: distinct correct answers {p[:, 0].mean():.1f} ± {p[:, 0].std():.1f} of 25, "
              f"answer-token entropy {p[:, 1].mean():.3f} ± {p[:, 1].std():.3f} (uniform over 5 digits: 1.609)")


if __name__ == "__main__":
    bench = tyro.cli(BenchArgs)
    torch.set_num_threads(1)
    out = bench.out_dir or tempfile.mkdtemp(prefix="bench_grpo_era_")
    print(f"tiny + parity, CPU, batch 64 (8 prompts x 8), lr {bench.learning_rate}, ERA omega_low "
          f"{bench.omega_low} omega_high 3.0 k 2, seeds {bench.seeds}, {bench.total_steps} steps; runs in {out}")

    # 1. learning figures
    if bench.learning:
        curves, probes = {}, {}
        for seed in bench.seeds:
            for era in (False, True):
                run_dir, wall = run(bench, out, seed, era, bench.total_steps)
                name = "ERA" if era else "GRPO"
                for tag in ("charts/token_entropy", "charts/accuracy", "charts/distinct_correct_per_group"):
                    curves.setdefault((name, tag), []).append(read_scalars(run_dir, tag))
                probes.setdefault(name, []).append(diversity_probe(os.path.join(run_dir, f"policy_{bench.total_steps}"),
                                                                   bench.probe_samples))
                print(f"  seed {seed} {name}: {wall:.0f} s, probe distinct/25 {probes[name][-1][0]:.1f}, "
                      f"entropy {probes[name][-1][1]:.3f}", flush=True)
        print_learning(curves, probes, bench)

    # 2. ERA's extra time per update (same seed: identical first rollouts; rollout time excluded)
    if bench.timing_repeats:
        times = {"GRPO": [], "ERA": []}
        for rep in range(bench.timing_repeats):
            for era in (False, True):
                run_dir, _ = run(bench, out, 100 + rep, era, bench.timing_steps, tag="_timing")
                times["ERA" if era else "GRPO"].append(np.median(read_scalars(run_dir, "perf/update_time")[2:]))
        g, e = np.median(times["GRPO"]), np.median(times["ERA"])
        print(f"\nupdate time per step, tiny model (median of {bench.timing_repeats} interleaved runs x "
              f"{bench.timing_steps} steps): GRPO {1e3 * g:.1f} ms, ERA {1e3 * e:.1f} ms, ratio {e / g:.3f} "
              f"({100 * (e / g - 1):+.1f} %); per run GRPO {np.round(1e3 * np.array(times['GRPO']), 1)} ms, "
              f"ERA {np.round(1e3 * np.array(times['ERA']), 1)} ms")
