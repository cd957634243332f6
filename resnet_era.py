"""ResNet image classification with ERA (Entropy Regularizing Activation, arXiv 2510.08549), one file.

ERA puts era_core.softmax_entropy_floor after the last linear layer: the network's output distribution
(used for the loss, the predictions and every metric) always has entropy >= --min-entropy, while the class
ranking, hence top-1/top-5, of the raw logits is kept. `--no-era` trains the plain network;
`grep -n "# ERA" resnet_era.py` is the whole difference.

    python resnet_era.py --dataset cifar10 --arch resnet18-cifar --epochs 200           # 1 GPU or CPU
    torchrun --nproc-per-node 4 resnet_era.py --dataset imagenet --data-dir /data/imagenet --arch resnet50
    python resnet_era.py --dataset digits --arch resnet8 --epochs 5 --no-cuda           # offline, seconds
    python resnet_era.py --resume runs/<run_name>/checkpoint.pt                         # continue exactly
"""
import hashlib
import math
import os
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass
from typing import Literal, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import tyro
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from torchvision import tv_tensors
from torchvision.models.resnet import BasicBlock
from torchvision.transforms import v2
from tqdm import tqdm

from era_core import softmax_entropy_floor

ARCHS = ("resnet8", "resnet20", "resnet56", "resnet18-cifar", "resnet18", "resnet50")
DATASETS = ("cifar10", "cifar100", "imagenet", "digits", "fake")


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment (process r of a torchrun job uses seed + r for its augmentation draws)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True` and cudnn autotuning is off"""
    cuda: bool = True
    """if toggled, cuda will be enabled by default (when available)"""
    runs_dir: str = "runs"
    """tensorboard logs and checkpoints go to {runs_dir}/{run_name}"""
    resume: Optional[str] = None
    """path of a checkpoint.pt to continue from (its hyperparameters are used; logging goes on in its run dir)"""
    save_every: int = 1
    """save {runs_dir}/{run_name}/checkpoint.pt every this many epochs (and always at the end and on Ctrl-C)"""
    log_every: int = 50
    """print the training loss every this many optimizer steps"""
    num_workers: int = 4
    """data-loader worker processes per GPU/process (0: load in the main process, bit-exact mid-epoch resume)"""

    # Data and model
    dataset: Literal["cifar10", "cifar100", "imagenet", "digits", "fake"] = "cifar10"
    """cifar10/100 (torchvision), imagenet (ImageFolder), digits (sklearn 8x8 digits at 32 px), fake (FakeData)"""
    data_dir: str = "data"
    """where CIFAR is (downloaded) and where ImageNet's train/ and val/ folders are"""
    download: bool = True
    """download CIFAR to --data-dir if it is not there"""
    train_subset: int = 0
    """train on the first N training images only (0: all); for quick runs"""
    test_subset: int = 0
    """evaluate on the first N test images only (0: all); for quick runs"""
    arch: Literal["resnet8", "resnet20", "resnet56", "resnet18-cifar", "resnet18", "resnet50"] = "resnet18-cifar"
    """resnet8/20/56: CIFAR ResNets (He et al.); resnet18-cifar: 3x3 stem, no max-pool; resnet18/50: ImageNet ones"""
    recipe: Literal["plain", "augmented"] = "plain"
    """plain: random crop + flip; augmented: + RandAugment (2 ops, magnitude 9) and random erasing (p=0.6)"""

    # Optimisation
    epochs: int = 200
    """number of training epochs (paper: 200)"""
    batch_size: int = 128
    """global batch size, split evenly across torchrun processes"""
    lr: float = 0.1
    """peak learning rate of SGD"""
    momentum: float = 0.9
    """Nesterov momentum"""
    weight_decay: float = 5e-4
    """L2 weight decay of SGD"""
    warmup_epochs: int = 5
    """linear warm-up epochs before the cosine decay to 0"""
    label_smoothing: float = 0.0
    """label smoothing of the cross-entropy, in [0, 1)"""
    dropout: float = 0.0
    """dropout probability before the final linear layer, in [0, 1)"""
    amp: bool = True
    """mixed precision (float16 autocast + gradient scaling) on CUDA; ignored on CPU"""
    channels_last: bool = True
    """channels_last memory format for the network and the images"""
    compile: bool = False
    """torch.compile the network (ERA included)"""
    sync_bn: bool = False
    """SyncBatchNorm across torchrun processes (CUDA only); otherwise BN statistics are averaged each epoch"""

    # ERA
    era: bool = True
    """ERA output activation (use --no-era for the plain network)"""
    min_entropy: float = 0.6
    """ERA's entropy floor H0 in nats (official default 0.6); admissible: (-0.0597, ln(classes) - 0.0597]"""


class TensorImages(Dataset):
    """In-memory uint8 images [N, 3, H, W] with labels, transformed per sample like a torchvision data set."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(tv_tensors.Image(self.images[i])), int(self.labels[i])


def load_digits_32px():
    """scikit-learn's 1797 real 8x8 digits, bilinearly upsampled to 3x32x32 uint8; fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(digits.target)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=digits.target)
    return (x[idx_train], y[idx_train]), (x[idx_test], y[idx_test])


def num_classes_of(args):
    """Class count of the data set, known before any data is loaded (ImageNet: count the class folders)."""
    if args.dataset == "imagenet":
        return sum(entry.is_dir() for entry in os.scandir(os.path.join(args.data_dir, "train")))
    return {"cifar10": 10, "cifar100": 100, "digits": 10, "fake": 10}[args.dataset]


def make_datasets(args):
    """(train set, test set) with the recipe's transforms; images come out normalised float32 [3, H, W]."""
    stats = {  # per-channel mean, std of the training images
        "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
        "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        "digits": ((0.305,) * 3, (0.324,) * 3),
        "fake": ((0.5,) * 3, (0.25,) * 3),
    }[args.dataset]
    if args.dataset == "imagenet":
        train_geometry = [v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()]
        test_geometry = [v2.Resize(256, antialias=True), v2.CenterCrop(224)]
    else:
        flip = [] if args.dataset == "digits" else [v2.RandomHorizontalFlip()]  # digits are not mirror-symmetric
        train_geometry, test_geometry = [v2.RandomCrop(32, padding=4)] + flip, []
    augment = [v2.RandAugment(num_ops=2, magnitude=9)] if args.recipe == "augmented" else []
    erase = [v2.RandomErasing(p=0.6, value="random")] if args.recipe == "augmented" else []
    to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(*stats)]
    train_tf = v2.Compose([v2.ToImage(), *train_geometry, *augment, *to_float, *erase])
    test_tf = v2.Compose([v2.ToImage(), *test_geometry, *to_float])

    if args.dataset in ("cifar10", "cifar100"):
        cls = torchvision.datasets.CIFAR10 if args.dataset == "cifar10" else torchvision.datasets.CIFAR100
        try:
            train = cls(args.data_dir, train=True, transform=train_tf, download=args.download)
            test = cls(args.data_dir, train=False, transform=test_tf, download=args.download)
        except Exception as e:  # no internet, or --no-download without the files
            raise RuntimeError(f"--data-dir {args.data_dir!r}: could not find or download {args.dataset} ({e}); "
                               f"put the torchvision {args.dataset} files there or run once with internet") from e
    elif args.dataset == "imagenet":
        train = torchvision.datasets.ImageFolder(os.path.join(args.data_dir, "train"), transform=train_tf)
        test = torchvision.datasets.ImageFolder(os.path.join(args.data_dir, "val"), transform=test_tf)
    elif args.dataset == "digits":
        (x_train, y_train), (x_test, y_test) = load_digits_32px()
        train, test = TensorImages(x_train, y_train, train_tf), TensorImages(x_test, y_test, test_tf)
    else:
        train = torchvision.datasets.FakeData(1024, (3, 32, 32), 10, transform=train_tf)
        test = torchvision.datasets.FakeData(256, (3, 32, 32), 10, transform=test_tf, random_offset=1024)
    if args.train_subset:
        train = Subset(train, range(min(args.train_subset, len(train))))
    if args.test_subset:
        test = Subset(test, range(min(args.test_subset, len(test))))
    return train, test


def ignore_sigint(worker_id):
    """Data-loader workers leave Ctrl-C to the main process, which finishes its step and saves."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def cifar_resnet(depth, num_classes, dropout):
    """He et al. (2016, §4.2) CIFAR ResNet-depth: 3x3 stem, 3 stages of (depth-2)/6 BasicBlocks of 16/32/64 ch."""
    layers, width = [nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)], 16
    for stage, channels in enumerate((16, 32, 64)):
        for block in range((depth - 2) // 6):
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = None
            if stride != 1 or width != channels:  # projection shortcut ("option B")
                shortcut = nn.Sequential(nn.Conv2d(width, channels, 1, stride, bias=False), nn.BatchNorm2d(channels))
            layers.append(BasicBlock(width, channels, stride, shortcut))
            width = channels
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(64, num_classes)]
    model = nn.Sequential(*layers, *head)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


def make_backbone(arch, num_classes, dropout):
    """The network up to and including the logits."""
    if arch in ("resnet8", "resnet20", "resnet56"):
        return cifar_resnet(int(arch[len("resnet"):]), num_classes, dropout)
    model = {"resnet18": torchvision.models.resnet18, "resnet18-cifar": torchvision.models.resnet18,
             "resnet50": torchvision.models.resnet50}[arch](num_classes=num_classes)
    if arch == "resnet18-cifar":  # 32 px images: a 3x3 stride-1 stem and no max-pool keep 32x32 maps in stage 1
        model.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        model.maxpool = nn.Identity()
    model.fc = nn.Sequential(nn.Dropout(dropout), model.fc)
    return model


class Classifier(nn.Module):
    """Backbone, then the output activation: ERA's entropy floor (min_entropy) or none (min_entropy=None)."""

    def __init__(self, backbone, min_entropy):
        super().__init__()
        self.backbone, self.min_entropy = backbone, min_entropy

    def forward(self, x):
        logits = self.backbone(x)
        if self.min_entropy is not None:  # ERA
            logits = softmax_entropy_floor(logits.float(), self.min_entropy)  # ERA: in float32, exact under AMP
        return logits


def lr_lambda(step, warmup_steps, total_steps):
    """Linear warm-up to the peak, then cosine decay to 0 (per optimizer step)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))


def prediction_stats(logits, labels, n_bins=15):
    """Sums over a batch of the output distribution's metrics: [count, top1, top5, nll, entropy] and ECE bins."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    entropy = -(p * logp).sum(-1)
    conf, pred = p.max(-1)
    correct = (pred == labels).float()
    top5 = (logits.topk(min(5, logits.shape[-1]), dim=-1).indices == labels[:, None]).any(-1).float()
    nll = -logp.gather(-1, labels[:, None]).squeeze(-1)
    sums = torch.stack([torch.ones_like(nll).sum(), correct.sum(), top5.sum(), nll.sum(), entropy.sum()])
    bins = F.one_hot((conf * n_bins).long().clamp(max=n_bins - 1), n_bins).float()  # equal-width confidence bins
    ece_bins = bins.T @ torch.stack([torch.ones_like(conf), conf, correct], dim=1)  # [n_bins, (count, conf, acc)]
    return sums, ece_bins, entropy.min()


@torch.no_grad()
def evaluate(model, loader, device, amp, memory_format):
    """Top-1, top-5, NLL, ECE (15 bins) and mean/min predictive entropy of the model's output distribution.

    Every process evaluates its own disjoint shard; the sums are added across processes."""
    model.eval()
    sums, ece_bins = torch.zeros(5, device=device), torch.zeros(15, 3, device=device)
    min_entropy = torch.full((), float("inf"), device=device)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True, memory_format=memory_format), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            out = model(x)
        s, b, m = prediction_stats(out, y)
        sums, ece_bins, min_entropy = sums + s, ece_bins + b, torch.minimum(min_entropy, m)
    if dist.is_initialized():
        dist.all_reduce(sums)
        dist.all_reduce(ece_bins)
        dist.all_reduce(min_entropy, op=dist.ReduceOp.MIN)
    count, top1, top5, nll, entropy = sums.tolist()
    ece = (ece_bins[:, 2] - ece_bins[:, 1]).abs().sum().item() / count
    return {"top1": top1 / count, "top5": top5 / count, "nll": nll / count, "ece": ece,
            "entropy": entropy / count, "min_entropy": min_entropy.item()}


def state_digest(module):
    """sha256 of every parameter and buffer, to check that torchrun processes hold the same network."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def rng_state():
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_args(args):
    """Fail fast, naming the flag, before any data is loaded."""
    if args.dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {DATASETS}, got {args.dataset!r}")
    if args.arch not in ARCHS:
        raise ValueError(f"--arch must be one of {ARCHS}, got {args.arch!r}")
    if args.recipe not in ("plain", "augmented"):
        raise ValueError(f"--recipe must be 'plain' or 'augmented', got {args.recipe!r}")
    if args.dataset == "imagenet":
        for split in ("train", "val"):
            if not os.path.isdir(os.path.join(args.data_dir, split)):
                raise ValueError(f"--data-dir {args.data_dir!r}: ImageNet needs the ImageFolder layout "
                                 f"{args.data_dir}/train/<class>/*.JPEG and {args.data_dir}/val/<class>/*.JPEG "
                                 f"({split}/ is missing)")
    if args.dataset in ("cifar10", "cifar100") and not args.download and not os.path.isdir(args.data_dir):
        raise ValueError(f"--data-dir {args.data_dir!r} does not exist (and --no-download was given)")
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--save-every", args.save_every),
                        ("--log-every", args.log_every)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    for flag, value in (("--warmup-epochs", args.warmup_epochs), ("--num-workers", args.num_workers),
                        ("--train-subset", args.train_subset), ("--test-subset", args.test_subset)):
        if value < 0:
            raise ValueError(f"{flag} must be >= 0, got {value}")
    if not 0 <= args.label_smoothing < 1:
        raise ValueError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if not 0 <= args.dropout < 1:
        raise ValueError(f"--dropout must be in [0, 1), got {args.dropout}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if args.sync_bn and not (args.cuda and torch.cuda.is_available()):
        raise ValueError("--sync-bn needs CUDA: torch's SyncBatchNorm has no CPU implementation. Drop --sync-bn "
                         "on CPU (BatchNorm statistics are then averaged across processes after every epoch).")
    if args.era:  # ERA: era_core knows the admissible floor for the class count; report it under the flag's name
        try:  # ERA
            softmax_entropy_floor(torch.zeros(1, num_classes_of(args)), args.min_entropy)  # ERA
        except ValueError as e:  # ERA
            raise ValueError(f"--min-entropy: {e}") from None  # ERA


def main(args):
    """Train; return the last evaluation metrics (on rank 0; None elsewhere)."""
    check_args(args)
    checkpoint = None
    if args.resume:
        if not os.path.isfile(args.resume):
            raise ValueError(f"--resume {args.resume!r}: no such checkpoint file")
        checkpoint = torch.load(args.resume, map_location="cpu", weights_only=False)
        runtime = {"resume", "runs_dir", "cuda", "num_workers", "compile", "data_dir", "download", "log_every",
                   "save_every"}
        for key, value in checkpoint["args"].items():  # the run continues with the hyperparameters it started with
            if key not in runtime and getattr(args, key) != value:
                print(f"resume: {key}={value!r} from the checkpoint (command line said {getattr(args, key)!r})")
                setattr(args, key, value)
        check_args(args)

    # torchrun sets these; a plain `python resnet_era.py` is world 1, rank 0
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = args.cuda and torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} must be divisible by the number of processes ({world})")
    local_bs = args.batch_size // world
    amp = args.amp and use_cuda
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    if checkpoint is not None:
        run_dir = os.path.dirname(os.path.abspath(args.resume))
        run_name = os.path.basename(run_dir)
    else:
        exp_name = args.exp_name + ("" if args.era else "_noera")  # ERA
        run_name = [f"{args.dataset}__{exp_name}__{args.seed}__{int(time.time())}"]
        if world > 1:  # every process must agree on rank 0's clock
            dist.broadcast_object_list(run_name, src=0)
        run_name = run_name[0]
        run_dir = os.path.join(args.runs_dir, run_name)
    ckpt_path = os.path.join(run_dir, "checkpoint.pt")
    writer = None
    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        writer = SummaryWriter(run_dir)
        if checkpoint is None:
            writer.add_text("hyperparameters", "|param|value|\n|-|-|\n%s" % (
                "\n".join([f"|{key}|{value}|" for key, value in vars(args).items()])))

    # TRY NOT TO MODIFY: seeding (process r uses seed + r; DDP copies rank 0's initial weights to all)
    random.seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    torch.manual_seed(args.seed + rank)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.backends.cudnn.benchmark = not args.torch_deterministic

    train_set, test_set = make_datasets(args)
    num_classes = num_classes_of(args)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
    steps_per_epoch = len(sampler) // local_bs
    if steps_per_epoch == 0:
        raise ValueError(f"--batch-size {args.batch_size} is larger than the training set ({len(train_set)} images)")
    test_loader = DataLoader(Subset(test_set, range(rank, len(test_set), world)), batch_size=2 * local_bs,
                             num_workers=args.num_workers, pin_memory=use_cuda, worker_init_fn=ignore_sigint)

    backbone = make_backbone(args.arch, num_classes, args.dropout)
    if args.sync_bn and world > 1:
        backbone = nn.SyncBatchNorm.convert_sync_batchnorm(backbone)
    model = Classifier(backbone, args.min_entropy if args.era else None)  # ERA
    model = model.to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, nesterov=True,
                                weight_decay=args.weight_decay)
    total_steps = args.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, args.warmup_epochs * steps_per_epoch, total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=amp)

    start_epoch, start_step, global_step = 0, 0, 0
    train_sums = torch.zeros(3, device=device)  # loss sum, correct, images seen in the current epoch
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        start_epoch, start_step = checkpoint["epoch"], checkpoint["step_in_epoch"]
        global_step = checkpoint["global_step"]
        train_sums = checkpoint["train_sums"][rank].to(device) if rank < len(checkpoint["train_sums"]) else train_sums
        if rank < len(checkpoint["rng"]):
            set_rng_state(checkpoint["rng"][rank])
        else:
            print(f"resume: no RNG state for rank {rank} (the checkpoint came from {len(checkpoint['rng'])} processes)")
        print(f"resumed {args.resume} at epoch {start_epoch + 1}, step {start_step}/{steps_per_epoch}")
    net = model
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None)
    eval_net = model  # evaluation needs no gradient synchronisation
    if args.compile:
        net, eval_net = torch.compile(net), torch.compile(model)

    def save(epoch, step_in_epoch, collective=True):
        """Everything needed to continue exactly; written atomically by rank 0. collective=False: no
        cross-process gathering (used when a crash may have left the other processes unreachable)."""
        rngs, sums = [rng_state()], [train_sums.cpu()]
        if world > 1 and collective:
            rngs, sums = [None] * world, [None] * world
            dist.all_gather_object(rngs, rng_state())
            dist.all_gather_object(sums, train_sums.cpu())
        if rank == 0:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                     "step_in_epoch": step_in_epoch, "global_step": global_step, "train_sums": sums, "rng": rngs,
                     "args": asdict(args), "num_classes": num_classes}
            torch.save(state, ckpt_path + ".tmp")
            os.replace(ckpt_path + ".tmp", ckpt_path)

    # Ctrl-C (or SIGTERM) finishes the current step, saves and exits; a second Ctrl-C >2 s later quits at once.
    stop = {"time": None}

    def on_signal(signum, frame):
        if stop["time"] is not None and time.time() - stop["time"] > 2:  # torchrun relays the signal: ignore echoes
            raise KeyboardInterrupt
        if stop["time"] is None:
            print(f"rank {rank}: signal {signum}: will save a checkpoint after this step (Ctrl-C again: quit)",
                  flush=True)
            stop["time"] = time.time()

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def stop_requested():
        flag = torch.tensor([float(stop["time"] is not None)], device=device)
        if world > 1:  # all processes must stop at the same step
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    metrics, epoch, step, stopped = None, start_epoch, start_step, False
    try:
        for epoch in range(start_epoch, args.epochs):
            # ALGO LOGIC: one epoch of SGD; the sampler's order depends on (seed, epoch) only, so a resumed
            # epoch skips the indices already trained on
            net.train()
            sampler.set_epoch(epoch)
            order = list(sampler)[start_step * local_bs:]
            loader = DataLoader(train_set, batch_size=local_bs, sampler=order, drop_last=True,
                                num_workers=args.num_workers, pin_memory=use_cuda, worker_init_fn=ignore_sigint,
                                generator=torch.Generator().manual_seed(args.seed * 10007 + epoch * 101 + rank))
            start_time, step = time.time(), start_step
            bar = tqdm(loader, total=steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}/{args.epochs}",
                       disable=rank != 0 or None, leave=False)  # None: only on a terminal
            for x, y in bar:
                x = x.to(device, non_blocking=True, memory_format=memory_format)
                y = y.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    out = net(x)  # ERA: the floored logits, i.e. the logits of the distribution the model predicts
                    loss = F.cross_entropy(out, y, label_smoothing=args.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step, global_step = step + 1, global_step + 1
                train_sums += torch.stack([loss.detach().float() * len(y), (out.argmax(-1) == y).sum().float(),
                                           torch.tensor(float(len(y)), device=device)])
                if step % args.log_every == 0:
                    if rank == 0:
                        loss_now = loss.item()
                        bar.set_postfix(loss=f"{loss_now:.4f}", lr=f"{scheduler.get_last_lr()[0]:.4g}")
                        print(f"epoch {epoch + 1} step {step}/{steps_per_epoch} loss {loss_now:.4f}", flush=True)
                    stopped = world > 1 and stop_requested()
                if world == 1 and stop["time"] is not None:
                    stopped = True
                if stopped:
                    break
            bar.close()
            if stopped and step < steps_per_epoch:  # by a signal, mid-epoch (else: finish the epoch, then save)
                break
            elapsed = time.time() - start_time
            start_step = 0
            if world > 1 and not args.sync_bn:  # last BN updates came from each process's own batch: average them
                for buf in model.buffers():
                    if buf.is_floating_point():
                        dist.all_reduce(buf)
                        buf /= world
            sums = train_sums.clone()
            if world > 1:
                dist.all_reduce(sums)
            metrics = evaluate(eval_net, test_loader, device, amp, memory_format)
            if rank == 0:
                loss_sum, correct, seen = sums.tolist()
                writer.add_scalar("train/loss", loss_sum / seen, epoch + 1)
                writer.add_scalar("train/top1", correct / seen, epoch + 1)
                for key, value in metrics.items():
                    writer.add_scalar(f"eval/{key}", value, epoch + 1)
                writer.add_scalar("charts/lr", scheduler.get_last_lr()[0], epoch + 1)
                writer.add_scalar("charts/images_per_second", seen / elapsed, epoch + 1)
                print(f"epoch {epoch + 1}/{args.epochs}: train loss {loss_sum / seen:.4f}, test top-1 "
                      f"{metrics['top1']:.4f} top-5 {metrics['top5']:.4f} nll {metrics['nll']:.4f} ece "
                      f"{metrics['ece']:.4f} entropy {metrics['entropy']:.3f} (min {metrics['min_entropy']:.3f}), "
                      f"{seen / elapsed:.0f} img/s", flush=True)
            train_sums.zero_()
            stopped = stop_requested()
            if (epoch + 1) % args.save_every == 0 or epoch + 1 == args.epochs or stopped:
                save(epoch + 1, 0)
            if stopped:
                break
        if stopped:
            if step < steps_per_epoch:
                save(epoch, step)
            if rank == 0:
                print(f"interrupted: checkpoint saved to {ckpt_path}; continue with --resume {ckpt_path}", flush=True)
    except Exception:
        if (epoch, step) != (start_epoch, start_step):  # something was computed since the start or the resume
            save(epoch, step, collective=False)
            if rank == 0:
                print(f"crashed: checkpoint of the last completed step saved to {ckpt_path}", flush=True)
        raise
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        if writer is not None:
            writer.close()
    print(f"rank {rank}: state sha256 {state_digest(model)}", flush=True)
    if world > 1:
        dist.destroy_process_group()
    return metrics if rank == 0 else None


if __name__ == "__main__":
    args = tyro.cli(Args)
    main(args)
