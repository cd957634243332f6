"""What ERA costs in resnet_era.py, measured through its command line only.

1. End to end: the same short training run with ERA and with --no-era, alternated over rounds; the training images
   per second of the last epoch (the logged perf/images_per_second: the training loop, data loading included,
   evaluation excluded), median over rounds. Target: ERA at most 3 % slower.
2. The activation alone: era_core.softmax_entropy_floor, forward + backward on a [batch, classes] logit tensor, per
   training step of the baseline (whose time is batch / images per second from part 1).

    OMP_NUM_THREADS=1 python benchmarks/bench_resnet_era.py --no-cuda                  # CPU: resnet20 on digits
    python benchmarks/bench_resnet_era.py --arch resnet50-cifar --batch-size 256 -- --dataset cifar10 --amp bf16

Everything after `--` is passed to every run of resnet_era.py, after the benchmark's own flags (the last one wins).
"""
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import torch
import tyro
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from era_core import softmax_entropy_floor  # noqa: E402  (the shared math module, not the script)


@dataclass
class Args:
    cuda: bool = True
    """run on CUDA when available"""
    arch: str = "resnet20"
    """--arch of the runs"""
    batch_size: int = 128
    """--batch-size of the runs"""
    epochs: int = 2
    """--epochs of each run; the last epoch is timed (the first one warms up)"""
    train_subset: int = 0
    """--train-subset of each run (0: the whole training set)"""
    num_workers: int = 0
    """--num-workers of the runs"""
    rounds: int = 3
    """runs per variant, ERA and baseline alternated"""
    classes: Tuple[int, ...] = (10, 1000)
    """class counts for the activation-alone timing"""


def images_per_second(args, era, extra, runs_dir):
    flags = ["--dataset", "digits", "--arch", args.arch, "--batch-size", args.batch_size, "--epochs", args.epochs,
             "--train-subset", args.train_subset, "--test-subset", 64, "--num-workers", args.num_workers,
             "--eval-every", 0, "--save-every", 0, "--log-every", 10**9, "--runs-dir", runs_dir,
             "--era" if era else "--no-era", "--cuda" if args.cuda else "--no-cuda", *extra]
    proc = subprocess.run([sys.executable, str(REPO / "resnet_era.py"), *map(str, flags)], capture_output=True,
                          text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"resnet_era.py failed:\n{proc.stderr[-3000:]}")
    (run_dir,) = [p for p in Path(runs_dir).iterdir() if p.is_dir()]
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return events.Scalars("perf/images_per_second")[-1].value


def activation_ms(batch, classes, device):
    z = torch.randn(batch, classes, device=device, requires_grad=True)
    for _ in range(3):
        softmax_entropy_floor(z, 0.6).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(100):
        softmax_entropy_floor(z, 0.6).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 10


def main():
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args, extra = tyro.cli(Args, args=argv[:split]), argv[split + 1:]
    ips = {"era": [], "baseline": []}
    for r in range(args.rounds):
        for variant in ("era", "baseline"):
            with tempfile.TemporaryDirectory() as runs_dir:
                ips[variant].append(images_per_second(args, variant == "era", extra, runs_dir))
            print(f"round {r + 1} {variant:8s} {ips[variant][-1]:9.1f} images/s", flush=True)
    era, base = statistics.median(ips["era"]), statistics.median(ips["baseline"])
    print(f"\nresnet_era.py {args.arch}, batch {args.batch_size}, {' '.join(extra) or 'digits'}: median of {args.rounds} "
          f"rounds: ERA {era:.1f}, baseline {base:.1f} images/s; ERA's time per image is {100 * (base / era - 1):+.2f} %")
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    step_ms = 1000 * args.batch_size / base
    for classes in args.classes:
        ms = activation_ms(args.batch_size, classes, device)
        print(f"softmax_entropy_floor forward + backward, [{args.batch_size}, {classes}] on {device}: {ms:.3f} ms "
              f"= {100 * ms / step_ms:.2f} % of a baseline training step ({step_ms:.0f} ms)")


if __name__ == "__main__":
    main()
