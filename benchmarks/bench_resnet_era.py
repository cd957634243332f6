"""Benchmark for resnet_era.py, ERA and the baseline in one process.

1. Training throughput (images/s) of the same network with and without the ERA activation: synthetic batches
   already on the device (so the data loader does not hide the cost), rounds of ERA and baseline steps
   alternated, median per round. Target: ERA at most 3 % slower.
2. Learning on the real scikit-learn digits (offline): test accuracy, NLL, ECE and mean predictive entropy of
   the baseline, ERA, label smoothing 0.1 and dropout 0.1, over a few seeds (the paper's CIFAR-10 comparison,
   facts §4.4, in miniature).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_resnet_era.py --no-cuda
    python benchmarks/bench_resnet_era.py --arch resnet50 --batch-size 256 --skip-digits   # on a GPU
"""
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import tyro  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import resnet_era  # noqa: E402


@dataclass
class Args:
    cuda: bool = True
    """use CUDA when available"""
    arch: str = "resnet20"
    """network for the throughput part"""
    batch_size: int = 128
    """batch size for the throughput part"""
    num_classes: int = 10
    """classes for the throughput part (ERA's cost grows with the class count: try 1000)"""
    image_size: int = 32
    """image side for the throughput part"""
    steps: int = 10
    """training steps per timed round"""
    rounds: int = 5
    """timed rounds per variant (alternating ERA / baseline)"""
    compile: bool = False
    """torch.compile both variants"""
    skip_timing: bool = False
    """skip the throughput part"""
    skip_digits: bool = False
    """skip the digits learning part"""
    digits_arch: str = "resnet8"
    """network for the digits part"""
    digits_epochs: int = 15
    """training epochs per digits run"""
    seeds: int = 3
    """seeds per digits configuration"""


def throughput(args, device):
    amp = device.type == "cuda"
    torch.manual_seed(0)
    backbone = resnet_era.make_backbone(args.arch, args.num_classes, 0.0)
    models = {}
    for name, floor in (("baseline", None), ("era", 0.6)):
        copy = resnet_era.make_backbone(args.arch, args.num_classes, 0.0)
        copy.load_state_dict(backbone.state_dict())
        model = resnet_era.Classifier(copy, floor).to(device, memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        models[name] = (torch.compile(model) if args.compile else model, opt)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)

    def round_time(name):
        model, opt = models[name]
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for name in models:  # warm-up (compilation, allocator, cudnn)
        round_time(name)
    times = {name: [] for name in models}
    for _ in range(args.rounds):
        for name in models:
            times[name].append(round_time(name))
    ips = {name: args.steps * args.batch_size / statistics.median(t) for name, t in times.items()}
    print(f"throughput: {args.arch}, batch {args.batch_size}, {args.num_classes} classes, {args.image_size} px, "
          f"{device}, {torch.get_num_threads()} threads, amp={amp}, compile={args.compile}")
    for name in models:
        print(f"  {name:8s} {ips[name]:9.1f} images/s   (rounds: {', '.join(f'{t:.3f}' for t in times[name])} s)")
    print(f"  ERA / baseline time per step = {ips['baseline'] / ips['era']:.4f} "
          f"(ERA is {100 * (ips['baseline'] / ips['era'] - 1):+.2f} % slower; target <= 3 %)")

    # the activation alone, forward + backward, on the same logits shape
    z = torch.randn(args.batch_size, args.num_classes, device=device, requires_grad=True)
    for _ in range(3):
        resnet_era.softmax_entropy_floor(z, 0.6).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(100):
        resnet_era.softmax_entropy_floor(z, 0.6).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    era_ms = (time.perf_counter() - start) * 10
    step_ms = 1000 * statistics.median(times["baseline"]) / args.steps
    print(f"  softmax_entropy_floor forward+backward alone: {era_ms:.3f} ms/step vs {step_ms:.1f} ms per "
          f"baseline training step ({100 * era_ms / step_ms:.2f} %)")


def digits(args, cuda):
    configs = {"baseline": dict(era=False), "ERA H0=0.6": dict(era=True),
               "label smoothing 0.1": dict(era=False, label_smoothing=0.1), "dropout 0.1": dict(era=False, dropout=0.1)}
    results = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as runs_dir:
        for seed in range(1, args.seeds + 1):
            for name, flags in configs.items():
                run_args = resnet_era.Args(dataset="digits", arch=args.digits_arch, epochs=args.digits_epochs,
                                           batch_size=64, lr=0.05, warmup_epochs=1, num_workers=0, cuda=cuda,
                                           seed=seed, runs_dir=runs_dir, log_every=10**9, **flags)
                start = time.time()
                metrics = resnet_era.main(run_args)
                results[name].append(metrics)
                print(f"digits seed {seed} {name:20s} top-1 {metrics['top1']:.4f} nll {metrics['nll']:.4f} "
                      f"ece {metrics['ece']:.4f} entropy {metrics['entropy']:.3f} ({time.time() - start:.0f} s)",
                      flush=True)
    print(f"\ndigits ({args.digits_arch}, {args.digits_epochs} epochs, 1437 train / 360 test images, "
          f"{args.seeds} seeds; mean ± std over seeds)")
    print(f"| method | top-1 % | NLL | ECE % | mean entropy |\n|-|-|-|-|-|")
    for name, runs in results.items():
        def cell(key, scale=1.0, digits=3):
            values = [scale * r[key] for r in runs]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"
        print(f"| {name} | {cell('top1', 100, 2)} | {cell('nll', 1, 4)} | {cell('ece', 100, 2)} | {cell('entropy')} |")


if __name__ == "__main__":
    args = tyro.cli(Args)
    use_cuda = args.cuda and torch.cuda.is_available()
    if not args.skip_timing:
        throughput(args, torch.device("cuda" if use_cuda else "cpu"))
    if not args.skip_digits:
        digits(args, use_cuda)
