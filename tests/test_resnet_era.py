"""Tests for resnet_era.py, through the command line as a user runs it: a smoke run (logged tags, the ERA floor),
exact resume after SIGTERM/SIGINT with 0 and 2 data-loader workers, bad input, torchrun with 2 gloo processes, the
ImageFolder (ImageNet) path and the networks. CPU, one thread."""
import math
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision

from conftest import (ROOT, assert_bad_input, assert_same_scalars, only_run_dir, run_script, scalars, script_env,
                      signal_when, start_script)

sys.path.insert(0, str(ROOT))
import resnet_era  # noqa: E402  (only for make_model: the tests' own view of the network)

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


def test_smoke_tags_and_floor(smoke):
    run_dir, ckpt_path, stdout = smoke
    assert run_dir.name.startswith("digits__resnet_era__1__")
    logged = scalars(run_dir)
    assert EPOCH_TAGS <= set(logged)
    for tag in EPOCH_TAGS:
        assert [step for step, _ in logged[tag]] == [1] and math.isfinite(logged[tag][0][1]), tag
    assert logged["eval/min_entropy"][0][1] >= 0.6 - 1e-5  # ERA's floor holds even for an untrained network
    checkpoint = torch.load(ckpt_path, weights_only=False)
    assert checkpoint["global_step"] == 2 and set(checkpoint["model"]) == set(torchvision.models.resnet18().state_dict())


# Exact resume: 3 epochs of 4 steps (dropout, RandAugment, random erasing), a checkpoint every 2 steps.
RESUME = ["--dataset", "digits", "--epochs", "3", "--batch-size", "32", "--train-subset", "128", "--test-subset", "64",
          "--save-every", "2", "--log-every", "1", "--dropout", "0.2", "--augmentation", "randaugment", "--no-cuda"]


def test_sigterm_sigint_then_resume_is_exact_for_any_worker_count(tmp_path):
    """A run with 2 data-loader workers is stopped by SIGTERM after its first checkpoint, resumed, stopped by SIGINT
    after its next checkpoint, and resumed to the end: it logs exactly what an uninterrupted run with 0 workers logs."""
    reference = run_script(SCRIPT, *RESUME, "--num-workers", "0", "--runs-dir", tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    proc = start_script(SCRIPT, *RESUME, "--num-workers", "2", "--runs-dir", tmp_path / "cut")
    code, _, err = signal_when(proc, lambda: any((tmp_path / "cut").rglob("checkpoint.pt")), signal.SIGTERM)
    assert code == 143 and "--resume" in err.splitlines()[-1], err[-3000:]
    ckpt_path = next((tmp_path / "cut").rglob("checkpoint.pt"))
    first_stop = torch.load(ckpt_path, weights_only=False)["global_step"]
    mtime = ckpt_path.stat().st_mtime_ns
    proc = start_script(SCRIPT, "--resume", ckpt_path)
    code, _, err = signal_when(proc, lambda: ckpt_path.stat().st_mtime_ns != mtime, signal.SIGINT)
    assert code == 130, err[-3000:]
    second_stop = torch.load(ckpt_path, weights_only=False)["global_step"]
    assert 2 <= first_stop < second_stop < 12  # stopped twice, before the end
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
    logged = scalars(only_run_dir(tmp_path / "runs"))
    assert logged["eval/top5"][0][1] == 1.0 and logged["eval/min_entropy"][0][1] >= 0.6 - 1e-5  # top-5 of 3 classes
    assert torch.load(only_run_dir(tmp_path / "runs") / "checkpoint.pt", weights_only=False)["model"]["fc.weight"].shape == (3, 512)


@pytest.mark.parametrize("arch,size", [("resnet20", 32), ("resnet18-cifar", 32),
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


@pytest.mark.slow
def test_digits_learns(tmp_path):
    """15 epochs of resnet8 on the real digits: both variants learn; ERA keeps its floor."""
    for era in ("--era", "--no-era"):
        proc = run_script(SCRIPT, "--dataset", "digits", "--arch", "resnet8", "--epochs", "15", "--batch-size", "64",
                          "--lr", "0.05", "--warmup-epochs", "1", "--num-workers", "0", "--no-cuda", era, "--runs-dir", tmp_path / era)
        assert proc.returncode == 0, proc.stderr[-3000:]
        logged = scalars(only_run_dir(tmp_path / era))
        assert logged["eval/top1"][-1][1] > 0.9
        assert logged["eval/min_entropy"][-1][1] >= (0.6 - 1e-5 if era == "--era" else 0)
