"""Tests for resnet_era.py and benchmarks/grid_resnet.py, through the command line as a user runs them: a smoke run
(logged tags, the ERA floor, no decay on norm/bias), exact resume after SIGTERM/SIGINT with 0 and 2 data-loader
workers, bad input, torchrun with 2 gloo processes, weights that load into torchvision, the CIFAR-10 on-disk format,
the ImageFolder (ImageNet) path, recipes, and the grid. CPU, one thread."""
import json
import math
import pickle
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision

from conftest import (ROOT, assert_bad_input, assert_same_scalars, events_written, only_run_dir, run_script, scalars,
                      script_env, signal_when, start_script)

sys.path.insert(0, str(ROOT))
import resnet_era  # noqa: E402  (only for make_model and make_datasets: the tests' own view of the network and data)
from era_core import softmax_entropy_floor  # noqa: E402

SCRIPT = "resnet_era.py"
EPOCH_TAGS = {"train/loss", "train/top1", "eval/top1", "eval/top5", "eval/nll", "eval/ece", "eval/entropy",
              "eval/min_entropy", "charts/lr", "perf/images_per_second"}
# resnet18 (torchvision's, ImageNet stem) on 64 digits: 2 steps, dropout and label smoothing on
SMOKE = ["--dataset", "digits", "--arch", "resnet18", "--epochs", "1", "--batch-size", "32", "--train-subset", "64",
         "--test-subset", "64", "--num-workers", "0", "--dropout", "0.1", "--label-smoothing", "0.1", "--no-cuda"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One finished ERA run: (its run dir, its checkpoint path, its stdout)."""
    runs = tmp_path_factory.mktemp("smoke")
    proc = run_script(SCRIPT, *SMOKE, "--runs-dir", runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(runs)
    return run_dir, run_dir / "checkpoint.pt", proc.stdout


def test_smoke_tags_floor_and_weight_decay_groups(smoke):
    run_dir, ckpt_path, stdout = smoke
    assert run_dir.name.startswith("digits__resnet_era__1__")
    assert stdout.startswith("recipe small (lr 0.2 per 256 images; flags given override it): --arch resnet18 --epochs 1 "
                             "--batch-size 32 --lr 0.025 --weight-decay 0.0005 --warmup-epochs 1")
    logged = scalars(run_dir)
    assert EPOCH_TAGS <= set(logged)
    for tag in EPOCH_TAGS:
        assert [step for step, _ in logged[tag]] == [1] and math.isfinite(logged[tag][0][1]), tag
    assert logged["eval/min_entropy"][0][1] >= 0.6 - 1e-5  # ERA's floor holds even for an untrained network
    checkpoint = torch.load(ckpt_path, weights_only=False)
    assert checkpoint["global_step"] == 2 and checkpoint["args"]["recipe"] == "small"
    decay, no_decay = checkpoint["optimizer"]["param_groups"]
    model = resnet_era.make_model("resnet18", 10, 0.1)
    assert len(no_decay["params"]) == sum(p.ndim <= 1 for p in model.parameters()) > 0  # norm weights and biases
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.0005, 0.0)


def test_export_loads_into_torchvision_and_test_only_metrics(smoke):
    """The checkpoint's weights are torchvision's resnet18 state dict; torchvision's network + softmax_entropy_floor
    gives the script's outputs, and `--test-only` reports the metrics of exactly that output distribution."""
    run_dir, ckpt_path, _ = smoke
    weights = torch.load(ckpt_path, weights_only=False)["model"]
    reference = torchvision.models.resnet18(num_classes=10)
    reference.load_state_dict(weights)  # strict: the same keys and shapes
    ours = resnet_era.make_model("resnet18", 10, 0.1)
    ours.load_state_dict(weights)
    args = resnet_era.Args(dataset="digits", seed=1)
    _, test_set = resnet_era.make_datasets(args)
    x = torch.stack([test_set[(0, i)][0] for i in range(64)])
    y = np.array([test_set[(0, i)][1] for i in range(64)])
    with torch.no_grad():
        logits = reference.eval()(x)
        assert torch.allclose(ours.eval()(x), logits, atol=1e-5)
        p = torch.softmax(softmax_entropy_floor(logits, 0.6), -1).double().numpy()  # ERA: a step after the model
    proc = run_script(SCRIPT, "--resume", ckpt_path, "--test-only")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout.splitlines()[-1])
    confidence, correct = p.max(1), p.argmax(1) == y
    bins = np.minimum((confidence * 15).astype(int), 14)
    expected = {"top1": correct.mean(), "top5": (np.argsort(-p, 1)[:, :5] == y[:, None]).any(1).mean(),
                "nll": -np.log(p[np.arange(64), y]).mean(), "entropy": -(p * np.log(p)).sum(1).mean(),
                "ece": sum(abs(correct[bins == b].sum() - confidence[bins == b].sum()) for b in range(15)) / 64}
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert metrics["epochs"] == 1.0 and sum(b[0] for b in metrics["bins"]) == 64
    logged = scalars(run_dir)
    assert metrics["nll"] == pytest.approx(logged["eval/nll"][0][1], rel=1e-6)


# Exact resume: 3 epochs of 4 steps (dropout, RandAugment, random erasing), a checkpoint every 2 steps.
RESUME = ["--dataset", "digits", "--epochs", "3", "--batch-size", "32", "--train-subset", "128", "--test-subset", "64",
          "--save-every", "2", "--log-every", "1", "--dropout", "0.2", "--augmentation", "randaugment", "--no-cuda"]


def test_sigterm_sigint_then_resume_is_exact_for_any_worker_count(tmp_path):
    """A run with 2 data-loader workers is stopped by SIGTERM as soon as it has written its event file (the handlers
    are in before that), resumed, stopped by SIGINT to its whole process group (a terminal's Ctrl-C: the workers get it
    too) as soon as the resumed run has opened its own event file, and resumed to the end: it logs exactly what an
    uninterrupted run with 0 workers logs."""
    reference = run_script(SCRIPT, *RESUME, "--num-workers", "0", "--runs-dir", tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    proc = start_script(SCRIPT, *RESUME, "--num-workers", "2", "--runs-dir", tmp_path / "cut")
    code, _, err = signal_when(proc, events_written(tmp_path / "cut"), signal.SIGTERM)
    assert code == 143 and "--resume" in err.splitlines()[-1], err[-3000:]
    ckpt_path = next((tmp_path / "cut").rglob("checkpoint.pt"))
    first_stop = torch.load(ckpt_path, weights_only=False)["global_step"]
    proc = start_script(SCRIPT, "--resume", ckpt_path)
    code, _, err = signal_when(proc, events_written(tmp_path / "cut", 2), signal.SIGINT, group=True)
    assert code == 130, err[-3000:]
    assert 1 <= first_stop < torch.load(ckpt_path, weights_only=False)["global_step"] < 12  # stopped twice, before the end
    resumed = run_script(SCRIPT, "--resume", ckpt_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_scalars(scalars(only_run_dir(tmp_path / "reference")), scalars(only_run_dir(tmp_path / "cut")))


def test_bad_input(tmp_path, smoke):
    _, ckpt_path, _ = smoke
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "truncated.pt").write_bytes(ckpt_path.read_bytes()[:5000])
    torch.save({"script": "sac_era.py", "args": {}}, tmp_path / "sac.pt")
    (tmp_path / "no_val" / "train").mkdir(parents=True)
    for split, cls in [(split, cls) for split in ("train", "val") for cls in ("n01", "n02", "n03")]:
        (tmp_path / "three_classes" / split / cls).mkdir(parents=True)  # check_args counts the class folders
    cases = [
        (["--dataset", "digits", "--min-entropy", "nan"], "--min-entropy"),
        (["--dataset", "mnist"], "--dataset"),
        (["--dataset", "digits", "--batch-size", "4096"], "--batch-size"),
        (["--dataset", "imagenet", "--data-dir", tmp_path / "no_val"], "--data-dir"),
        # 1.1 nats is admissible for 1000 classes, not for 3: 1 + ln(3 ln(4) / 4) = 1.0397
        (["--dataset", "imagenet", "--data-dir", tmp_path / "three_classes", "--min-entropy", "1.1"], "--min-entropy"),
        (["--dataset", "digits", "--test-only"], "--test-only"),
        (["--resume", tmp_path / "missing.pt"], "--resume"),
        (["--resume", tmp_path / "empty.pt"], "--resume"),
        (["--resume", tmp_path / "truncated.pt"], "--resume"),
        (["--resume", tmp_path / "sac.pt"], "--resume"),
        (["--resume", ckpt_path, "--dropout", "0.3"], "--dropout"),
    ]
    for flags, flag in cases:
        runs_dir = [] if flags[0] == "--resume" else ["--runs-dir", tmp_path / "runs"]
        assert_bad_input(SCRIPT, *flags, *runs_dir, flag=flag, protect=[ckpt_path])
    assert not (tmp_path / "runs").exists() and sorted(p.name for p in ckpt_path.parent.iterdir()) == [
        "checkpoint.pt", next(ckpt_path.parent.glob("events.*")).name]


def test_torchrun_two_gloo_processes(tmp_path):
    """Two CPU processes split each global batch; rank 0 logs and saves both processes' RNG states."""
    flags = ["--dataset", "digits", "--epochs", "1", "--batch-size", "32", "--train-subset", "64", "--test-subset", "64",
             "--num-workers", "0", "--no-cuda", "--runs-dir", tmp_path]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(ROOT / SCRIPT), *map(str, flags)], capture_output=True, text=True, timeout=300,
                          env=script_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert EPOCH_TAGS <= set(scalars(only_run_dir(tmp_path)))
    checkpoint = torch.load(only_run_dir(tmp_path) / "checkpoint.pt", weights_only=False)
    assert len(checkpoint["per_rank"]) == 2 and checkpoint["global_step"] == 2
    assert not torch.equal(checkpoint["per_rank"][0][0]["torch"], checkpoint["per_rank"][1][0]["torch"])


def write_cifar10(folder, rng, per_batch=4, test=8):
    """CIFAR-10's on-disk format: pickled dicts with uint8 'data' [N, 3072] (R, G, B planes) and int 'labels'."""
    folder.mkdir(parents=True)
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        batch = {"batch_label": name, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n).tolist(), "filenames": [f"{name}_{i}.png" for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    return pickle.loads((folder / "data_batch_1").read_bytes())


def test_cifar10_on_disk_format_and_recipe_override(tmp_path):
    first = write_cifar10(tmp_path / "data" / "cifar-10-batches-py", np.random.default_rng(0))
    proc = run_script(SCRIPT, "--dataset", "cifar10", "--data-dir", tmp_path / "data", "--arch", "resnet8",
                      "--batch-size", "16", "--epochs", "1", "--num-workers", "0", "--no-cuda", "--runs-dir", tmp_path / "runs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the cifar recipe (the official ERA command's numbers), with the given flags and lr = 0.05 x 16 / 256
    assert proc.stdout.splitlines()[0] == ("recipe cifar (lr 0.05 per 256 images; flags given override it): --arch resnet8 "
                                           "--epochs 1 --batch-size 16 --lr 0.003125 --weight-decay 2e-05 --warmup-epochs 5")
    checkpoint = torch.load(only_run_dir(tmp_path / "runs") / "checkpoint.pt", weights_only=False)
    assert checkpoint["global_step"] == 1  # 20 training images, batch 16: one step
    assert {"eval/top1", "train/loss"} <= set(scalars(only_run_dir(tmp_path / "runs")))
    # the images come out in CIFAR's layout: row-major 32x32 planes R, G, B
    args = resnet_era.Args(dataset="cifar10", data_dir=str(tmp_path / "data"))
    train, _ = resnet_era.load_cifar(args)
    image, label = train[0]
    assert torch.equal(image, torch.from_numpy(first["data"][0].reshape(3, 32, 32))) and label == first["labels"][0]


def test_imagefolder_as_imagenet(tmp_path):
    """The ImageNet path on a tiny ImageFolder tree: class count from the folders, 224 px crops, torchvision resnet18."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 4), ("val", 2)):
        for cls in ("n01", "n02", "n03"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "data" / split / cls / f"{i}.png")
    proc = run_script(SCRIPT, "--dataset", "imagenet", "--data-dir", tmp_path / "data", "--arch", "resnet18", "--epochs", "1",
                      "--batch-size", "4", "--num-workers", "0", "--no-cuda", "--runs-dir", tmp_path / "runs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("recipe imagenet (lr 0.1 per 256 images")
    logged = scalars(only_run_dir(tmp_path / "runs"))
    assert logged["eval/top5"][0][1] == 1.0 and logged["eval/min_entropy"][0][1] >= 0.6 - 1e-5  # top-5 of 3 classes
    assert torch.load(only_run_dir(tmp_path / "runs") / "checkpoint.pt", weights_only=False)["model"]["fc.weight"].shape == (3, 512)


@pytest.mark.parametrize("arch,size", [("resnet20", 32), ("resnet18-cifar", 32), ("resnet50-cifar", 32),
                                       ("resnet18", 64), ("resnet50", 64)])
def test_archs_keep_torchvision_keys(arch, size, one_thread):
    model = resnet_era.make_model(arch, 7, 0.1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 7)
    keys = set(model.state_dict())
    if arch in ("resnet18", "resnet50"):
        assert keys == set(getattr(torchvision.models, arch)(num_classes=7).state_dict())
    elif arch.endswith("-cifar"):  # the same keys; only conv1 is 3x3
        assert keys == set(getattr(torchvision.models, arch[:-6])(num_classes=7).state_dict())
        assert model.conv1.weight.shape[-1] == 3
    else:  # He et al.'s CIFAR ResNet-20: 3 stages of 3 blocks, 16/32/64 channels
        assert {k.split(".")[0] for k in keys} == {"conv1", "bn1", "layer1", "layer2", "layer3", "fc"}
        assert len(model.layer3) == 3 and model.fc.in_features == 64


# benchmarks/grid_resnet.py: the paper's grid in one command, resumable
GRID = [sys.executable, str(ROOT / "benchmarks" / "grid_resnet.py")]


def run_grid(*flags):
    return subprocess.run([*GRID, *map(str, flags)], capture_output=True, text=True, timeout=600, env=script_env(), cwd=ROOT)


def test_grid_stop_continue_skip(tmp_path):
    """Ctrl-C stops the grid after the running cell saved its checkpoint (exit 130); the same command continues that
    cell with --resume (same run directory), runs the rest and writes the table and the diagram; a third call finds
    every cell finished and runs nothing."""
    flags = ["--dataset", "digits", "--seeds", "1", "--methods", "baseline", "era", "--settings", "plain",
             "--out", tmp_path / "grid", "--report", tmp_path / "report", "--", "--epochs", "3", "--batch-size", "32",
             "--train-subset", "128", "--test-subset", "32", "--save-every", "1", "--num-workers", "0", "--no-cuda"]
    proc = start_script("benchmarks/grid_resnet.py", *flags)
    code, out, err = signal_when(proc, lambda: any(tmp_path.rglob("checkpoint.pt")), signal.SIGINT)
    assert code == 130, out[-3000:] + err[-3000:]
    first = tmp_path / "grid" / "plain" / "baseline" / "seed1"
    assert not (first / "metrics.json").exists()

    again = run_grid(*flags)
    assert again.returncode == 0, again.stderr[-3000:] + again.stdout[-3000:]
    assert "resume" in again.stdout and len(list((first / "runs").iterdir())) == 1  # the same run, continued
    cells = sorted(tmp_path.glob("grid/plain/*/seed1/metrics.json"))
    assert len(cells) == 2 and all(json.loads(c.read_text())["epochs"] == 3.0 for c in cells)
    table = (tmp_path / "report.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| plain |")]
    assert [row.split("|")[2].strip() for row in rows] == ["baseline", "ERA H0=0.6"]
    assert all(len(re.findall(r"\d+\.\d+ ± \d+\.\d+", row)) == 5 for row in rows)
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    before = {c: c.stat().st_mtime_ns for c in cells}
    third = run_grid(*flags)
    assert third.returncode == 0 and sum(line.startswith("skip") for line in third.stdout.splitlines()) == 2, third.stdout
    assert {c: c.stat().st_mtime_ns for c in cells} == before and (tmp_path / "report.md").read_text() == table


@pytest.mark.slow
def test_digits_learns(tmp_path):
    """15 epochs of resnet8 on the real digits (the small recipe): both variants learn; ERA keeps its floor."""
    for era in ("--era", "--no-era"):
        proc = run_script(SCRIPT, "--dataset", "digits", "--num-workers", "0", "--no-cuda", era, "--runs-dir", tmp_path / era)
        assert proc.returncode == 0, proc.stderr[-3000:]
        logged = scalars(only_run_dir(tmp_path / era))
        assert logged["eval/top1"][-1][1] > 0.9
        assert logged["eval/min_entropy"][-1][1] >= (0.6 - 1e-5 if era == "--era" else 0)
