"""ppo_era.py through its command line, as a user or a cluster scheduler drives it (docs/skeleton.md).

What ERA does to the entropy (pin: exactly the target; floor: PPO unchanged until the floor binds), exact resume
after SIGTERM/SIGINT (sync and async vector envs, Gym MuJoCo and dm_control, episodes cut mid-way and replayed),
the bad-input table, and a headless run under MUJOCO_GL=osmesa that records an evaluation video.
Tiny sizes: an iteration is 2 sub-envs x 64 steps = 128 env steps.
"""
import math
import signal

import pytest
import torch

from conftest import (assert_bad_input, assert_same_scalars, events_written, only_run_dir, run_script, scalars,
                      signal_when, start_script)

SCRIPT = "ppo_era.py"
TINY = ["--num-envs", "2", "--num-steps", "64", "--num-minibatches", "4", "--update-epochs", "2", "--log-every", "128",
        "--eval-episodes", "1", "--no-cuda"]
HALF_LOG_2PI_E = 0.5 * math.log(2 * math.pi * math.e)  # Gaussian entropy per dimension at sigma = 1
LOSS_TAGS = {"losses/value_loss", "losses/policy_loss", "losses/entropy", "losses/old_approx_kl", "losses/approx_kl",
             "losses/clipfrac", "losses/explained_variance", "charts/learning_rate", "charts/SPS"}


def tiny_run(tmp_path, name, *flags, env_id="Hopper-v5", total=256):
    proc = run_script(SCRIPT, "--env-id", env_id, *TINY, "--total-timesteps", total, "--eval-every", total,
                      "--runs-dir", tmp_path / name, *flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, scalars(only_run_dir(tmp_path / name))


def values(logged, tag):
    return [v for _, v in logged[tag]]


def test_pin_holds_the_entropy_at_the_target(tmp_path):
    proc, logged = tiny_run(tmp_path, "pin")
    assert proc.stderr == "", proc.stderr  # a quiet start: no renderer or GLFW warnings
    assert LOSS_TAGS | {"charts/era_target_entropy", "eval/episodic_return", "charts/episodic_return"} <= set(logged)
    assert [s for s, _ in logged["losses/entropy"]] == [128, 256] and [s for s, _ in logged["eval/episodic_return"]] == [256]
    target = -0.3 * 3  # Hopper: D = 3
    assert values(logged, "charts/era_target_entropy") == pytest.approx([target] * 2, abs=1e-6)
    assert values(logged, "losses/entropy") == pytest.approx([target] * 2, abs=1e-5)  # pinned, while the policy trains
    run_dir = only_run_dir(tmp_path / "pin")
    assert run_dir.name.startswith("Hopper-v5__ppo_era__1__")
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert (checkpoint["script"], checkpoint["iteration"], checkpoint["global_step"]) == (SCRIPT, 2, 256)


def test_floor_is_ppo_until_it_binds(tmp_path):
    # CleanRL's start (log-std 0: 1.42 nats per dimension) is far above the default floor (-0.3 per dimension):
    # the floor never binds and PPO-ERA floor logs what PPO logs, bit for bit
    _, floor = tiny_run(tmp_path, "floor", "--era-mode", "floor")
    _, ppo = tiny_run(tmp_path, "ppo", "--no-era")
    assert floor.pop("charts/era_target_entropy")[0][1] == pytest.approx(-0.9)
    assert_same_scalars(floor, ppo)
    assert values(ppo, "losses/entropy")[0] == pytest.approx(3 * HALF_LOG_2PI_E, abs=0.05)
    # started below the floor (log-std -3: 3 x -1.58 nats), PPO-ERA floor sits on it (-0.9) while it trains
    _, low_floor = tiny_run(tmp_path, "low_floor", "--era-mode", "floor", "--init-log-std", "-3")
    assert values(low_floor, "losses/entropy") == pytest.approx([-0.9] * 2, abs=1e-5)


@pytest.mark.parametrize("env_id, vector_env, sig", [("Hopper-v5", "sync", signal.SIGTERM),
                                                      ("dm_control/cheetah-run-v0", "async", signal.SIGINT)])
def test_signal_saves_and_resume_is_exact(tmp_path, env_id, vector_env, sig):
    """A signal mid-run: the iteration finishes, checkpoint.pt is written, exit 128 + signal; `--resume PATH` alone
    (SIGTERM), or with the run's own flags repeated as benchmarks/run.py does (SIGINT), then logs exactly what an
    uninterrupted run logs (its sub-envs replay their unfinished episodes). The SIGINT goes to the whole process group,
    as a terminal's Ctrl-C does: the async sub-env workers get it too (they inherit the handler; a worker that raised
    KeyboardInterrupt crashed the run before the handlers were installed ahead of the env setup)."""
    flags = ["--env-id", env_id, "--vector-env", vector_env, *TINY, "--total-timesteps", "1024", "--eval-every",
             "512" if env_id == "Hopper-v5" else "0", "--save-every", "128"]  # a dm_control evaluation: 1000 steps
    full = run_script(SCRIPT, *flags, "--runs-dir", tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]
    proc = start_script(SCRIPT, *flags, "--runs-dir", tmp_path / "cut")
    code, _, err = signal_when(proc, events_written(tmp_path / "cut"), sig=sig, group=sig == signal.SIGINT)
    assert code == 128 + sig, err[-3000:]
    checkpoint_path = next((tmp_path / "cut").rglob("checkpoint.pt"))
    assert f"--resume {checkpoint_path}" in err
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    assert checkpoint["global_step"] < 1024, "the signal came after the end: nothing was resumed"
    assert any(len(actions) for _, actions in checkpoint["episodes"])  # an episode was cut and will be replayed
    repeated = [] if sig == signal.SIGTERM else [*flags, "--runs-dir", tmp_path / "cut"]
    resumed = run_script(SCRIPT, *repeated, "--resume", checkpoint_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_scalars(scalars(only_run_dir(tmp_path / "cut")), scalars(only_run_dir(tmp_path / "full")))
    changed = run_script(SCRIPT, *repeated, "--seed", "9", "--resume", checkpoint_path)
    assert changed.returncode == 2 and changed.stderr.strip() == ("error: --seed cannot change with --resume, which "
                                                                  "continues the run with its saved flags (only "
                                                                  "--total-timesteps and --cuda may change)")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A finished tiny run's checkpoint, a truncated and an empty copy, another script's checkpoint and one of an
    older version of this script (another agent layout)."""
    tmp = tmp_path_factory.mktemp("checkpoints")
    tiny_run(tmp, "run", total=128)
    good = next((tmp / "run").rglob("checkpoint.pt"))
    (tmp / "truncated.pt").write_bytes(good.read_bytes()[:2000])
    (tmp / "empty.pt").write_bytes(b"")
    torch.save({"script": "sac_era.py", "args": {"seed": 1}}, tmp / "sac.pt")
    old = torch.load(good, weights_only=False)  # as saved before ERA became a parametrization of the log-std
    old["agent"]["actor_logstd"] = old["agent"].pop("parametrizations.actor_logstd.original")
    torch.save(old, tmp / "old.pt")
    return tmp, good


@pytest.mark.parametrize("flags, flag", [
    (["--num-minibatches", "5"], "--num-minibatches"),  # does not divide the 128-step batch
    (["--target-entropy-per-dim", "nan"], "--target-entropy-per-dim"),
    (["--era-mode", "ceiling"], "--era-mode"),
    (["--env-id", "CartPole-v1"], "--env-id"),  # discrete actions
    (["--resume", "{tmp}/missing.pt"], "--resume"),
    (["--resume", "{tmp}/empty.pt"], "--resume"),
    (["--resume", "{tmp}/truncated.pt"], "--resume"),
    (["--resume", "{tmp}/sac.pt"], "--resume"),
    (["--resume", "{tmp}/old.pt"], "--resume"),
    (["--resume", "{good}", "--seed", "2"], "--seed"),  # only --total-timesteps and --cuda may change
])
def test_bad_input(checkpoints, tmp_path, flags, flag):
    tmp, good = checkpoints
    flags = [f.format(tmp=tmp, good=good) for f in flags]
    base = [] if "--resume" in flags else [*TINY, "--runs-dir", tmp_path / "runs"]
    assert_bad_input(SCRIPT, *base, *flags, flag=flag, protect=[good])
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_osmesa_run_records_evaluation_video(tmp_path):
    """Headless rendering: MUJOCO_GL=osmesa (triton's LLVM loaded first, so no segfault) and --capture-video."""
    proc = run_script(SCRIPT, "--env-id", "Hopper-v5", *TINY, "--total-timesteps", "128", "--eval-every", "128",
                      "--capture-video", "--runs-dir", tmp_path, MUJOCO_GL="osmesa")
    assert proc.returncode == 0, proc.stderr[-3000:]
    videos = list((only_run_dir(tmp_path) / "videos").rglob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000, videos
