"""Tests for resnet_era.py: smoke runs (fake, digits), the ERA floor and ranking on a trained network, metrics,
2-process torchrun/gloo, exact resume after Ctrl-C, and clear errors. CPU only, ~1 min on 2 cores."""
import glob
import math
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import tyro
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import resnet_era  # noqa: E402
from era_core import softmax_entropy_floor  # noqa: E402

SCRIPT = os.path.join(ROOT, "resnet_era.py")
EPOCH_TAGS = {"train/loss", "train/top1", "eval/top1", "eval/top5", "eval/nll", "eval/ece", "eval/entropy",
              "eval/min_entropy", "charts/lr", "charts/images_per_second"}
TINY = dict(arch="resnet8", num_workers=0, cuda=False, log_every=1000)
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


@pytest.fixture(autouse=True)
def one_thread():
    """In-process runs share 2 cores with other jobs: one intra-op thread avoids oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def scalars(run_dir):
    acc = EventAccumulator(run_dir)
    acc.Reload()
    return acc, {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def one_run_dir(runs_dir):
    (run_dir,) = glob.glob(os.path.join(str(runs_dir), "*"))
    return run_dir


def cli(*flags):
    return [sys.executable, SCRIPT, "--no-cuda", "--arch", "resnet8", "--num-workers", "0", *flags]


@pytest.mark.parametrize("era", [True, False])
def test_fake_smoke(tmp_path, era):
    args = resnet_era.Args(dataset="fake", epochs=1, batch_size=32, train_subset=64, test_subset=32,
                           runs_dir=str(tmp_path), era=era, recipe="augmented", dropout=0.1, label_smoothing=0.1,
                           **TINY)
    metrics = resnet_era.main(args)
    run_dir = one_run_dir(tmp_path)
    assert os.path.basename(run_dir).startswith("fake__resnet_era" + ("__" if era else "_noera__"))
    acc, values = scalars(run_dir)
    assert EPOCH_TAGS <= set(values)
    for tag in EPOCH_TAGS:
        assert [s for s, _ in values[tag]] == [1] and math.isfinite(values[tag][0][1]), tag
    assert "hyperparameters/text_summary" in acc.Tags()["tensors"]
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 1 and 0 <= metrics["ece"] <= 1
    assert metrics["nll"] == pytest.approx(values["eval/nll"][0][1], rel=1e-6)
    if era:  # the floor holds even for an untrained network's output
        assert metrics["min_entropy"] >= 0.6 - 1e-5
    ckpt = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False)
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["args"]["era"]) == (1, 0, era)


def test_digits_era_floor_and_ranking(tmp_path):
    """Train on the real digits; then on every test image the ERA output's entropy is >= the floor and its
    top-1/top-5 equal those of the raw logits, also after sharpening the raw logits so the floor binds."""
    args = resnet_era.Args(dataset="digits", epochs=2, batch_size=64, warmup_epochs=0, lr=0.05,
                           runs_dir=str(tmp_path), **TINY)
    metrics = resnet_era.main(args)
    assert metrics["top1"] > 0.2  # 10 classes: chance is 0.1 (this seed: 0.38; 10 epochs: slow test)
    assert metrics["min_entropy"] >= 0.6 - 1e-5
    _, values = scalars(one_run_dir(tmp_path))
    assert [s for s, _ in values["eval/top1"]] == [1, 2]
    assert values["train/loss"][1][1] < values["train/loss"][0][1]

    ckpt = torch.load(os.path.join(one_run_dir(tmp_path), "checkpoint.pt"), weights_only=False)
    model = resnet_era.Classifier(resnet_era.make_backbone("resnet8", 10, 0.0), 0.6)
    model.load_state_dict(ckpt["model"])
    model.eval()
    _, test = resnet_era.make_datasets(args)
    x = torch.stack([test[i][0] for i in range(len(test))])
    with torch.no_grad():
        raw = model.backbone(x)
        for scale in (1.0, 30.0):  # 30x: a confident network whose raw entropy is far below the floor
            z = raw * scale
            out = softmax_entropy_floor(z, 0.6) if scale != 1.0 else model(x)
            logp = torch.log_softmax(out, -1)
            entropy = -(logp.exp() * logp).sum(-1)
            assert entropy.min() >= 0.6 - 1e-5
            assert torch.equal(out.argmax(-1), z.argmax(-1))
            # the ranking is kept: z_i > z_j never gives out_i < out_j (classes of negligible probability may
            # tie in float32, so top-5 agrees up to such ties)
            assert not ((z[:, :, None] > z[:, None, :]) & (out[:, :, None] < out[:, None, :])).any()
        raw_logp = torch.log_softmax(raw * 30.0, -1)
        assert (-(raw_logp.exp() * raw_logp).sum(-1) < 0.6).float().mean() > 0.5  # the floor did bind above


def test_prediction_stats_match_numpy():
    torch.manual_seed(0)
    logits, labels = 3 * torch.randn(200, 7), torch.randint(0, 7, (200,))
    sums, ece_bins, min_entropy = resnet_era.prediction_stats(logits, labels)
    p = torch.softmax(logits.double(), -1).numpy()
    y = labels.numpy()
    conf, pred = p.max(1), p.argmax(1)
    entropy = -(p * np.log(p)).sum(1)
    top5 = (np.argsort(-p, 1)[:, :5] == y[:, None]).any(1)
    bins = np.minimum((conf * 15).astype(int), 14)
    ece = sum(abs((pred == y)[bins == b].sum() - conf[bins == b].sum()) for b in range(15)) / 200
    np.testing.assert_allclose(sums.numpy(), [200, (pred == y).sum(), top5.sum(), -np.log(p[np.arange(200), y]).sum(),
                                              entropy.sum()], rtol=1e-5)
    np.testing.assert_allclose((ece_bins[:, 2] - ece_bins[:, 1]).abs().sum().item() / 200, ece, rtol=1e-5)
    np.testing.assert_allclose(min_entropy.item(), entropy.min(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch,size", [("resnet20", 32), ("resnet18-cifar", 32), ("resnet18", 64), ("resnet50", 64)])
def test_archs_output_classes(arch, size):
    model = resnet_era.make_backbone(arch, 7, 0.1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_torchrun_gloo_two_processes_identical(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           *cli("--dataset", "fake", "--epochs", "1", "--batch-size", "32", "--train-subset", "64",
                "--test-subset", "32", "--runs-dir", str(tmp_path))[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = dict(re.findall(r"rank (\d): state sha256 ([0-9a-f]{64})", proc.stdout))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]
    _, values = scalars(one_run_dir(tmp_path))
    assert EPOCH_TAGS <= set(values)
    ckpt = torch.load(os.path.join(one_run_dir(tmp_path), "checkpoint.pt"), weights_only=False)
    assert len(ckpt["rng"]) == 2  # both processes' RNG states, for an exact resume


def test_sigint_then_resume_is_exact(tmp_path):
    """Ctrl-C mid-epoch saves; --resume then ends with bit-identical weights and logs as an uninterrupted run
    (the interrupted run is a subprocess that gets a real SIGINT; the others run in-process, one thread too)."""
    flags = ["--dataset", "fake", "--epochs", "2", "--batch-size", "32", "--train-subset", "256",
             "--test-subset", "32", "--warmup-epochs", "1", "--log-every", "1"]
    cut = subprocess.Popen(cli(*flags, "--runs-dir", str(tmp_path / "cut")), stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True, env=ENV)
    for line in cut.stdout:
        if line.startswith("epoch 1 step 2/8"):  # 6 steps of margin before the epoch would end
            cut.send_signal(signal.SIGINT)
    assert cut.wait(timeout=120) == 0
    ckpt_path = os.path.join(one_run_dir(tmp_path / "cut"), "checkpoint.pt")
    ckpt = torch.load(ckpt_path, weights_only=False)
    assert ckpt["epoch"] == 0 and 2 <= ckpt["step_in_epoch"] < 8  # stopped mid-epoch 1
    resnet_era.main(resnet_era.Args(resume=ckpt_path, **TINY))
    reference = resnet_era.Args(dataset="fake", epochs=2, batch_size=32, train_subset=256, test_subset=32,
                                warmup_epochs=1, runs_dir=str(tmp_path / "full"), **TINY)
    resnet_era.main(reference)

    a = torch.load(os.path.join(one_run_dir(tmp_path / "full"), "checkpoint.pt"), weights_only=False)
    b = torch.load(ckpt_path, weights_only=False)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (2, 16)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    _, va = scalars(one_run_dir(tmp_path / "full"))
    _, vb = scalars(one_run_dir(tmp_path / "cut"))
    for tag in EPOCH_TAGS - {"charts/images_per_second"}:
        assert va[tag] == vb[tag], tag  # the interrupted epoch's train loss included


def test_crash_leaves_checkpoint_that_resumes_exactly(tmp_path, monkeypatch):
    """An exception (here in the 2nd evaluation) saves the last completed step; resuming gives the same run."""
    common = dict(dataset="fake", epochs=2, batch_size=32, train_subset=64, test_subset=32, **TINY)
    reference = resnet_era.main(resnet_era.Args(runs_dir=str(tmp_path / "ref"), **common))
    evaluate, calls = resnet_era.evaluate, []

    def failing_evaluate(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return evaluate(*a, **k)

    monkeypatch.setattr(resnet_era, "evaluate", failing_evaluate)
    with pytest.raises(RuntimeError, match="simulated crash"):
        resnet_era.main(resnet_era.Args(runs_dir=str(tmp_path / "crash"), **common))
    ckpt_path = os.path.join(one_run_dir(tmp_path / "crash"), "checkpoint.pt")
    ckpt = torch.load(ckpt_path, weights_only=False)
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]) == (1, 2, 4)  # epoch 2 trained, not logged
    monkeypatch.setattr(resnet_era, "evaluate", evaluate)
    resumed = resnet_era.main(resnet_era.Args(resume=ckpt_path, **TINY))
    assert resumed == reference
    a = torch.load(os.path.join(one_run_dir(tmp_path / "ref"), "checkpoint.pt"), weights_only=False)["model"]
    b = torch.load(ckpt_path, weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("overrides,match", [
    (dict(dataset="imagenet", data_dir="/nonexistent/imagenet"), "--data-dir"),
    (dict(dataset="digits", min_entropy=2.5), r"--min-entropy.*admissible range.*2\.24"),
    (dict(dataset="digits", min_entropy=-0.2), "--min-entropy"),
    (dict(dataset="cifar100", min_entropy=4.6, data_dir="/nonexistent"), r"--min-entropy.*4\.54"),
    (dict(dataset="fake", sync_bn=True), "--sync-bn needs CUDA"),
    (dict(dataset="fake", label_smoothing=1.0), "--label-smoothing"),
    (dict(dataset="fake", dropout=1.0), "--dropout"),
    (dict(dataset="fake", arch="vgg11"), "--arch"),
    (dict(dataset="mnist"), "--dataset"),
    (dict(dataset="fake", train_subset=16, batch_size=32), "--batch-size"),
    (dict(dataset="fake", resume="/nonexistent/checkpoint.pt"), "--resume"),
])
def test_bad_flags_raise_clear_errors(tmp_path, overrides, match):
    args = resnet_era.Args(**{**TINY, "runs_dir": str(tmp_path), **overrides})
    with pytest.raises(ValueError, match=match):
        resnet_era.main(args)


def test_cli_rejects_unknown_choices(capsys):
    for flag, value in (("--dataset", "mnist"), ("--arch", "vgg11"), ("--recipe", "autoaugment")):
        with pytest.raises(SystemExit) as exit_info:
            tyro.cli(resnet_era.Args, args=[flag, value])
        assert exit_info.value.code != 0
        err = capsys.readouterr().err
        assert value in err and flag in err


def test_imagefolder_layout_as_imagenet(tmp_path):
    """The ImageNet path on a tiny ImageFolder tree: class count from the folders, 224 px crops, resnet18."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 4), ("val", 2)):
        for cls in ("n01", "n02", "n03"):
            os.makedirs(tmp_path / "data" / split / cls)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "data" / split / cls / f"{i}.png")
    args = resnet_era.Args(dataset="imagenet", data_dir=str(tmp_path / "data"), epochs=1, batch_size=4,
                           runs_dir=str(tmp_path / "runs"), **{**TINY, "arch": "resnet18"})
    assert resnet_era.num_classes_of(args) == 3
    metrics = resnet_era.main(args)
    assert metrics["min_entropy"] >= 0.6 - 1e-5 and 0 <= metrics["top1"] <= metrics["top5"] == 1.0  # top-5 of 3
    ckpt = torch.load(os.path.join(one_run_dir(tmp_path / "runs"), "checkpoint.pt"), weights_only=False)
    assert ckpt["model"]["backbone.fc.1.weight"].shape == (3, 512)
    args.min_entropy = 1.1  # admissible for 1000 classes, not for 3: 1 + ln(3 ln4 / 4) = 1.0390
    with pytest.raises(ValueError, match=r"--min-entropy.*1\.039"):
        resnet_era.main(args)


@pytest.mark.slow
def test_compile_smoke(tmp_path):
    """--compile (inductor, needs a C++ compiler on CPU) trains and keeps the floor; minutes on 2 cores."""
    metrics = resnet_era.main(resnet_era.Args(dataset="fake", epochs=1, batch_size=32, train_subset=64,
                                              test_subset=32, compile=True, runs_dir=str(tmp_path), **TINY))
    assert math.isfinite(metrics["nll"]) and metrics["min_entropy"] >= 0.6 - 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("era", [True, False])
def test_digits_learns(tmp_path, era):
    """10 epochs of resnet8 on the real digits reach > 90 % test accuracy with and without ERA."""
    metrics = resnet_era.main(resnet_era.Args(dataset="digits", epochs=10, batch_size=64, lr=0.05, warmup_epochs=1,
                                              era=era, runs_dir=str(tmp_path), **TINY))
    assert metrics["top1"] > 0.9
    if era:
        assert metrics["min_entropy"] >= 0.6 - 1e-5
