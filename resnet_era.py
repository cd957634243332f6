# docs and results: docs/resnet_era.md · the run skeleton shared by all five scripts: docs/skeleton.md
"""ResNet image classification with ERA (Entropy Regularizing Activation, arXiv 2510.08549), one file.

ERA is one parameter-free step after the network: era_core.softmax_entropy_floor maps the logits to logits whose
softmax has entropy >= --min-entropy for every image and keeps the class ranking; the loss, the predictions and every
metric use that output. `grep -v "# ERA" resnet_era.py > resnet.py` is the baseline (what --no-era runs).

    python resnet_era.py --dataset cifar10                              # recipe cifar: ResNet-50, CIFAR stem, 200 epochs
    torchrun --nproc-per-node 8 resnet_era.py --dataset imagenet --data-dir /data/imagenet   # recipe imagenet
    python resnet_era.py --dataset digits --no-cuda                     # recipe small: offline, a minute on a CPU core
    python resnet_era.py --resume runs/<run>/checkpoint.pt              # continue exactly
    python resnet_era.py --resume runs/<run>/checkpoint.pt --test-only  # evaluate: the metrics as one JSON line
"""
import contextlib
import importlib.util
import io
import json
import math
import os
import pickle
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import tyro
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.tensorboard import SummaryWriter
from torchvision.transforms import v2

from era_core import check_softmax_floor, softmax_entropy_floor  # ERA

SCRIPT = os.path.basename(__file__)


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment (torchrun process r seeds its dropout with seed + r)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`; off: cudnn.benchmark picks the fastest kernels"""
    cuda: bool = True
    """if toggled, cuda will be enabled when available"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases (pip install wandb)"""
    wandb_project_name: str = "era"
    """the wandb's project name"""
    wandb_entity: Optional[str] = None
    """the entity (team) of wandb's project"""
    runs_dir: str = "runs"
    """tensorboard logs and checkpoint.pt go to {runs_dir}/{run_name}/"""
    resume: Optional[str] = None
    """continue the run saved in this checkpoint.pt with its own flags (only --epochs, --cuda, --test-only may be given)"""
    save_every: int = 1000
    """write checkpoint.pt every N optimizer steps (0: only at the end and on a signal)"""
    eval_every: int = 1
    """evaluate on the test set every N epochs (0: only after the last one)"""
    log_every: int = 100
    """print the training loss every N optimizer steps"""
    compile: bool = False
    """torch.compile the network for training (opt-in)"""
    test_only: bool = False
    """with --resume: evaluate that checkpoint on the test set and print the metrics as one JSON line; no training"""
    num_workers: int = 4
    """data-loader processes per torchrun process (0: load in the main process); no batch depends on it"""

    # Algorithm specific arguments
    dataset: Literal["cifar10", "cifar100", "imagenet", "digits"] = "cifar10"
    """cifar10/100 (downloaded if missing), imagenet (ImageFolder), digits (scikit-learn's 8x8 digits at 32 px, offline)"""
    data_dir: str = "data"
    """where cifar-10-batches-py/ or cifar-100-python/ is (or gets downloaded), or ImageNet's train/ and val/"""
    train_subset: int = 0
    """train on the first N training images only (0: all)"""
    test_subset: int = 0
    """evaluate on the first N test images only (0: all)"""
    recipe: Literal["auto", "cifar", "imagenet", "small"] = "auto"
    """presets for the flags below that are not given (auto: cifar for cifar10/100, imagenet, small for digits)"""
    arch: Optional[Literal["resnet8", "resnet20", "resnet56", "resnet18-cifar", "resnet50-cifar", "resnet18", "resnet50"]] = None
    """resnet8/20/56: He et al.'s CIFAR ResNets; -cifar: 3x3 stride-1 stem, no max-pool; resnet18/50: torchvision's"""
    augmentation: Literal["crop-flip", "randaugment"] = "crop-flip"
    """crop-flip: random crop and flip; randaugment: also RandAugment (2 ops, magnitude 9) and random erasing (p 0.6)"""
    epochs: Optional[int] = None
    """training epochs"""
    batch_size: Optional[int] = None
    """global batch size, split evenly across torchrun processes"""
    lr: Optional[float] = None
    """peak learning rate of SGD with Nesterov momentum 0.9 (default: the recipe's lr per 256 images x batch size / 256)"""
    weight_decay: Optional[float] = None
    """weight decay of convolution and linear weights (norm weights and biases get none)"""
    warmup_epochs: Optional[int] = None
    """linear warm-up epochs before the cosine decay to 0 (both per optimizer step)"""
    label_smoothing: float = 0.0
    """label smoothing of the cross-entropy, in [0, 1)"""
    dropout: float = 0.0
    """dropout before the last linear layer, in [0, 1)"""
    amp: Literal["fp16", "bf16", "off"] = "fp16"
    """mixed precision on CUDA: float16 autocast with gradient scaling, or bfloat16 autocast; ignored on CPU"""

    # ERA
    era: bool = True  # ERA
    """ERA (default) or the baseline (--no-era)"""  # ERA
    min_entropy: float = 0.6  # ERA
    """ERA's entropy floor H0 in nats (official default 0.6); admissible (-0.0597, ln(classes) - 0.0597]"""  # ERA


# Presets for the flags not given: the official ERA command's CIFAR-10 numbers, torchvision's ImageNet reference numbers
# (for 200 epochs, the paper's), and a small one for CPU runs. The learning rate scales linearly with the global batch.
RECIPES = {
    "cifar": dict(arch="resnet50-cifar", epochs=200, batch_size=256, lr=0.05, weight_decay=2e-5, warmup_epochs=5),
    "imagenet": dict(arch="resnet50", epochs=200, batch_size=256, lr=0.1, weight_decay=1e-4, warmup_epochs=5),
    "small": dict(arch="resnet8", epochs=15, batch_size=64, lr=0.2, weight_decay=5e-4, warmup_epochs=1),
}
STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),  # per-channel mean and std of training images
         "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
         "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "digits": ((0.305,) * 3, (0.324,) * 3)}


def apply_recipe(args):
    """Fill the flags not given (None) from the recipe, whose lr is per 256 images; `args.recipe` gets its name."""
    if args.recipe == "auto":
        args.recipe = {"cifar10": "cifar", "cifar100": "cifar", "imagenet": "imagenet"}.get(args.dataset, "small")
    for key, value in RECIPES[args.recipe].items():  # batch_size comes before lr
        if getattr(args, key) is None:
            setattr(args, key, value * args.batch_size / 256 if key == "lr" else value)
    return args


# TRY NOT TO MODIFY: command line, checkpoints, RNG (the same design in all five scripts: docs/skeleton.md)
BUDGET = ("epochs", "cuda", "test_only")  # the only flags that may change with --resume


def fail(message):
    """Bad input: one line on stderr, exit code 2, no traceback; nothing saved is touched."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args():
    """tyro's command line; its parse errors reduced to the same one line as check_args'."""
    try:
        with contextlib.redirect_stderr(io.StringIO()) as captured:
            return tyro.cli(Args)
    except SystemExit as e:
        if e.code:  # tyro draws a box: keep the message line under its title
            text = [line.strip(" │╭╮╰╯─") for line in captured.getvalue().splitlines()]
            fail(" ".join(text[1:(text + [""]).index("", 1)]) or "bad command line")  # its lines, unwrapped
        raise


def num_classes_of(args):
    """Class count, known before any data is loaded (ImageNet: the class folders in train/)."""
    if args.dataset == "imagenet":
        return sum(entry.is_dir() for entry in os.scandir(os.path.join(args.data_dir, "train")))
    return 100 if args.dataset == "cifar100" else 10


def check_args(args):
    """ValueError naming the first flag out of its range (tyro has checked the types; NaN fails every test)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    for name, ok, allowed in [
        ("data_dir", args.dataset != "imagenet" or all(os.path.isdir(os.path.join(args.data_dir, s)) for s in ("train", "val")),
         "a folder with ImageNet's train/<class>/ and val/<class>/ image folders"),
        ("epochs", args.epochs >= 1, ">= 1"),
        ("batch_size", args.batch_size >= 1 and args.batch_size % world == 0, f">= 1 and divisible by {world} process(es)"),
        ("lr", 0 < args.lr < math.inf, "a finite number > 0"),
        ("weight_decay", 0 <= args.weight_decay < math.inf, "a finite number >= 0"),
        *[(k, 0 <= getattr(args, k) < 1, "in [0, 1)") for k in ("label_smoothing", "dropout")],
        *[(k, getattr(args, k) >= 0, ">= 0") for k in ("warmup_epochs", "save_every", "eval_every", "num_workers", "train_subset", "test_subset")],
        ("log_every", args.log_every >= 1, ">= 1"),
        ("track", not args.track or importlib.util.find_spec("wandb"), "off unless wandb is installed (pip install wandb)"),
        ("test_only", not args.test_only or args.resume, "given with --resume PATH, the checkpoint it evaluates"),
    ]:
        if not ok:
            raise ValueError(f"--{name.replace('_', '-')} must be {allowed}, got {getattr(args, name)}")
    check_softmax_floor(args.min_entropy, num_classes_of(args), flag="--min-entropy")  # ERA


def load_checkpoint(args):
    """(the saved run's Args with this command line's budget flags, the checkpoint); ValueError if unusable."""
    given = [k for k, v in asdict(args).items() if k != "resume" and v != getattr(Args(), k)]
    try:
        checkpoint = torch.load(args.resume, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise ValueError(f"--resume {args.resume}: no such file") from None
    except Exception:
        raise ValueError(f"--resume {args.resume}: not a readable checkpoint (empty, truncated or not a torch.save file)") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("script") != SCRIPT or set(checkpoint["args"]) != set(asdict(args)):
        raise ValueError(f"--resume {args.resume}: not a checkpoint of this version of {SCRIPT}")
    for name in given:  # a flag equal to the run's own value is fine: benchmarks/run.py repeats them all
        if name not in BUDGET and getattr(args, name) != checkpoint["args"][name]:
            raise ValueError(f"--{name.replace('_', '-')} cannot change with --resume, which continues the run with "
                             f"its saved flags (only --{', --'.join(b.replace('_', '-') for b in BUDGET)} may change)")
    if len(checkpoint["per_rank"]) != int(os.environ.get("WORLD_SIZE", 1)):
        raise ValueError(f"--resume {args.resume}: written by {len(checkpoint['per_rank'])} process(es); resume with as many")
    return replace(Args(**checkpoint["args"]), resume=args.resume, **{k: getattr(args, k) for k in given}), checkpoint


def save_checkpoint(path, **state):
    """Atomic: written to a temporary file, then renamed, so a kill mid-write keeps the previous checkpoint."""
    torch.save({"script": SCRIPT, **state}, path + ".tmp")
    os.replace(path + ".tmp", path)


def rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def derived_seed(*keys):
    """The seed of (seed, epoch): the data order, and of (seed, epoch, image): that image's augmentation."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


# Data: uint8 images, transformed per sample, every random draw keyed by (seed, epoch, image index) alone, so that
# neither the number of data-loader workers nor the step a run resumes from changes any batch
class Keyed(Dataset):
    """Item (epoch, i): image i of `images` through `transform`, its random draws seeded by (seed, epoch, i)."""

    def __init__(self, images, transform, seed):
        self.images, self.transform, self.seed = images, transform, seed

    def __getitem__(self, key):
        image, label = self.images[key[1]]
        with torch.random.fork_rng(devices=[]):  # the process's own RNG (dropout) stays untouched
            torch.default_generator.manual_seed(derived_seed(self.seed, *key))  # the generator the transforms draw from
            return self.transform(image), int(label)


def load_cifar(args):
    """CIFAR-10/100 as uint8 tensors, from the pickled batches of the official archive (downloaded if missing)."""
    folder = Path(args.data_dir, {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[args.dataset])
    if not folder.is_dir():
        getattr(torchvision.datasets, args.dataset.upper())(args.data_dir, download=True)  # checks the archive's md5
    names = ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]) if args.dataset == "cifar10" else (["train"], ["test"])
    splits = [[pickle.loads((folder / name).read_bytes(), encoding="latin1") for name in split] for split in names]
    return [TensorDataset(torch.from_numpy(np.concatenate([b["data"] for b in split])).view(-1, 3, 32, 32),
                          torch.tensor([y for b in split for y in b.get("labels", b.get("fine_labels"))])) for split in splits]


def load_digits():
    """scikit-learn's 1797 real 8x8 digits, bilinearly upsampled to 3x32x32 uint8; fixed stratified 80/20 split."""
    from sklearn import datasets, model_selection

    digits = datasets.load_digits()
    x = F.interpolate(torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16, 32, mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    split = model_selection.train_test_split(np.arange(len(x)), test_size=0.2, random_state=0, stratify=digits.target)
    return [TensorDataset(x[i], torch.tensor(digits.target[i])) for i in split]


def make_datasets(args):
    """(train set, test set) of Keyed items: normalised float32 images [3, H, W] and labels."""
    if args.dataset == "imagenet":  # torchvision's reference transforms
        train, test = (torchvision.datasets.ImageFolder(os.path.join(args.data_dir, split)) for split in ("train", "val"))
        train_geometry = [v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()]
        test_geometry = [v2.Resize(256, antialias=True), v2.CenterCrop(224)]
    else:  # digits are not mirror-symmetric: no flip
        train, test = load_digits() if args.dataset == "digits" else load_cifar(args)
        train_geometry = [v2.RandomCrop(32, padding=4)] + ([] if args.dataset == "digits" else [v2.RandomHorizontalFlip()])
        test_geometry = []
    strong = args.augmentation == "randaugment"
    to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(*STATS[args.dataset])]
    train_transform = v2.Compose([*train_geometry, *[v2.RandAugment(num_ops=2, magnitude=9)][:strong], *to_float,
                                  *[v2.RandomErasing(p=0.6, value="random")][:strong]])
    return Keyed(train, train_transform, args.seed), Keyed(test, v2.Compose([*test_geometry, *to_float]), args.seed)


def ignore_sigint(worker_id):
    """Data-loader workers leave Ctrl-C to the main process, which finishes its step and saves."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_model(arch, num_classes, dropout):
    """torchvision's ResNet for every arch: state dicts keep torchvision's keys (conv1, bn1, layer1-4, fc), so resnet18
    and resnet50 weights load into torchvision.models.resnet18/50 as they are."""
    name = arch.removesuffix("-cifar")
    model = getattr(torchvision.models, name if name in ("resnet18", "resnet50") else "resnet18")(num_classes=num_classes)
    if arch.endswith("-cifar"):  # 32 px images: a 3x3 stride-1 stem and no max-pool keep 32x32 maps in stage 1
        model.conv1, model.maxpool = nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.Identity()
    if name not in ("resnet18", "resnet50"):  # He et al. (2016, §4.2): 3 stages of (depth - 2) / 6 blocks, 16/32/64 ch
        n, model.inplanes, block = (int(name[len("resnet"):]) - 2) // 6, 16, torchvision.models.resnet.BasicBlock
        model.conv1, model.bn1, model.maxpool = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.Identity()
        model.layer1, model.layer2, model.layer3 = (model._make_layer(block, c, n, stride=s) for c, s in ((16, 1), (32, 2), (64, 2)))
        model.layer4, model.fc = nn.Identity(), nn.Linear(64, num_classes)
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    model.avgpool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Dropout(dropout))  # dropout before fc; the keys stay
    return model


def lr_lambda(step, warmup_steps, total_steps):
    """Linear warm-up to the peak, then cosine decay to 0 (per optimizer step)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))


@torch.no_grad()
def evaluate(args, model, loader, device, amp_dtype):
    """Top-1, top-5, NLL, ECE (15 equal-width confidence bins), mean and min entropy of the output distribution, and
    the bins' [count, sum of confidence, sum of correct]. Each process evaluates its shard; the sums are added."""
    model.eval()
    sums, bins, min_entropy = torch.zeros(5, device=device), torch.zeros(15, 3, device=device), torch.tensor(math.inf, device=device)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True, memory_format=torch.channels_last), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x).float()
        if args.era:  # ERA
            logits = softmax_entropy_floor(logits, args.min_entropy)  # ERA
        logp = torch.log_softmax(logits, dim=-1)
        entropy, (confidence, prediction) = -(logp.exp() * logp).sum(-1), logp.exp().max(-1)
        correct = (prediction == y).float()
        top5 = (logits.topk(min(5, logits.shape[-1]), dim=-1).indices == y[:, None]).any(-1).float()
        sums += torch.stack([torch.ones_like(correct).sum(), correct.sum(), top5.sum(), -logp.gather(-1, y[:, None]).sum(), entropy.sum()])
        bins += F.one_hot((confidence * 15).long().clamp(max=14), 15).float().T @ torch.stack([torch.ones_like(correct), confidence, correct], 1)
        min_entropy = torch.minimum(min_entropy, entropy.min())
    if dist.is_initialized():
        for total, op in ((sums, dist.ReduceOp.SUM), (bins, dist.ReduceOp.SUM), (min_entropy, dist.ReduceOp.MIN)):
            dist.all_reduce(total, op=op)
    count, top1, top5, nll, entropy = sums.tolist()
    return {"top1": top1 / count, "top5": top5 / count, "nll": nll / count, "ece": (bins[:, 2] - bins[:, 1]).abs().sum().item() / count,
            "entropy": entropy / count, "min_entropy": min_entropy.item()}, bins.tolist()


def main(args):
    try:
        args, checkpoint = load_checkpoint(args) if args.resume else (apply_recipe(args), None)
        check_args(args)
    except ValueError as e:
        fail(e)
    # torchrun sets these; a plain `python resnet_era.py` is world 1, rank 0
    world, rank, local_rank = (int(os.environ.get(k, d)) for k, d in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() and args.cuda else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if rank == 0:
        print(f"recipe {args.recipe} (lr {RECIPES[args.recipe]['lr']} per 256 images; flags given override it): "
              + " ".join(f"--{k.replace('_', '-')} {getattr(args, k)}" for k in RECIPES[args.recipe]))
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.amp) if device.type == "cuda" else None

    # TRY NOT TO MODIFY: seeding (process r seeds with seed + r; DDP copies rank 0's initial weights to all)
    random.seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    torch.manual_seed(args.seed + rank)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.backends.cudnn.benchmark = not args.torch_deterministic

    try:
        train_set, test_set = make_datasets(args)
    except (OSError, RuntimeError) as e:  # no files and no internet, unreadable files
        fail(f"--data-dir {args.data_dir}: cannot load {args.dataset} ({e})")
    n_train = min(args.train_subset or len(train_set.images), len(train_set.images))
    local_bs, steps_per_epoch = args.batch_size // world, n_train // args.batch_size
    if steps_per_epoch == 0:
        fail(f"--batch-size must be at most the {n_train} training images, got {args.batch_size}")
    # a private generator, so that creating a loader draws nothing from the process's RNG
    loader_kw = dict(num_workers=args.num_workers, pin_memory=device.type == "cuda", worker_init_fn=ignore_sigint, generator=torch.Generator())
    test_keys = [(0, i) for i in range(rank, min(args.test_subset or len(test_set.images), len(test_set.images)), world)]
    test_loader = DataLoader(test_set, 2 * local_bs, sampler=test_keys, **loader_kw)

    model = make_model(args.arch, num_classes_of(args), args.dropout).to(device, memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.ndim > 1]  # no weight decay on norm weights and biases
    optimizer = torch.optim.SGD([{"params": decay}, {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0}],
                                lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    total_steps = args.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, args.warmup_epochs * steps_per_epoch, total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    saved = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    global_step, train_sums = 0, torch.zeros(3, device=device)  # loss sum, correct, images in the current epoch
    if checkpoint:
        for key, obj in saved.items():
            obj.load_state_dict(checkpoint[key])
        global_step, train_sums = checkpoint["global_step"], checkpoint["per_rank"][rank][1].to(device)
        set_rng_state(checkpoint["per_rank"][rank][0])  # per_rank: each process's (RNG state, running sums)
    if args.test_only:
        metrics, bins = evaluate(args, model, test_loader, device, amp_dtype)
        if rank == 0:
            print(json.dumps({**metrics, "epochs": global_step / steps_per_epoch, "bins": bins}))
        sys.exit(0)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    net = torch.compile(net) if args.compile else net

    if checkpoint is None:
        args.exp_name += "" if args.era else "_noera"  # ERA
        run_name = [f"{args.dataset}__{args.exp_name}__{args.seed}__{int(time.time())}"]
        if world > 1:  # every process takes rank 0's clock
            dist.broadcast_object_list(run_name, src=0)
    run_dir = os.path.dirname(os.path.abspath(args.resume)) if checkpoint else os.path.join(args.runs_dir, run_name[0])
    ckpt_path, writer = os.path.join(run_dir, "checkpoint.pt"), None
    stop = []  # the first SIGINT/SIGTERM: finish this step, save, exit 128 + signal; a second one stops at once

    def request_stop(signum, frame):
        stop.append(signum)
        if world == 1:  # under torchrun the agent relays the terminal's Ctrl-C: a second signal is that echo
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}

    if rank == 0:
        if args.track:
            import wandb
            wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True, config=vars(args),
                       name=os.path.basename(run_dir), id=os.path.basename(run_dir), resume="allow", save_code=True)
        writer = SummaryWriter(run_dir, purge_step=global_step // steps_per_epoch + 1 if checkpoint else None)
        if checkpoint is None:
            writer.add_text("hyperparameters", "|param|value|\n|-|-|\n%s" % "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))

    for epoch in range(global_step // steps_per_epoch, args.epochs):
        # ALGO LOGIC: one epoch of SGD. The order depends on (seed, epoch) only; each global batch is a contiguous slice
        # of it, split across processes; a resumed epoch skips the batches already trained on
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(derived_seed(args.seed, epoch)))
        mine = order[: steps_per_epoch * args.batch_size][rank::world][(global_step % steps_per_epoch) * local_bs:]
        loader = DataLoader(train_set, local_bs, sampler=[(epoch, i) for i in mine.tolist()], **loader_kw)
        model.train()
        start_time, seen = time.time(), 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True, memory_format=torch.channels_last), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = net(x).float()
            if args.era:  # ERA
                logits = softmax_entropy_floor(logits, args.min_entropy)  # ERA: the logits of the distribution predicted
            loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            global_step, seen = global_step + 1, seen + len(y)
            train_sums += torch.stack([loss.detach() * len(y), (logits.argmax(-1) == y).sum().float(), torch.full_like(loss, len(y))])
            if global_step % args.log_every == 0 and rank == 0:
                print(f"epoch {epoch + 1} step {global_step} loss {loss.item():.4f}", flush=True)

            if global_step % steps_per_epoch == 0:  # the epoch's last step: evaluation and logging
                elapsed, metrics = time.time() - start_time, {}
                if world > 1:  # DDP gave every forward rank 0's BN statistics; so does evaluation
                    for buffer in model.buffers():
                        dist.broadcast(buffer, 0)
                    dist.all_reduce(train_sums)
                if (args.eval_every and (epoch + 1) % args.eval_every == 0) or epoch + 1 == args.epochs:
                    metrics, _ = evaluate(args, model, test_loader, device, amp_dtype)
                if rank == 0:
                    loss_sum, correct, images = train_sums.tolist()
                    logged = {"train/loss": loss_sum / images, "train/top1": correct / images, **{f"eval/{k}": v for k, v in metrics.items()},
                              "charts/lr": scheduler.get_last_lr()[0], "perf/images_per_second": seen * world / elapsed}
                    for tag, value in logged.items():
                        writer.add_scalar(tag, value, epoch + 1)
                    print(f"epoch {epoch + 1}/{args.epochs}: " + ", ".join(f"{t} {v:.4g}" for t, v in logged.items()), flush=True)
                train_sums.zero_()

            # TRY NOT TO MODIFY: checkpoint after this step every --save-every steps, at the end and on a signal
            stopping = torch.tensor(float(bool(stop)), device=device)
            if world > 1:  # all processes stop after the same step
                dist.all_reduce(stopping, op=dist.ReduceOp.MAX)
            if stopping or (args.save_every and global_step % args.save_every == 0) or global_step == total_steps:
                per_rank = [(rng_state(), train_sums.cpu())] * world
                if world > 1:
                    dist.all_gather_object(per_rank, per_rank[0])
                if rank == 0:
                    save_checkpoint(ckpt_path, args=asdict(args), **{k: obj.state_dict() for k, obj in saved.items()},
                                    global_step=global_step, per_rank=per_rank)
            if stopping:
                break
        if stopping:
            break

    for s, handler in previous.items():
        signal.signal(s, handler)
    if writer is not None:
        writer.close()
    if world > 1:
        dist.destroy_process_group()
    if stop:
        print(f"stopped by signal {stop[0]}: continue with python {SCRIPT} --resume {ckpt_path}", file=sys.stderr)
        sys.exit(128 + stop[0])


if __name__ == "__main__":
    main(parse_args())
