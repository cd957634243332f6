"""Tests for ppo_era.py: smoke runs (Gym MuJoCo, dm_control), the ERA entropy property, exact resume after
Ctrl-C, --no-era, flag errors and the time-limit truncation bootstrap. Tiny sizes: ~1 min on 2 CPU cores."""
import glob
import math
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
import tyro
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import ppo_era  # noqa: E402

LOSS_TAGS = ["losses/value_loss", "losses/policy_loss", "losses/entropy", "losses/old_approx_kl",
             "losses/approx_kl", "losses/clipfrac", "losses/explained_variance"]
CLEANRL_TAGS = LOSS_TAGS + ["charts/SPS", "charts/learning_rate", "eval/episodic_return"]
EPISODE_TAGS = ["charts/episodic_return", "charts/episodic_length"]  # written when a training episode ends


def tiny(tmp_path, **overrides):
    kwargs = dict(env_id="Hopper-v5", num_envs=2, num_steps=64, num_minibatches=4, update_epochs=2,
                  total_timesteps=256, eval_every=0, eval_episodes=2, save_every=0, runs_dir=str(tmp_path),
                  cuda=False)
    kwargs.update(overrides)
    return ppo_era.Args(**kwargs)


def scalars(run_dir):
    acc = EventAccumulator(run_dir)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def check_run(out, args, era, episodes_end=True):
    logs = scalars(out["run_dir"])
    tags = CLEANRL_TAGS + (["charts/era_target_entropy"] if era else []) + (EPISODE_TAGS if episodes_end else [])
    assert set(tags) <= set(logs), set(tags) - set(logs)
    iterations = args.total_timesteps // (args.num_envs * args.num_steps)
    for tag in LOSS_TAGS:
        assert len(logs[tag]) == iterations
        assert all(math.isfinite(v) for _, v in logs[tag]), tag
    assert os.path.isfile(out["checkpoint"])
    return logs


def test_smoke_gym_era_entropy_pinned(tmp_path):
    args = tiny(tmp_path)
    out = ppo_era.main(args)
    assert os.path.basename(out["run_dir"]).startswith("Hopper-v5__ppo_era__1__")
    logs = check_run(out, args, era=True)
    target = -0.3 * 3  # Hopper: D = 3
    assert all(v == pytest.approx(target, abs=1e-6) for _, v in logs["charts/era_target_entropy"])
    # ERA pins the Gaussian entropy at the target (the sigma_min clamp cannot bind at these sizes)
    assert all(v == pytest.approx(target, abs=1e-5) for _, v in logs["losses/entropy"])
    ckpt = torch.load(out["checkpoint"], weights_only=False)
    assert ckpt["iteration"] == 2 and ckpt["global_step"] == 256 and ckpt["obs_rms"]["count"] > 256
    # the trained raw log-std moved (training re-split the budget) while the policy entropy stayed at the target
    agent = ppo_era.Agent(11, 3, args)
    agent.load_state_dict(ckpt["agent"])
    assert agent.actor_logstd.abs().max() > 1e-4
    _, _, entropy, _ = agent.get_action_and_value(torch.randn(7, 11))
    torch.testing.assert_close(entropy, torch.full((7,), target), rtol=0, atol=1e-5)


def test_smoke_dm_control_state_dependent_era(tmp_path):
    args = tiny(tmp_path, env_id="dm_control/cheetah-run-v0", num_steps=32, total_timesteps=128,
                eval_episodes=1, state_dependent_std=True, target_entropy_per_dim=-0.5)
    out = ppo_era.main(args)
    logs = check_run(out, args, era=True, episodes_end=False)  # dm_control episodes last 1000 steps
    target = -0.5 * 6  # cheetah: D = 6
    assert all(v == pytest.approx(target, abs=1e-5) for _, v in logs["losses/entropy"])
    # one 1000-step evaluation episode of a near-zero-mean policy: a finite, bounded dm_control return
    assert len(out["eval_returns"]) == 1 and 0 <= out["eval_returns"][0][1] <= 1000


def test_no_era_is_cleanrl_ppo(tmp_path):
    args = tiny(tmp_path, era=False, total_timesteps=128)
    out = ppo_era.main(args)
    assert "__ppo_era_noera__" in os.path.basename(out["run_dir"])
    logs = check_run(out, args, era=False)
    assert "charts/era_target_entropy" not in logs
    # CleanRL's log-std vector starts at 0 (sigma = 1): entropy D*log sqrt(2 pi e), free to move
    agent = ppo_era.Agent(11, 3, args)
    _, _, entropy, _ = agent.get_action_and_value(torch.zeros(5, 11))
    assert torch.allclose(entropy, torch.full((5,), 3 * ppo_era.HALF_LOG_2PI_E))
    assert logs["losses/entropy"][0][1] > 3 * ppo_era.HALF_LOG_2PI_E - 0.1


def test_resume_after_ctrl_c_is_exact(tmp_path, monkeypatch):
    """Uninterrupted 4 iterations vs Ctrl-C during iteration 3 (async envs) + --resume: same iterations 3-4."""
    common = dict(total_timesteps=512, eval_every=2, save_every=0)
    full = ppo_era.main(tiny(tmp_path / "full", **common))

    class CtrlCAtIteration3(ppo_era.SummaryWriter):
        def add_scalar(self, tag, value, global_step=None, *args, **kwargs):
            if tag == "charts/SPS" and global_step == 3 * 128:
                raise KeyboardInterrupt
            return super().add_scalar(tag, value, global_step, *args, **kwargs)

    monkeypatch.setattr(ppo_era, "SummaryWriter", CtrlCAtIteration3)
    with pytest.raises(KeyboardInterrupt):
        ppo_era.main(tiny(tmp_path / "cut", vector_env="async", **common))
    monkeypatch.undo()
    (ckpt_path,) = glob.glob(str(tmp_path / "cut" / "*" / "checkpoint.pt"))
    assert torch.load(ckpt_path, weights_only=False)["iteration"] == 2  # the last finished iteration
    resumed = ppo_era.main(ppo_era.Args(resume=ckpt_path, cuda=False))
    assert resumed["run_dir"] == os.path.dirname(ckpt_path)
    assert [h["iteration"] for h in resumed["history"]] == [3, 4]
    for got, want in zip(resumed["history"], full["history"][2:]):
        for key in want:
            if key != "charts/SPS":
                assert got[key] == want[key], (got["iteration"], key, got[key], want[key])
    assert resumed["eval_returns"] == full["eval_returns"][1:]
    # a finished run resumed again only evaluates the reloaded agent (normaliser statistics restored)
    again = ppo_era.main(ppo_era.Args(resume=ckpt_path, cuda=False))
    assert again["history"] == [] and again["eval_returns"] == full["eval_returns"][1:]


@pytest.mark.parametrize("overrides, flag", [
    (dict(num_minibatches=5), "--num-minibatches"),
    (dict(total_timesteps=100), "--total-timesteps"),
    (dict(target_entropy_per_dim=1.5), "--target-entropy-per-dim"),  # above log sqrt(2 pi e) + 0
    (dict(target_entropy_per_dim=-6.6), "--target-entropy-per-dim"),  # below -8 + log sqrt(2 pi e)
    (dict(log_std_min=0.0), "--log-std-min"),
    (dict(env_id="NoSuchEnv-v0"), "--env-id"),
    (dict(resume="/nonexistent/checkpoint.pt"), "--resume"),
    (dict(num_envs=0), "--num-envs"),
    (dict(gamma=1.5), "--gamma"),
])
def test_bad_flags(tmp_path, overrides, flag):
    with pytest.raises(ValueError, match=flag):
        ppo_era.check_args(tiny(tmp_path, **overrides))


def test_bad_flags_no_era_skips_era_checks(tmp_path):
    ppo_era.check_args(tiny(tmp_path, era=False, target_entropy_per_dim=5.0))


def test_cli_error(tmp_path):
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "ppo_era.py"), "--num-steps", "64", "--num-minibatches",
                          "3", "--total-timesteps", "64", "--no-cuda", "--runs-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--num-minibatches (3) must divide" in bad.stderr
    assert not os.listdir(tmp_path)  # the error comes before any run dir, env or network is made


def test_help_says_target_is_unverified(capsys):
    with pytest.raises(SystemExit) as exit_info:
        tyro.cli(ppo_era.Args, args=["--help"])
    helptext = capsys.readouterr().out
    assert exit_info.value.code == 0 and "UNVERIFIED" in helptext and "--no-era" in helptext


def test_truncation_bootstraps_from_final_obs():
    spec = gym.spec("HalfCheetah-v5")
    if "HalfCheetahShort-v5" not in gym.registry:
        gym.register("HalfCheetahShort-v5", entry_point=spec.entry_point, max_episode_steps=5)
    envs = ppo_era.make_vector_env("HalfCheetahShort-v5", 2, "sync", gym.vector.AutoresetMode.SAME_STEP)
    plain = gym.make("HalfCheetahShort-v5")  # the same episode, stepped by hand
    envs.reset(seed=3)
    plain.reset(seed=3)
    actions = np.random.default_rng(0).uniform(-1, 1, (5, 2, 6)).astype(np.float32)
    for t in range(5):
        obs, _, terminations, truncations, infos = envs.step(actions[t])
        plain_obs, _, _, plain_truncated, _ = plain.step(actions[t, 0])
        assert truncations.all() == (t == 4) and not terminations.any()
    assert plain_truncated
    np.testing.assert_array_equal(infos["final_obs"][0], plain_obs)  # the episode's last obs...
    assert not np.array_equal(obs[0], plain_obs)  # ...while the returned obs already starts the next one
    envs.close()

    agent = ppo_era.Agent(17, 6, ppo_era.Args())
    obs_rms = ppo_era.RunningMeanStd((17,))
    obs_rms.update(np.random.default_rng(1).normal(size=(50, 17)))
    final_values = agent.get_value(ppo_era.normalize_obs(np.stack(infos["final_obs"]), obs_rms, "cpu")).flatten()
    bonus = ppo_era.truncation_bootstrap(agent, terminations, truncations, infos, obs_rms, 0.9)
    torch.testing.assert_close(bonus, 0.9 * final_values.detach(), rtol=0, atol=1e-7)
    # an episode that terminated on the same step gets no bootstrap
    bonus = ppo_era.truncation_bootstrap(agent, np.array([True, False]), truncations, infos, obs_rms, 0.9)
    assert bonus[0] == 0 and bonus[1] == pytest.approx(0.9 * final_values[1].item(), abs=1e-7)


def test_gae_with_truncation_matches_reference():
    """gae() on bootstrapped rewards == per-env reference with explicit next-state values."""
    rng = np.random.default_rng(0)
    T, N, gamma, lam = 40, 3, 0.9, 0.8
    r, v, final_v = rng.normal(size=(T, N)), rng.normal(size=(T, N)), rng.normal(size=(T, N))
    next_value = rng.normal(size=N)
    term = rng.random((T, N)) < 0.08
    trunc = ~term & (rng.random((T, N)) < 0.08)
    done = term | trunc
    reference = np.zeros((T, N))
    for n in range(N):
        adv_next = 0.0
        for t in reversed(range(T)):
            if done[t, n]:  # the next state is the episode's final obs: V(final) on time-out, 0 on termination
                next_v, adv_next = (final_v[t, n] if trunc[t, n] else 0.0), 0.0
            else:
                next_v = v[t + 1, n] if t + 1 < T else next_value[n]
            delta = r[t, n] + gamma * next_v - v[t, n]
            reference[t, n] = adv_next = delta + gamma * lam * adv_next
    f = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    dones = np.concatenate([np.zeros((1, N)), done[:-1]])  # dones[t]: obs[t] starts a new episode
    rewards = r + gamma * final_v * trunc  # what truncation_bootstrap adds
    got = ppo_era.gae(f(rewards), f(v), f(dones), f(next_value)[None], f(done[-1].astype(float)), gamma, lam)
    np.testing.assert_allclose(got.numpy(), reference, rtol=0, atol=1e-12)


def test_env_snapshot_is_exact_across_resets():
    """The sub-env state (physics, RNG, wrapper counters) restores bit-exactly, also across a reset."""
    for env_id, warmup in [("Hopper-v5", 5), ("dm_control/cheetah-run-v0", 990)]:
        env = ppo_era.make_env(env_id, 0)()
        env.reset(seed=1)
        actions = np.random.default_rng(0).uniform(-1, 1, (warmup + 60, env.action_space.shape[0]))

        def play(acts):
            out = []
            for a in acts:
                o, r, te, tr, _ = env.step(a)
                out.append((o.copy(), r, te, tr))
                if te or tr:
                    out.append(env.reset()[0].copy())
            return out

        play(actions[:warmup])
        snapshot = env.get_snapshot()
        first = play(actions[warmup:])
        assert any(len(x) != 4 for x in first), f"{env_id}: no reset happened after the snapshot"
        env.set_snapshot([snapshot])
        second = play(actions[warmup:])
        for a, b in zip(first, second, strict=True):
            if isinstance(a, tuple):
                np.testing.assert_array_equal(a[0], b[0])
                assert a[1:] == b[1:]
            else:
                np.testing.assert_array_equal(a, b)
        env.close()
