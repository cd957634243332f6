"""tdmpc2_era.py: TD-MPC2's math helpers, the two policy priors (ERA's floor under a saturated mean), planner and
replay in-process; runs, signals, exact resume, bad input and video under OSMesa through the command line."""
import importlib.util
import math
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import (ROOT, assert_bad_input, assert_same_scalars, only_run_dir, run_script, scalars, signal_when,
                      start_script)

sys.path.insert(0, str(ROOT))
import era_core  # noqa: E402
import tdmpc2_era as T  # noqa: E402

SCRIPT = "tdmpc2_era.py"
TINY = ["--env-id", "dm_control/cartpole-balance-v0", "--model-size", "1", "--latent-dim", "16", "--mlp-dim", "16",
        "--num-samples", "32", "--num-elites", "4", "--num-pi-trajs", "4", "--iterations", "2", "--batch-size", "8",
        "--episode-length", "20", "--seed-steps", "20", "--eval-every", "40", "--eval-episodes", "1", "--log-every", "5",
        "--save-every", "0"]


def tiny_args(**kw):
    """Args of a tiny model, checked (presets filled in) as main does; 1000 control steps = 500 agent steps."""
    args = T.Args(**{**dict(model_size=1, latent_dim=16, mlp_dim=32, num_samples=64, num_elites=8, num_pi_trajs=8,
                            batch_size=32, seed_steps=1000, total_timesteps=2000, cuda=False), **kw})
    T.check_args(args, 1000)
    return args


def cli_run(tmp_path, *flags, **env):
    proc = run_script(SCRIPT, *TINY, "--runs-dir", tmp_path, *flags, **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Warning" not in proc.stderr and "GLFW" not in proc.stderr, "the start is not quiet"
    run_dir = only_run_dir(tmp_path)
    return run_dir, scalars(run_dir), torch.load(run_dir / "checkpoint.pt", weights_only=False)


# ------------------------------------------------------------------------------------------------ math helpers
def test_symlog_symexp_inverse():
    x = torch.cat([torch.linspace(-1e4, 1e4, 1001, dtype=torch.float64), torch.tensor([0.0, 1e-6, -1e-6])])
    torch.testing.assert_close(T.symexp(T.symlog(x)), x, rtol=1e-10, atol=1e-10)
    assert torch.all(T.symlog(x).sign() == x.sign())


def test_two_hot_round_trip_and_soft_ce():
    x = T.symexp(torch.linspace(-9.99, 9.99, 513, dtype=torch.float64)).unsqueeze(-1)  # inside [VMIN, VMAX]
    th = T.two_hot(x)
    assert th.shape == (513, T.NUM_BINS) and torch.all(th >= 0) and torch.all((th > 0).sum(-1) <= 2)
    torch.testing.assert_close(th.sum(-1), torch.ones(513, dtype=torch.float64))
    torch.testing.assert_close(T.two_hot_inv(torch.log(th.clamp(min=1e-300))), x, rtol=1e-6, atol=1e-6)
    edge = T.two_hot(torch.tensor([[1e9], [-1e9]]))  # beyond the bins: the end bins
    assert edge[0, -1] == 1.0 and edge[1, 0] == 1.0
    logits = torch.log(th.clamp(min=1e-30)).float()
    assert torch.all(T.soft_ce(logits, x.float()) < T.soft_ce(torch.zeros_like(logits), x.float()))


def test_simnorm_is_a_softmax_per_group():
    x = torch.randn(4, 7, 64) * 10
    y = T.simnorm(x)
    torch.testing.assert_close(y, F.softmax(x.view(4, 7, 8, 8), -1).view(4, 7, 64))
    torch.testing.assert_close(y.view(4, 7, 8, 8).sum(-1), torch.ones(4, 7, 8))


def test_mish_matches_f_mish_with_and_without_autograd():
    x = torch.cat([torch.linspace(-60, 60, 100001), torch.tensor([0.0, 20.0, 20.5, 88.0, 1e4, -1e4])])
    with torch.no_grad():  # the one-exp form (CPU, no autograd)
        torch.testing.assert_close(T.mish(x.clone()), F.mish(x), rtol=0, atol=2e-6)
    xg = x.clone().requires_grad_()
    y = T.mish(xg)  # with autograd: F.mish itself, so the gradient is F.mish's
    y.sum().backward()
    ref = x.clone().requires_grad_()
    F.mish(ref).sum().backward()
    assert torch.equal(y.detach(), F.mish(x)) and torch.equal(xg.grad, ref.grad)


# ------------------------------------------------------------------------------------------------ networks
def test_parameter_counts_match_official_presets():
    """The official architecture, counted independently: dog-run (obs 223, actions 38)."""
    def lin(i, o, ln=True):
        return i * o + o + (2 * o if ln else 0)

    obs, act = 223, 38
    for size, (mlp_dim, lat, nq) in {1: (384, 128, 2), 5: (512, 512, 5)}.items():
        expected = (lin(obs, 256) + lin(256, lat)  # encoder
                    + lin(lat + act, mlp_dim) + lin(mlp_dim, mlp_dim) + lin(mlp_dim, lat)  # dynamics
                    + lin(lat + act, mlp_dim) + lin(mlp_dim, mlp_dim) + lin(mlp_dim, 101, False)  # reward
                    + lin(lat, mlp_dim) + lin(mlp_dim, mlp_dim) + lin(mlp_dim, 2 * act, False)  # policy prior
                    + nq * (lin(lat + act, mlp_dim) + lin(mlp_dim, mlp_dim) + lin(mlp_dim, 101, False)))  # Qs
        args = T.Args(model_size=size)
        T.check_args(args, 1000)
        model = T.WorldModel(obs, act, args, 0.99)
        assert sum(p.numel() for name, p in model.named_parameters() if not name.startswith("target_qs")) == expected
        assert 0.015 < model.dynamics[0].weight.std().item() < 0.025  # truncated-normal init, std 0.02
        assert torch.all(model.reward_head[-1].weight == 0) and torch.all(model.qs.weights[-1] == 0)
        for p, q in zip(model.qs.parameters(), model.target_qs.parameters()):
            assert torch.equal(p, q) and not q.requires_grad
    assert 4.5e6 < expected < 5.5e6  # the "5M" preset


def test_q_heads_are_an_ensemble_with_own_dropout_masks():
    torch.manual_seed(0)
    ens = T.QEnsemble(4, 6, 32, 11, dropout=0.5)
    for w in ens.weights:
        torch.nn.init.normal_(w)
    x = torch.randn(3, 5, 6)
    ens.eval()
    out = ens(x)
    assert out.shape == (4, 3, 5, 11)
    torch.testing.assert_close(ens(x, heads=torch.tensor([2, 0])), out[[2, 0]])  # the chosen heads only
    h = x @ ens.weights[0][1] + ens.biases[0][1]  # head 1 by hand
    for i in (1, 2):
        h = F.mish(F.layer_norm(h, h.shape[-1:]) * ens.ln_w[i - 1][1] + ens.ln_b[i - 1][1])
        h = h @ ens.weights[i][1] + ens.biases[i][1]
    torch.testing.assert_close(out[1], h, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # all heads equal: in training mode only their dropout masks tell them apart
        for p in ens.parameters():
            p.copy_(p[:1].expand_as(p))
    x = torch.randn(64, 6)
    assert all(torch.equal(q, ens(x)[0]) for q in ens(x))
    ens.train()
    out = ens(x)
    assert not any(torch.equal(out[0], q) for q in out[1:])


# ------------------------------------------------------------------------------------------------ policy priors
def prior_with_saturated_mean(era, act_dim=6, n=512, seed=0):
    """The policy prior of a fresh model whose pre-tanh means are pushed to |mean| >= 5 (tanh saturated) and
    whose raw std head is random: what a policy escaping into tanh's flat region looks like."""
    torch.manual_seed(seed)
    args = tiny_args(era=era)
    model = T.WorldModel(5, act_dim, args, 0.99)
    last = model.pi_head[-1]
    torch.nn.init.normal_(last.weight, std=0.5)
    with torch.no_grad():
        last.bias[:act_dim] = torch.tensor([6.0, -6.0, 8.0, -8.0, 12.0, -20.0])[:act_dim]
        last.weight[:act_dim] *= 0.1
    z = T.simnorm(torch.randn(n, args.latent_dim) * 3)
    action, info = model.pi(z)
    mean = torch.atanh(info["mean"].double().clamp(-1 + 1e-12, 1 - 1e-12))
    assert torch.all(mean.abs() >= 5)
    return args, action, info


def test_era_prior_keeps_its_action_space_entropy_floor_under_a_saturated_mean():
    args, action, info = prior_with_saturated_mean(era=True)
    D = action.shape[-1]
    bound = era_core.truncated_normal_entropy_bound(D * args.entropy_per_dim, D, args.log_std_max)
    assert bound == pytest.approx(D * (0.25 - era_core.HALF_LOG_2PI_E + 0.5661), abs=1e-3)
    assert torch.all(info["entropy"] >= bound)  # every state, whatever the mean does
    assert torch.all(action.abs() <= era_core.TRUNCATION_BOUND)
    gauss = info["log_std"].sum(-1) + D * era_core.HALF_LOG_2PI_E  # the Gaussian before truncation is pinned
    torch.testing.assert_close(gauss, torch.full_like(gauss, D * args.entropy_per_dim), atol=1e-4, rtol=0)
    assert torch.all(info["bonus"] == 0)  # no entropy bonus in ERA's policy loss
    # the logged entropy is the entropy of the distribution the actions come from: -E[log p] over many draws
    loc, scale = info["mean"][:4].clamp(-era_core.TRUNCATION_BOUND, era_core.TRUNCATION_BOUND), info["log_std"][:4].exp()
    draws = era_core.truncated_normal_rsample(loc.expand(20000, -1, -1), scale.expand(20000, -1, -1))
    mc = -era_core.truncated_normal_log_prob(draws, loc, scale).mean(0)
    torch.testing.assert_close(mc, info["entropy"][:4, 0], atol=0.05, rtol=0)


def test_tanh_prior_escapes_the_floor_under_a_saturated_mean():
    args, action, info = prior_with_saturated_mean(era=False)
    D = action.shape[-1]
    bound = era_core.truncated_normal_entropy_bound(D * 0.25, D, 0.0)
    assert torch.all(info["entropy"] < bound) and info["entropy"].mean() < bound - 5 * D  # tanh's flat region
    assert torch.all(info["log_std"] >= T.LOG_STD_MIN) and torch.all(info["log_std"] <= T.LOG_STD_MAX)


def test_tanh_prior_entropy_estimate_and_bonus_are_tdmpc2s():
    """Baseline behaviour: -log pi of the sampled action estimates the tanh-Gaussian's entropy without bias, and
    the bonus is D * -log N(u) of the pre-tanh sample u, without the tanh correction (the official form)."""
    torch.manual_seed(1)
    mean, raw_std = torch.full((200000, 1), 0.7), torch.full((200000, 1), 0.3)
    action, log_std, entropy, bonus = T.tanh_normal(mean, raw_std, None)
    sigma = math.exp(log_std[0, 0].item())
    u = torch.linspace(-12, 12, 400001, dtype=torch.float64) * sigma + 0.7  # entropy of tanh(u) by quadrature
    pdf = torch.exp(-0.5 * ((u - 0.7) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    exact = (pdf * (-torch.log(pdf) + torch.log(1 - torch.tanh(u) ** 2))).sum() * (u[1] - u[0])
    assert entropy.mean().item() == pytest.approx(exact.item(), abs=0.01)
    u_sample = torch.atanh(action.double())
    log_n = -0.5 * ((u_sample - 0.7) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(bonus.double(), -log_n, atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("era", [False, True])
def test_entropy_bonus_is_the_baselines_and_only_the_baselines(one_thread, era):
    """A large entropy coefficient widens TD-MPC2's prior over a few updates; ERA has no bonus, so the coefficient
    changes nothing there (same losses bit for bit)."""
    buffer_rows = torch.randn(3, 501, 5 + 2 + 1)
    logs = {}
    for coef in (0.0, 1.0):
        torch.manual_seed(0)
        args = tiny_args(era=era, entropy_coef=coef, lr=1e-2)
        model = T.WorldModel(5, 2, args, 0.99)
        optim = torch.optim.Adam(model.parameters(), lr=args.lr)
        pi_optim = torch.optim.Adam(model.pi_head.parameters(), lr=args.lr, eps=1e-5)
        buffer = T.EpisodeBuffer(4, 500, 5, 2, args, torch.device("cpu"))
        buffer.load_state_dict(dict(rows=buffer_rows, num_eps=3))
        logs[coef] = [T.update(model, optim, pi_optim, *buffer.sample(), args) for _ in range(30)]
    if era:
        assert all(torch.equal(a[k], b[k]) for a, b in zip(logs[0.0], logs[1.0]) for k in a)
    else:
        entropy = {coef: [info["charts/policy_gaussian_entropy"].item() for info in logs[coef]] for coef in logs}
        assert entropy[1.0][-1] > entropy[0.0][-1] + 1.0 and entropy[1.0][-1] > entropy[1.0][0] + 1.0


def test_planner_actions_in_range_and_warm_start():
    torch.manual_seed(0)
    for A in (1, 21):  # 21: +2 MPPI iterations for large action spaces
        args = tiny_args()
        model = T.WorldModel(7, A, args, 0.99).eval()
        prev_mean = torch.zeros(args.horizon, A)
        obs = torch.randn(7) * 5
        for t0, eval_mode in ((True, False), (False, False), (False, True)):
            old = prev_mean.clone()
            a = T.act(model, obs, prev_mean, t0, eval_mode, args)
            assert a.shape == (A,) and torch.all(a.abs() <= 1) and torch.isfinite(a).all()
            assert torch.all(prev_mean.abs() <= 1) and not torch.equal(prev_mean, old)
        args.mpc = False
        torch.testing.assert_close(T.act(model, obs, prev_mean, True, True, args),
                                   model.pi(model.encoder(obs[None]))[1]["mean"][0])  # --no-mpc eval: tanh(mean)


# ------------------------------------------------------------------------------------------------ replay
def test_replay_slices_stay_in_finished_episodes_and_checkpoint_copies_filled_rows():
    args = tiny_args(batch_size=512)
    buf = T.EpisodeBuffer(3, 10, 1, 1, args, torch.device("cpu"))
    for ep in range(4):  # a ring of 3 slots: episodes 2 and 3 are sampleable, 4 (being collected) is not
        for t in range(11):
            v = 100 * ep + t
            buf.add(t, np.array([v], np.float32), np.array([-v], np.float32), v)
        buf.num_eps += 1
    for t in range(3):  # a partly written episode
        buf.add(t, np.array([999.0], np.float32), np.array([0.0], np.float32), 0.0)
    obs, action, reward = buf.sample()
    assert obs.shape == (4, 512, 1) and action.shape == (3, 512, 1) and reward.shape == (3, 512, 1)
    assert set((obs[0, :, 0] // 100).long().tolist()) == {2, 3}
    torch.testing.assert_close(obs[1:] - obs[:-1], torch.ones(3, 512, 1))  # consecutive steps of one episode
    torch.testing.assert_close(action, -obs[1:])  # row t: the action that led to obs[t] and its reward
    torch.testing.assert_close(reward, obs[1:])
    fresh = T.EpisodeBuffer(3, 10, 1, 1, args, torch.device("cpu"))
    fresh.add(0, np.array([5.0]), np.array([0.0]), 0.0)
    saved = fresh.state_dict()
    assert saved["rows"].shape[0] == 0  # nothing finished: nothing saved
    saved = buf.state_dict()
    assert saved["rows"].shape == (3, 11, 3) and saved["rows"].data_ptr() != buf.rows.data_ptr()  # a copy
    other = T.EpisodeBuffer(3, 10, 1, 1, args, torch.device("cpu"))
    other.load_state_dict(saved)
    torch.manual_seed(5)
    a = buf.sample()
    torch.manual_seed(5)
    assert all(torch.equal(x, y) for x, y in zip(a, other.sample()))


# ------------------------------------------------------------------------------------------------ runs
def test_run_logs_losses_entropies_and_saves_only_what_resuming_needs(tmp_path):
    run_dir, logs, ckpt = cli_run(tmp_path, "--total-timesteps", "60")
    assert run_dir.name.startswith("dm_control_cartpole-balance-v0__tdmpc2_era__1__")
    for tag in ("losses/consistency_loss", "losses/reward_loss", "losses/value_loss", "losses/total_loss",
                "losses/pi_loss", "losses/grad_norm", "losses/pi_grad_norm", "losses/pi_scale", "charts/policy_entropy",
                "charts/action_std", "charts/policy_gaussian_entropy", "charts/era_target_entropy",
                "charts/era_entropy_bound", "charts/episodic_return", "charts/episodic_length", "charts/env_steps",
                "charts/SPS", "eval/episodic_return"):
        assert tag in logs and all(math.isfinite(v) for _, v in logs[tag]), tag
    assert [s for s, _ in logs["eval/episodic_return"]] == [40]  # no evaluation of the untrained agent
    assert [s for s, _ in logs["losses/total_loss"]] == [21, 25, 30, 35, 40, 45, 50, 55, 60]  # after the burst
    assert all(v == 2 * s for s, v in logs["charts/env_steps"]) and [v for _, v in logs["charts/episodic_length"]] == [20] * 3
    bound = logs["charts/era_entropy_bound"][0][1]
    assert all(v >= bound for _, v in logs["charts/policy_entropy"])
    assert all(v == pytest.approx(0.25, abs=1e-4) for _, v in logs["charts/policy_gaussian_entropy"])
    assert set(ckpt) == {"script", "args", "global_step", "episode", "next_eval", "next_save", "model", "optim",
                         "pi_optim", "buffer", "rng"}
    assert ckpt["global_step"] == 60 and ckpt["episode"] == 3 and ckpt["buffer"]["rows"].shape == (3, 21, 5 + 1 + 1)


def test_signals_save_and_resume_exactly(tmp_path):
    flags = [*TINY, "--total-timesteps", "100"]
    full = run_script(SCRIPT, *flags, "--runs-dir", tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]
    expected = scalars(only_run_dir(tmp_path / "full"))
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        runs = tmp_path / sig.name

        def logged_an_episode():
            dirs = list(runs.rglob("events.out.tfevents.*"))
            return dirs and "charts/episodic_return" in scalars(dirs[0].parent)

        proc = start_script(SCRIPT, *flags, "--runs-dir", runs)
        rc, out, err = signal_when(proc, logged_an_episode, sig, poll=0.2)
        checkpoint = only_run_dir(runs) / "checkpoint.pt"
        assert rc == code and "--resume" in err, err[-3000:]
        saved = torch.load(checkpoint, weights_only=False)
        assert 20 <= saved["global_step"] < 100 and saved["global_step"] % 20 == 0  # at an episode's end
        resumed = run_script(SCRIPT, "--resume", checkpoint)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert_same_scalars(scalars(only_run_dir(runs)), expected)
    # a larger budget continues the finished run; tensorboard gets no step twice
    more = run_script(SCRIPT, "--resume", only_run_dir(tmp_path / "full") / "checkpoint.pt", "--total-timesteps", "120")
    assert more.returncode == 0, more.stderr[-3000:]
    longer = scalars(only_run_dir(tmp_path / "full"))
    steps = [s for s, _ in longer["losses/total_loss"]]
    assert steps[-1] == 120 and len(steps) == len(set(steps)) and longer["losses/total_loss"][:17] == expected["losses/total_loss"]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("saved")
    proc = run_script(SCRIPT, *TINY, "--total-timesteps", "40", "--runs-dir", runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return only_run_dir(runs) / "checkpoint.pt"


def bad_files(tmp_path, checkpoint):
    empty, truncated, foreign = tmp_path / "empty.pt", tmp_path / "truncated.pt", tmp_path / "foreign.pt"
    empty.write_bytes(b"")
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    torch.save({"script": "sac_era.py", "args": {}, "global_step": 3}, foreign)
    return dict(missing=tmp_path / "nope.pt", empty=empty, truncated=truncated, foreign=foreign)


@pytest.mark.parametrize("flags, flag", [
    (["--buffer-size", "0"], "--buffer-size"),
    (["--entropy-per-dim", "nan"], "--entropy-per-dim"),
    (["--lr", "inf"], "--lr"),
    (["--env-id", "HalfCheetah-v5"], "--env-id"),
    (["--seed-steps", "60", "--total-timesteps", "60"], "--seed-steps"),
    (["--resume", "missing"], "--resume"),
    (["--resume", "empty"], "--resume"),
    (["--resume", "truncated"], "--resume"),
    (["--resume", "foreign"], "--resume"),
    (["--resume", "saved", "--lr", "1e-3"], "--lr"),
])
def test_bad_input_is_one_line_and_touches_nothing(tmp_path, saved_run, flags, flag):
    files = {**bad_files(tmp_path, saved_run), "saved": saved_run}
    flags = [str(files.get(f, f)) for f in flags]
    if flags[0] != "--resume":
        flags = [*TINY, "--runs-dir", str(tmp_path / "runs"), *flags]
    assert_bad_input(SCRIPT, *flags, flag=flag, protect=[saved_run])
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(importlib.util.find_spec("moviepy") is None or not Path("/usr/lib/x86_64-linux-gnu/libOSMesa.so.8")
                    .exists() and not Path("/usr/lib/x86_64-linux-gnu/libOSMesa.so.6").exists(),
                    reason="needs moviepy (pip install moviepy) and OSMesa (apt-get install libosmesa6)")
def test_osmesa_run_records_evaluation_videos(tmp_path):
    run_dir, logs, _ = cli_run(tmp_path, "--total-timesteps", "40", "--capture-video", MUJOCO_GL="osmesa")
    assert [p.name for p in (run_dir / "videos").iterdir()] == ["eval-step-40.mp4"]
    assert "eval/episodic_return" in logs
