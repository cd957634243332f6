"""sac_era.py through its command line: ERA's entropy, time-outs vs terminations, delta, signals and exact resume,
bad input, video under OSMesa, HumanoidBench."""
import importlib.util
import signal
import sys
from pathlib import Path

import pytest
import torch

from conftest import (ROOT, assert_bad_input, assert_same_scalars, events_written, only_run_dir, run_script, scalars,
                      signal_when, start_script)

sys.path.insert(0, str(ROOT))
import sac_era  # noqa: E402  (only for the baseline actor's density)

SCRIPT = "sac_era.py"
TINY = ["--learning-starts", "100", "--batch-size", "16", "--hidden-dim", "16", "--utd-ratio", "1", "--log-every", "10",
        "--eval-episodes", "1"]


def run(tmp_path, *flags, **env):
    proc = run_script(SCRIPT, *TINY, "--runs-dir", tmp_path, *flags, **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == "", "the start is not quiet"
    run_dir = only_run_dir(tmp_path)
    return run_dir, scalars(run_dir), torch.load(run_dir / "checkpoint.pt", weights_only=False)


def test_era_pins_the_entropy_and_time_outs_bootstrap(tmp_path):
    # cartpole never terminates: its 1000-step episode ends by a time-out, which must keep bootstrapping
    run_dir, logs, ckpt = run(tmp_path, "--env-id", "dm_control/cartpole-swingup-v0", "--total-timesteps", "1100",
                              "--eval-every", "0")
    for tag in ("losses/qf1_loss", "losses/qf2_loss", "losses/qf_loss", "losses/actor_loss", "losses/qf1_values",
                "charts/delta", "losses/delta_loss", "charts/SPS", "charts/env_steps", "eval/episodic_return"):
        assert tag in logs, tag
    assert "losses/alpha" not in logs  # SAC-ERA has no temperature
    assert logs["charts/episodic_length"] == [(1000, 1000)] and logs["eval/episodic_return"][0][0] == 1100
    # ERA pins the Gaussian's entropy at 0.25 x D (D = 1); the truncation to [-1, 1] only lowers it
    assert logs["charts/era_target_entropy"][0][1] == pytest.approx(0.25)
    assert all(v == pytest.approx(0.25, abs=1e-5) for _, v in logs["charts/entropy"])
    assert all(v <= 0.25 + 1e-5 for _, v in logs["charts/policy_entropy"])
    rb = ckpt["rb"]
    assert len(rb["obs"]) == 1100 and rb["terminations"].sum() == 0  # a time-out is not a termination
    breaks = torch.nonzero((rb["next_obs"][:-1] != rb["obs"][1:]).any(-1)).flatten().tolist()
    assert breaks == [999]  # consecutive transitions chain, except across the episode boundary
    assert ckpt["episode"] == 1 and len(ckpt["episode_actions"]) == 100  # saved at the end, mid-episode


def test_baseline_log_prob_is_the_tanh_gaussian_density():
    # the written-out log N(x_t; mean, std) with tanh's correction is torch.distributions.Normal's, at the same noise
    torch.manual_seed(0)
    actor, x = sac_era.Actor(5, 3, 16), torch.randn(64, 5) * 3
    torch.manual_seed(1)
    action, log_prob, _, log_std = actor.get_action(x)
    torch.manual_seed(1)
    mean, _ = actor(x)
    x_t = mean + log_std.exp() * torch.randn_like(mean)
    reference = torch.distributions.Normal(mean, log_std.exp()).log_prob(x_t) - torch.log(1 - torch.tanh(x_t).pow(2) + 1e-6)
    assert torch.allclose(action, torch.tanh(x_t), atol=1e-6)
    assert torch.allclose(log_prob, reference.sum(-1), atol=1e-4)


def test_no_era_is_sac_and_terminations_stop_bootstrapping(tmp_path):
    run_dir, logs, ckpt = run(tmp_path, "--env-id", "Hopper-v5", "--total-timesteps", "400", "--no-era")
    assert run_dir.name.startswith("Hopper-v5__sac_era_noera__")
    assert "losses/alpha" in logs and "losses/alpha_loss" in logs
    assert not any(tag in logs for tag in ("charts/era_target_entropy", "charts/delta", "losses/delta_loss"))
    assert logs["losses/alpha"][-1][1] < 1  # the temperature moves from its start at 1
    # random Hopper episodes end by falling: every episode boundary is a termination and nothing else is
    rb = ckpt["rb"]
    breaks = (rb["next_obs"][:-1] != rb["obs"][1:]).any(-1)
    assert breaks.sum() == len(logs["charts/episodic_return"]) > 1
    assert torch.equal(breaks.float(), rb["terminations"][:-1])


def test_learned_delta_closes_the_bounding_gap_with_action_repeat(tmp_path):
    run_dir, logs, ckpt = run(tmp_path, "--env-id", "dm_control/cartpole-balance-v0", "--total-timesteps", "300",
                              "--learn-delta", "--action-repeat", "2", "--entropy-per-dim", "1.3", "--eval-every", "0")
    # near the ceiling the truncation costs entropy, so delta rises and raises the Gaussian's entropy above 1.3
    delta = logs["charts/delta"][-1][1]
    assert delta > 0 and logs["charts/entropy"][-1][1] == pytest.approx(1.3 + delta, abs=1e-3)
    assert logs["charts/env_steps"][-1][1] == 2 * logs["charts/env_steps"][-1][0]


def test_signals_save_and_resume_exactly(tmp_path):
    flags = [*TINY, "--env-id", "Hopper-v5", "--total-timesteps", "600", "--learn-delta", "--eval-every", "300",
             "--save-every", "1"]
    full = run_script(SCRIPT, *flags, "--runs-dir", tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]
    expected = scalars(only_run_dir(tmp_path / "full"))
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        runs = tmp_path / sig.name
        proc = start_script(SCRIPT, *flags, "--runs-dir", runs)
        rc, out, err = signal_when(proc, events_written(runs), sig)
        checkpoint = only_run_dir(runs) / "checkpoint.pt"
        assert rc == code and "--resume" in err, err[-3000:]
        assert 0 < torch.load(checkpoint, weights_only=False)["global_step"] < 600  # at an episode's end, mid-run
        resumed = run_script(SCRIPT, "--resume", checkpoint)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert_same_scalars(scalars(only_run_dir(runs)), expected)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    runs = tmp_path_factory.mktemp("tiny")
    proc = run_script(SCRIPT, *TINY, "--env-id", "Hopper-v5", "--total-timesteps", "110", "--runs-dir", runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return only_run_dir(runs) / "checkpoint.pt"


def test_bad_input_one_line_exit_2(checkpoint, tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "truncated.pt").write_bytes(checkpoint.read_bytes()[:2000])
    torch.save({"script": "ppo_era.py", "args": {}}, tmp_path / "ppo.pt")
    cases = [  # (flags, the flag the message must name)
        (["--entropy-per-dim", "5"], "--entropy-per-dim"),
        (["--entropy-per-dim", "nan"], "--entropy-per-dim"),
        (["--policy-lr", "inf"], "--policy-lr"),
        (["--total-timesteps", "500", "--learning-starts", "500"], "--learning-starts"),
        (["--env-id", "HalfCheetah-v9"], "--env-id"),
        (["--batch-size", "many"], "--batch-size"),
        (["--resume", tmp_path / "missing.pt"], "--resume"),
        (["--resume", tmp_path / "empty.pt"], "--resume"),
        (["--resume", tmp_path / "truncated.pt"], "--resume"),
        (["--resume", tmp_path / "ppo.pt"], "--resume"),
        (["--resume", checkpoint, "--seed", "2"], "--seed"),
    ]
    for flags, flag in cases:
        assert_bad_input(SCRIPT, *flags, "--runs-dir", tmp_path / "runs", flag=flag, protect=[checkpoint])
    assert not (tmp_path / "runs").exists()


def test_capture_video_under_osmesa(tmp_path):
    if not importlib.util.find_spec("moviepy"):
        pytest.skip("--capture-video needs moviepy (pip install moviepy)")
    run_dir, logs, _ = run(tmp_path, "--env-id", "Hopper-v5", "--total-timesteps", "110", "--capture-video",
                           MUJOCO_GL="osmesa")
    assert list((run_dir / "videos" / "step110").glob("*.mp4")), "no video of the evaluation episode"


def test_humanoidbench_smoke_or_install_hint(tmp_path):
    if not importlib.util.find_spec("humanoid_bench"):
        line = assert_bad_input(SCRIPT, "--env-id", "h1-walk-v0", flag="--env-id")
        assert "pip install" in line and "humanoid-bench" in line
        pytest.skip("HumanoidBench is not installed: checked the one-line install hint")
    run_dir, logs, _ = run(tmp_path, "--env-id", "h1-walk-v0", "--total-timesteps", "150", "--eval-every", "0",
                           MUJOCO_GL="osmesa")
    # h1: D = 19; the Gaussian's entropy is the target 0.25 x 19 unless the sigma_min clamp binds, then above it
    assert all(v >= 0.25 * 19 - 1e-4 for _, v in logs["charts/entropy"])
    assert logs["charts/env_steps"][-1][1] == 2 * logs["charts/env_steps"][-1][0]  # action repeat 2
    assert Path(run_dir).name.startswith("h1-walk-v0__sac_era__")


@pytest.mark.slow
def test_compile_runs_on_cpu(tmp_path):
    proc = run_script(SCRIPT, *TINY, "--env-id", "Hopper-v5", "--total-timesteps", "130", "--compile", "--runs-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.compile: the first 1 updates took" in proc.stdout
    assert "losses/actor_loss" in scalars(only_run_dir(tmp_path))
