"""Tests for tdmpc2_era.py: math helpers, networks, planner, replay, env snapshots, smoke runs, exact resume,
Ctrl-C, --no-era and flag errors. Tiny models (real Args fields) keep the default suite fast on CPU."""
import math
import os
import signal
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import era_core  # noqa: E402
import tdmpc2_era as T  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

ENV = "dm_control/cartpole-swingup-v0"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is fastest, and more threads thrash on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(tmp_path, **kw):
    """A real but tiny configuration: 20-step episodes, 16-wide networks, a small planner."""
    base = dict(env_id=ENV, model_size=1, latent_dim=16, mlp_dim=16, enc_dim=16, num_samples=32, num_elites=4,
                num_pi_trajs=4, iterations=2, batch_size=8, episode_length=20, seed_steps=20, total_timesteps=60,
                eval_every=40, eval_episodes=1, log_every=5, save_every=0, cuda=False, runs_dir=str(tmp_path))
    base.update(kw)
    return T.Args(**base)


def scalars(run_dir):
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# ------------------------------------------------------------------------------------------------ math
def test_symlog_symexp_inverse():
    x = torch.cat([torch.linspace(-1e4, 1e4, 1001, dtype=torch.float64), torch.tensor([0.0, 1e-6, -1e-6])])
    torch.testing.assert_close(T.symexp(T.symlog(x)), x, rtol=1e-10, atol=1e-10)
    assert torch.all(T.symlog(x).sign() == x.sign())
    torch.testing.assert_close(T.symlog(torch.tensor([math.e - 1])), torch.tensor([1.0]))


def test_two_hot_round_trip():
    args = T.Args()
    x = T.symexp(torch.linspace(-9.99, 9.99, 513, dtype=torch.float64)).unsqueeze(-1)  # inside [vmin, vmax]
    th = T.two_hot(x, args)
    assert th.shape == (513, args.num_bins)
    assert torch.all(th >= 0) and torch.allclose(th.sum(-1), torch.ones(513, dtype=torch.float64))
    assert torch.all((th > 0).sum(-1) <= 2)
    # decoding the two-hot itself (as logits log p) gives the value back
    back = T.two_hot_inv(torch.log(th.clamp(min=1e-300)), args)
    torch.testing.assert_close(back, x, rtol=1e-6, atol=1e-6)
    # the bins' edges and values beyond them clamp to the end bins
    edge = T.two_hot(torch.tensor([[T.symexp(torch.tensor(10.0)).item()], [1e9], [-1e9]]), args)
    assert edge[0, -1] == pytest.approx(1.0, abs=1e-4) and edge[1, -1] == 1.0 and edge[2, 0] == 1.0
    # soft cross-entropy is minimised by the two-hot itself
    logits = torch.log(th.clamp(min=1e-30)).float()
    ce_opt = T.soft_ce(logits, x.float(), args)
    ce_other = T.soft_ce(torch.zeros_like(logits), x.float(), args)
    assert torch.all(ce_opt < ce_other)


def test_simnorm_groups_sum_to_one():
    x = torch.randn(4, 7, 64) * 10
    y = T.SimNorm(8)(x)
    assert y.shape == x.shape and torch.all(y >= 0)
    torch.testing.assert_close(y.view(4, 7, 8, 8).sum(-1), torch.ones(4, 7, 8))


def test_parameter_counts_match_official_presets():
    """The official architecture, counted independently: dog-run (obs 223, actions 38)."""
    def lin(i, o, ln=True):
        return i * o + o + (2 * o if ln else 0)

    obs, act = 223, 38
    for size, (enc, mlp_dim, lat, nq) in {1: (256, 384, 128, 2), 5: (256, 512, 512, 5)}.items():
        expected = (lin(obs, enc) + lin(enc, lat)  # encoder
                    + lin(lat + act, mlp_dim) + lin(mlp_dim, mlp_dim) + lin(mlp_dim, lat)  # dynamics
                    + lin(lat + act, mlp_dim) + lin(mlp_dim, mlp_dim) + lin(mlp_dim, 101, False)  # reward
                    + lin(lat, mlp_dim) + lin(mlp_dim, mlp_dim) + lin(mlp_dim, 2 * act, False)  # policy prior
                    + nq * (lin(lat + act, mlp_dim) + lin(mlp_dim, mlp_dim) + lin(mlp_dim, 101, False)))  # Qs
        args = T.Args(model_size=size)
        T.check_args(args)
        model = T.WorldModel(obs, act, args)
        n = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("target_qs"))
        assert n == expected
    assert 4.5e6 < expected < 5.5e6  # the "5M" preset


def test_init_zero_last_layers_and_target_copy():
    args = T.Args(model_size=1)
    T.check_args(args)
    m = T.WorldModel(5, 1, args)
    assert torch.all(m.reward_head[-1].weight == 0) and torch.all(m.qs.weights[-1] == 0)
    assert 0.015 < m.dynamics[0].weight.std().item() < 0.025  # trunc-normal std 0.02
    for p, q in zip(m.qs.parameters(), m.target_qs.parameters()):
        assert torch.equal(p, q) and not q.requires_grad


# ---------------------------------------------------------------------------------------- policy prior
def test_era_policy_entropy_is_pinned_and_baseline_range():
    torch.manual_seed(0)
    z = T.SimNorm(8)(torch.randn(256, 16) * 3)
    for era in (True, False):
        args = T.Args(model_size=1, latent_dim=16, mlp_dim=32, era=era)
        T.check_args(args)
        m = T.WorldModel(5, 6, args)
        torch.nn.init.normal_(m.pi_head[-1].weight, std=0.3)  # a non-trivial raw std head
        action, info = m.pi(z)
        assert action.shape == (256, 6) and torch.all(action.abs() <= 1)
        log_std = info["log_std"]
        if era:  # Gaussian entropy = D * entropy_per_dim exactly while no clamp binds
            assert torch.all(log_std > args.era_log_std_min) and torch.all(log_std <= args.era_log_std_max)
            ent = log_std.sum(-1) + 6 * era_core.HALF_LOG_2PI_E
            torch.testing.assert_close(ent, torch.full((256,), 6 * args.entropy_per_dim), atol=1e-5, rtol=0)
        else:
            assert torch.all(log_std >= -10) and torch.all(log_std <= 2)
            assert log_std.std() > 0.01  # state dependent, free to move


def test_planner_shape_range_and_warm_start():
    torch.manual_seed(0)
    for A in (1, 21):  # 21: +2 MPPI iterations for large action spaces
        args = T.Args(model_size=1, latent_dim=16, mlp_dim=16, enc_dim=16, num_samples=64, num_elites=8,
                      num_pi_trajs=8)
        T.check_args(args)
        agent = T.Agent(7, A, args, torch.device("cpu"), 0.99)
        assert agent.iterations == args.iterations + 2 * int(A >= 20)
        obs = torch.randn(7) * 5
        for t0, eval_mode in ((True, False), (False, False), (False, True)):
            a = agent.act(obs, t0=t0, eval_mode=eval_mode)
            assert a.shape == (A,) and torch.all(a.abs() <= 1) and torch.isfinite(a).all()
            assert agent.prev_mean.shape == (args.horizon, A) and torch.all(agent.prev_mean.abs() <= 1)
        args.mpc = False
        a = agent.act(obs, t0=True)
        assert a.shape == (A,) and torch.all(a.abs() <= 1)


# ------------------------------------------------------------------------------------------- replay / env
def test_replay_slices_stay_in_finished_episodes():
    args = T.Args(batch_size=512, horizon=3)
    buf = T.EpisodeBuffer(3, 10, 1, 1, args, torch.device("cpu"))
    for ep in range(4):  # ring of 3 slots: episodes 2 and 3 are sampleable, 4 (current) is not
        for t in range(11):
            v = 100 * ep + t
            buf.add(t, np.array([v], np.float32), np.array([-v], np.float32) if t else None, v if t else None)
        buf.num_eps += 1
    for t in range(3):  # a partially written current episode
        buf.add(t, np.array([999.0], np.float32), np.array([0.0], np.float32) if t else None, 0.0 if t else None)
    obs, action, reward = buf.sample()
    assert obs.shape == (4, 512, 1) and action.shape == (3, 512, 1) and reward.shape == (3, 512, 1)
    ep = (obs[0, :, 0] // 100).long()
    assert set(ep.tolist()) == {2, 3}
    torch.testing.assert_close(obs[1:] - obs[:-1], torch.ones(3, 512, 1))  # consecutive steps, one episode
    torch.testing.assert_close(action, -obs[1:])  # action[t] led to obs[t+1]
    torch.testing.assert_close(reward, obs[1:])


def test_env_snapshot_is_bit_exact():
    env = T.make_env(ENV, 2)
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    acts = rng.uniform(-1, 1, (60, 1))
    for a in acts[:30]:
        env.step(a)
    snap = T.env_state(env)
    ref = [env.step(a)[0] for a in acts[30:]] + [env.reset()[0]]
    env2 = T.make_env(ENV, 2)
    T.set_env_state(env2, snap)
    got = [env2.step(a)[0] for a in acts[30:]] + [env2.reset()[0]]  # the reset draws from the restored RNG
    for x, y in zip(ref, got):
        assert np.array_equal(x, y)


# ------------------------------------------------------------------------------------------- runs
def test_smoke_era_tags_and_finite_losses(tmp_path):
    run_dir = T.main(tiny(tmp_path))
    assert os.path.basename(run_dir).startswith("cartpole-swingup-v0__tdmpc2_era__1__")
    s = scalars(run_dir)
    for tag in ("losses/consistency_loss", "losses/reward_loss", "losses/value_loss", "losses/total_loss",
                "losses/pi_loss", "losses/grad_norm", "losses/pi_grad_norm", "losses/pi_scale",
                "charts/policy_entropy", "charts/policy_gaussian_entropy", "charts/era_target_entropy",
                "charts/episodic_return", "charts/episodic_length", "charts/env_steps", "charts/SPS",
                "eval/episodic_return"):
        assert tag in s, tag
    for tag, vals in s.items():
        assert all(math.isfinite(v) for _, v in vals), tag
    assert [st for st, _ in s["eval/episodic_return"]] == [0, 40]
    assert all(v == 2 * st for st, v in s["charts/env_steps"])  # action repeat 2
    assert [v for _, v in s["charts/episodic_length"]] == [20, 20, 20]
    # first logged update right after the burst of seed_steps updates at step 21; then every log_every steps
    assert s["losses/total_loss"][0][0] == 21 and [st for st, _ in s["losses/total_loss"][1:]] == [25, 30, 35, 40,
                                                                                                    45, 50, 55, 60]
    for (_, g), (_, tgt) in zip(s["charts/policy_gaussian_entropy"], s["charts/era_target_entropy"]):
        assert g == pytest.approx(tgt, abs=1e-4) and tgt == pytest.approx(0.25)  # ERA pins the entropy
    ckpt = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False)
    assert ckpt["state"]["global_step"] == 60 and ckpt["buffer"]["num_eps"] == 3


@pytest.mark.parametrize("mpc", [True, False])
def test_no_era_baseline(tmp_path, mpc):
    run_dir = T.main(tiny(tmp_path, era=False, mpc=mpc, total_timesteps=30, eval_every=0))
    assert "__tdmpc2_era_noera__" in os.path.basename(run_dir)
    s = scalars(run_dir)
    assert "charts/era_target_entropy" not in s and "losses/pi_loss" in s
    assert all(math.isfinite(v) for _, v in s["losses/pi_loss"] + s["losses/value_loss"])
    ent = [v for _, v in s["charts/policy_gaussian_entropy"]]
    assert all(-10 * 1 + era_core.HALF_LOG_2PI_E - 1e-4 <= v <= 2 + era_core.HALF_LOG_2PI_E + 1e-4 for v in ent)


@pytest.mark.parametrize("stop", ["total_timesteps", "ctrl_c_during_eval"])
def test_resume_is_exact(tmp_path, monkeypatch, stop):
    full = T.main(tiny(tmp_path / "a", total_timesteps=70))
    if stop == "total_timesteps":
        half = T.main(tiny(tmp_path / "b", total_timesteps=45))
        stopped_at = 45
    else:  # SIGINT in the middle of the eval at step 40: the eval's RNG use must be undone before saving
        act, calls = T.Agent.act, {"n": 0}

        def interrupting_act(self, obs, t0, eval_mode=False):
            calls["n"] += eval_mode
            if eval_mode and calls["n"] == 25:  # 20 eval actions at step 0, then 5 into the eval at step 40
                os.kill(os.getpid(), signal.SIGINT)
            return act(self, obs, t0, eval_mode)

        monkeypatch.setattr(T.Agent, "act", interrupting_act)
        half = T.main(tiny(tmp_path / "b", total_timesteps=70))
        monkeypatch.setattr(T.Agent, "act", act)
        stopped_at = 40
    ckpt = torch.load(os.path.join(half, "checkpoint.pt"), weights_only=False)
    assert ckpt["state"]["global_step"] == stopped_at
    T.main(tiny(tmp_path / "ignored", total_timesteps=70, resume=os.path.join(half, "checkpoint.pt")))
    a, b = scalars(full), scalars(half)
    for tag in ("losses/total_loss", "losses/value_loss", "losses/pi_loss", "losses/consistency_loss",
                "charts/policy_entropy", "charts/episodic_return", "eval/episodic_return"):
        assert a[tag] == b[tag], tag  # same steps, bit-identical values
    assert [st for st, _ in b["losses/total_loss"]][-3:] == [60, 65, 70]
    assert not os.path.exists(tmp_path / "ignored")  # resumed runs log into the checkpoint's run dir


def test_ctrl_c_saves_and_resumes(tmp_path, monkeypatch):
    calls = {"n": 0}
    update = T.Agent.update

    def interrupting_update(self, buffer):
        calls["n"] += 1
        if calls["n"] == 7:  # in the middle of the burst of 20 seed updates
            os.kill(os.getpid(), signal.SIGINT)
        return update(self, buffer)

    monkeypatch.setattr(T.Agent, "update", interrupting_update)
    handler = signal.getsignal(signal.SIGINT)
    run_dir = T.main(tiny(tmp_path, total_timesteps=40, eval_every=0))
    ckpt = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False)
    assert ckpt["state"]["global_step"] == 21 and ckpt["state"]["pending_updates"] == 20 - 7
    monkeypatch.setattr(T.Agent, "update", update)
    assert signal.getsignal(signal.SIGINT) is handler  # main restores the caller's handler
    T.main(tiny(tmp_path, total_timesteps=40, resume=os.path.join(run_dir, "checkpoint.pt")))
    ckpt = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False)
    assert ckpt["state"]["global_step"] == 40 and ckpt["state"]["pending_updates"] == 0


@pytest.mark.parametrize("kw, match", [
    (dict(model_size=3), "--model-size"),
    (dict(entropy_per_dim=1.5), "impossible"),
    (dict(env_id="dm_control/nope-run-v0"), "--env-id"),
    (dict(env_id="HalfCheetah-v5"), "--env-id"),
    (dict(seed_steps=60), "--seed-steps"),
    (dict(seed_steps=5), "--seed-steps"),
    (dict(num_elites=64), "--num-elites"),
    (dict(num_pi_trajs=32), "--num-pi-trajs"),
    (dict(latent_dim=20), "--latent-dim"),
    (dict(episode_length=600), "--episode-length"),
    (dict(num_q=1), "--num-q"),
    (dict(resume="/nonexistent/checkpoint.pt"), "--resume"),
])
def test_bad_flags(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        T.main(tiny(tmp_path, **kw))
    assert not os.path.exists(os.path.join(tmp_path, "dm_control"))  # nothing started
