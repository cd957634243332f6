"""TD-MPC2 with ERA (Entropy Regularizing Activation, arXiv 2510.08549) in one file.

Single-task, state-observation TD-MPC2 (Hansen, Su, Wang, ICLR 2024; github.com/nicklashansen/tdmpc2) on
dm_control, CPU or CUDA, no tensordict/torchrl. A latent world model (SimNorm encoder, latent dynamics,
reward head, ensemble of Q heads with two-hot symlog regression) is learned from horizon-3 slices of replay;
actions come from MPPI planning in latent space, seeded by a tanh-Gaussian policy prior.

ERA (default): the policy prior's log-std is `era_core.gaussian_entropy_floor` of its raw std head, so the
pre-tanh Gaussian has entropy exactly D * entropy_per_dim (D = action dimension) unless the log-std floor -10
binds, which at the default needs one dimension to take over 22.5 % of the softmax mass with D = 38 (dog); it
is then higher. The entropy bonus is removed from the policy loss. Default 0.25 nats per
dimension: the official SAC-ERA code's default, the only value the authors published for continuous ERA
(per-dimension sigma 0.31 before tanh when split evenly). log-std bounds [-10, 0]: the official TD-MPC2 floor,
and sigma <= 1 because a wider pre-tanh Gaussian only piles mass on the action bounds.
`--no-era`: TD-MPC2 as released: log-std = tanh-mapped into [-10, 2], and the policy loss adds
1e-4 * D * (-log N(u; mu, sigma)) of the pre-tanh sample u, the official form since Dec 2024, which leaves out
the tanh correction (their issues #44, #76). `grep -n "# ERA" tdmpc2_era.py` is the whole difference.

A "step" is one agent step: one planned action, repeated for `action_repeat` (2) dm_control control steps.
`--total-timesteps` and the tensorboard x axis count agent steps (as the official code's `step` does); env
(control) steps = agent steps * action_repeat are logged as charts/env_steps. A DMC episode is 500 agent steps.
`--model-size 1` follows the official preset, which has 2 Q heads; `5` (default) has 5.

    python tdmpc2_era.py --env-id dm_control/dog-run-v0 --total-timesteps 1000000
    python tdmpc2_era.py --env-id dm_control/cartpole-swingup-v0 --model-size 1 --no-era
"""
import math
import os
import random
import signal
import time
from dataclasses import asdict, dataclass
from typing import Optional

import torch

try:  # triton must load before dm_control's GL libraries: the other order segfaults with MUJOCO_GL=egl/osmesa
    import triton  # noqa: F401
except ImportError:
    pass
import gymnasium as gym
import mujoco
import numpy as np
import shimmy  # noqa: F401  (registers the dm_control/* gymnasium ids)
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import era_core

MODEL_SIZES = {  # official presets (millions of parameters): hidden widths and number of Q heads
    1: dict(enc_dim=256, mlp_dim=384, latent_dim=128, num_q=2),
    5: dict(enc_dim=256, mlp_dim=512, latent_dim=512, num_q=5),
}


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True` and deterministic algorithms"""
    cuda: bool = torch.cuda.is_available()
    """if toggled, cuda will be enabled (default: on when available)"""
    runs_dir: str = "runs"
    """tensorboard logs and checkpoints go to {runs_dir}/{run_name}"""
    compile: bool = False
    """if toggled, torch.compile the update and the planner"""
    save_every: int = 50_000
    """write a checkpoint every N agent steps (0: only at the end and on Ctrl-C)"""
    resume: Optional[str] = None
    """path of a checkpoint.pt to continue from (its run dir and hyperparameters are reused)"""
    eval_every: int = 50_000
    """evaluate with planning (eval mode) every N agent steps, at the next episode boundary"""
    eval_episodes: int = 10
    """number of evaluation episodes"""
    log_every: int = 1000
    """log losses every N agent steps"""

    # Algorithm specific arguments
    env_id: str = "dm_control/dog-run-v0"
    """dm_control task: `dm_control/<domain>-<task>-v0` or the short `<domain>-<task>`"""
    total_timesteps: int = 1_000_000
    """total agent steps (each one is `action_repeat` dm_control control steps)"""
    action_repeat: int = 2
    """dm_control control steps per agent step"""
    episode_length: Optional[int] = None
    """agent steps per episode (default: the task's time limit / action_repeat, 500 for DMC)"""
    seed_steps: Optional[int] = None
    """random-action steps, then one burst of as many updates (default: max(1000, 5 x episode length))"""
    model_size: int = 5
    """1 or 5: the official presets (millions of parameters)"""
    latent_dim: Optional[int] = None
    """override the preset's latent size (a multiple of simnorm_dim)"""
    mlp_dim: Optional[int] = None
    """override the preset's hidden width of dynamics, reward, Q and policy"""
    enc_dim: Optional[int] = None
    """override the preset's hidden width of the encoder"""
    num_q: Optional[int] = None
    """override the preset's number of Q heads"""
    simnorm_dim: int = 8
    """SimNorm group size"""
    dropout: float = 0.01
    """dropout in the first layer of each Q head"""
    num_bins: int = 101
    """bins of the two-hot discrete regression in symlog space"""
    vmin: float = -10.0
    """lowest bin (symlog space)"""
    vmax: float = 10.0
    """highest bin (symlog space)"""
    buffer_size: int = 1_000_000
    """replay capacity in agent steps"""
    batch_size: int = 256
    """slices per update"""
    horizon: int = 3
    """latent rollout length for training and planning"""
    rho: float = 0.5
    """temporal weight rho^t of the losses"""
    lr: float = 3e-4
    """Adam learning rate (encoder: lr * enc_lr_scale)"""
    enc_lr_scale: float = 0.3
    """encoder learning-rate factor"""
    grad_clip_norm: float = 20.0
    """gradient norm clip"""
    tau: float = 0.01
    """Polyak rate of the target Qs and of the running Q scale"""
    consistency_coef: float = 20.0
    """weight of the latent consistency loss"""
    reward_coef: float = 0.1
    """weight of the reward loss"""
    value_coef: float = 0.1
    """weight of the value loss"""
    mpc: bool = True
    """plan with MPPI (`--no-mpc`: act with the policy prior)"""
    iterations: int = 6
    """MPPI iterations (+2 when the action dimension is >= 20)"""
    num_samples: int = 512
    """MPPI action sequences per iteration"""
    num_elites: int = 64
    """MPPI elites"""
    num_pi_trajs: int = 24
    """of the samples, trajectories drawn from the policy prior"""
    min_std: float = 0.05
    """MPPI minimum std"""
    max_std: float = 2.0
    """MPPI maximum (initial) std"""
    temperature: float = 0.5
    """MPPI temperature"""
    era: bool = True
    """ERA policy prior (`--no-era`: official TD-MPC2 log-std map and entropy bonus)"""
    entropy_per_dim: float = 0.25
    """ERA: target entropy of the pre-tanh Gaussian per action dimension (nats)"""
    era_log_std_min: float = -10.0
    """ERA: lowest log-std (the official TD-MPC2 lower bound)"""
    era_log_std_max: float = 0.0
    """ERA: highest log-std (sigma <= 1 before tanh; wider only saturates tanh)"""
    log_std_min: float = -10.0
    """no-ERA: lowest log-std of the official tanh map"""
    log_std_max: float = 2.0
    """no-ERA: highest log-std of the official tanh map"""
    entropy_coef: float = 1e-4
    """no-ERA: entropy coefficient of the policy loss"""


# ---------------------------------------------------------------------------------------------------- env
def make_env(env_id, action_repeat):
    """dm_control task via shimmy with flattened float32 observations and summed-reward action repeat."""
    if not env_id.startswith("dm_control/"):
        env_id = f"dm_control/{env_id}-v0"
    env = gym.make(env_id)
    env = gym.wrappers.FlattenObservation(env)
    space = gym.spaces.Box(-np.inf, np.inf, env.observation_space.shape, np.float32)
    env = gym.wrappers.TransformObservation(env, lambda o: o.astype(np.float32), space)
    return ActionRepeat(env, action_repeat)


class ActionRepeat(gym.Wrapper):
    def __init__(self, env, repeat):
        super().__init__(env)
        self.repeat = repeat

    def step(self, action):
        total = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += reward
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


def env_state(env):
    """What a fresh `make_env` lacks to continue exactly: MuJoCo state, the task's RNG, the step counter."""
    dm = env.unwrapped._env
    spec = mujoco.mjtState.mjSTATE_INTEGRATION | mujoco.mjtState.mjSTATE_WARMSTART
    model, data = dm.physics.model.ptr, dm.physics.data.ptr
    buf = np.empty(mujoco.mj_stateSize(model, spec), dtype=np.float64)
    mujoco.mj_getState(model, data, buf, spec)
    return dict(mj=buf, spec=int(spec), rng=dm.task.random.get_state(), step_count=dm._step_count)


def set_env_state(env, state):
    env.reset()  # clears the wrappers' reset-order flags; everything it draws is overwritten below
    dm = env.unwrapped._env
    mujoco.mj_setState(dm.physics.model.ptr, dm.physics.data.ptr, state["mj"], state["spec"])  # no mj_forward
    dm.task.random.set_state(state["rng"])
    dm._step_count = state["step_count"]


# --------------------------------------------------------------------------------------------- math helpers
def symlog(x):
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x):
    return torch.sign(x) * torch.expm1(x.abs())


def two_hot(x, args):
    """Scalars [..., 1] -> soft two-hot over num_bins in symlog space [..., num_bins]."""
    bin_size = (args.vmax - args.vmin) / (args.num_bins - 1)
    pos = (symlog(x).clamp(args.vmin, args.vmax) - args.vmin) / bin_size
    low = pos.floor().clamp(max=args.num_bins - 2)
    frac = pos - low
    out = torch.zeros(*x.shape[:-1], args.num_bins, device=x.device, dtype=x.dtype)
    out.scatter_(-1, low.long(), 1 - frac)
    return out.scatter_(-1, low.long() + 1, frac)


def two_hot_inv(logits, args):
    """Logits [..., num_bins] -> expected value, mapped back by symexp [..., 1]."""
    bins = torch.linspace(args.vmin, args.vmax, args.num_bins, device=logits.device, dtype=logits.dtype)
    return symexp((F.softmax(logits, dim=-1) * bins).sum(-1, keepdim=True))


def soft_ce(logits, target, args):
    """Cross-entropy of logits [..., num_bins] against the two-hot of scalar targets [..., 1]."""
    return -(two_hot(target, args) * F.log_softmax(logits, dim=-1)).sum(-1, keepdim=True)


# ------------------------------------------------------------------------------------------------ networks
class SimNorm(nn.Module):
    """Simplicial normalization: softmax over consecutive groups of `dim` features."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        shape = x.shape
        return F.softmax(x.view(*shape[:-1], -1, self.dim), dim=-1).view(shape)


class NormedLinear(nn.Linear):
    """Linear -> (Dropout) -> LayerNorm -> activation (Mish unless given)."""

    def __init__(self, in_dim, out_dim, dropout=0.0, act=None):
        super().__init__(in_dim, out_dim)
        self.ln = nn.LayerNorm(out_dim)
        self.act = act if act is not None else nn.Mish()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x):
        return self.act(self.ln(self.dropout(super().forward(x))))


def mlp(in_dim, hidden, out_dim, out_act=None):
    layers = [NormedLinear(i, o) for i, o in zip([in_dim] + hidden[:-1], hidden)]
    layers.append(NormedLinear(hidden[-1], out_dim, act=out_act) if out_act else nn.Linear(hidden[-1], out_dim))
    return nn.Sequential(*layers)


class QEnsemble(nn.Module):
    """num_q Q heads (in -> mlp -> mlp -> num_bins) evaluated as batched matmuls, no Python loop over heads."""

    def __init__(self, num_q, in_dim, hidden, out_dim, dropout):
        super().__init__()
        dims = [in_dim, hidden, hidden, out_dim]
        self.weights = nn.ParameterList([nn.Parameter(torch.empty(num_q, i, o)) for i, o in zip(dims, dims[1:])])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(num_q, 1, o)) for o in dims[1:]])
        self.ln_w = nn.ParameterList([nn.Parameter(torch.ones(num_q, 1, hidden)) for _ in range(2)])
        self.ln_b = nn.ParameterList([nn.Parameter(torch.zeros(num_q, 1, hidden)) for _ in range(2)])
        self.dropout = dropout
        for w in self.weights[:-1]:
            nn.init.trunc_normal_(w, std=0.02)
        nn.init.zeros_(self.weights[-1])  # zeroed last layer, as the official init

    def forward(self, x):
        """x [..., in] -> [num_q, ..., out]."""
        lead = x.shape[:-1]
        h = x.reshape(1, -1, x.shape[-1])
        for i in range(2):
            h = torch.baddbmm(self.biases[i], h.expand(self.weights[i].shape[0], -1, -1), self.weights[i])
            if i == 0 and self.dropout:
                h = F.dropout(h, self.dropout, self.training)  # independent masks per head
            h = F.layer_norm(h, h.shape[-1:]) * self.ln_w[i] + self.ln_b[i]
            h = F.mish(h)
        h = torch.baddbmm(self.biases[2], h, self.weights[2])
        return h.view(h.shape[0], *lead, h.shape[-1])


class WorldModel(nn.Module):
    def __init__(self, obs_dim, act_dim, args):
        super().__init__()
        self.args, L, H = args, args.latent_dim, args.mlp_dim
        self.encoder = mlp(obs_dim, [args.enc_dim], L, out_act=SimNorm(args.simnorm_dim))
        self.dynamics = mlp(L + act_dim, [H, H], L, out_act=SimNorm(args.simnorm_dim))
        self.reward_head = mlp(L + act_dim, [H, H], args.num_bins)
        self.pi_head = mlp(L, [H, H], 2 * act_dim)
        self.qs = QEnsemble(args.num_q, L + act_dim, H, args.num_bins, args.dropout)
        for m in self.modules():  # truncated-normal init (std 0.02), zero biases
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.reward_head[-1].weight)
        self.target_qs = QEnsemble(args.num_q, L + act_dim, H, args.num_bins, args.dropout)
        self.target_qs.load_state_dict(self.qs.state_dict())
        self.target_qs.requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        self.target_qs.train(False)  # target Qs never use dropout
        return self

    def encode(self, obs):
        return self.encoder(obs)

    def next(self, z, a):
        return self.dynamics(torch.cat([z, a], dim=-1))

    def reward(self, z, a):
        return self.reward_head(torch.cat([z, a], dim=-1))

    def pi(self, z):
        """Sample from the tanh-Gaussian policy prior; also returns the deterministic action and entropy terms."""
        mean, raw_std = self.pi_head(z).chunk(2, dim=-1)
        D = mean.shape[-1]
        if self.args.era:  # ERA
            log_std = era_core.gaussian_entropy_floor(raw_std, D * self.args.entropy_per_dim,  # ERA
                                                      self.args.era_log_std_min, self.args.era_log_std_max)  # ERA
        else:  # ERA
            span = self.args.log_std_max - self.args.log_std_min  # ERA
            log_std = self.args.log_std_min + 0.5 * span * (torch.tanh(raw_std) + 1)  # ERA: official map
        eps = torch.randn_like(mean)
        gauss_log_prob = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1, keepdim=True)
        action = torch.tanh(mean + eps * log_std.exp())
        log_prob = gauss_log_prob - torch.log(F.relu(1 - action.pow(2)) + 1e-6).sum(-1, keepdim=True)
        info = dict(mean=torch.tanh(mean), log_std=log_std, entropy=-log_prob, gauss_log_prob=gauss_log_prob)
        return action, info

    def Q(self, z, a, return_type="min", target=False, detach=False):
        """All heads' logits ('all'), or the min / mean of 2 randomly drawn heads as scalars."""
        x = torch.cat([z, a], dim=-1)
        if target:
            out = self.target_qs(x)
        elif detach:  # same heads, no gradient into their parameters (policy loss)
            params = {k: v.detach() for k, v in self.qs.named_parameters()}
            out = torch.func.functional_call(self.qs, params, (x,))
        else:
            out = self.qs(x)
        if return_type == "all":
            return out
        idx = torch.randperm(self.args.num_q, device=out.device)[:2]
        q = two_hot_inv(out[idx], self.args)
        return q.min(0).values if return_type == "min" else q.mean(0)


# ------------------------------------------------------------------------------------------------- agent
class Agent:
    """World model, optimizers, running Q scale, the update and the MPPI planner."""

    def __init__(self, obs_dim, act_dim, args, device, discount):
        self.args, self.act_dim, self.device, self.discount = args, act_dim, device, discount
        self.model = WorldModel(obs_dim, act_dim, args).to(device).eval()
        m = self.model
        self.optim = torch.optim.Adam([
            {"params": m.encoder.parameters(), "lr": args.lr * args.enc_lr_scale},
            {"params": list(m.dynamics.parameters()) + list(m.reward_head.parameters()) + list(m.qs.parameters())},
        ], lr=args.lr)
        self.pi_optim = torch.optim.Adam(m.pi_head.parameters(), lr=args.lr, eps=1e-5)
        self.scale = torch.ones((), device=device)  # running 5-95 % range of Q, floored at 1
        self.iterations = args.iterations + 2 * int(act_dim >= 20)  # more MPPI iterations for large action spaces
        self.prev_mean = torch.zeros(args.horizon, act_dim, device=device)  # warm start of the planner
        self._update = torch.compile(self._update_impl) if args.compile else self._update_impl
        self._plan = torch.compile(self._plan_impl) if args.compile else self._plan_impl

    def update_pi(self, zs):
        a = self.args
        action, info = self.model.pi(zs)
        qs = self.model.Q(zs, action, "avg", detach=True)
        pct = torch.quantile(qs[0].detach().float().flatten(), torch.tensor([0.05, 0.95], device=qs.device))
        self.scale.lerp_((pct[1] - pct[0]).clamp(min=1.0), a.tau)
        qs = qs / self.scale
        rho = a.rho ** torch.arange(len(qs), device=qs.device, dtype=qs.dtype)
        if a.era:  # ERA
            pi_loss = (-qs.mean(dim=(1, 2)) * rho).mean()  # ERA: entropy pinned by the activation, no bonus
        else:  # ERA
            # official form since Dec 2024: D * (pre-tanh Gaussian entropy estimate), no tanh correction  # ERA
            entropy_term = -info["gauss_log_prob"] * self.act_dim  # ERA
            pi_loss = (-(a.entropy_coef * entropy_term + qs).mean(dim=(1, 2)) * rho).mean()  # ERA
        pi_loss.backward()
        pi_grad_norm = nn.utils.clip_grad_norm_(self.model.pi_head.parameters(), a.grad_clip_norm)
        self.pi_optim.step()
        self.pi_optim.zero_grad(set_to_none=True)
        log_std = info["log_std"]
        gauss_entropy = log_std.sum(-1).mean() + log_std.shape[-1] * era_core.HALF_LOG_2PI_E
        return dict(pi_loss=pi_loss, pi_grad_norm=pi_grad_norm, pi_scale=self.scale.clone(),
                    policy_entropy=info["entropy"].mean(), policy_gaussian_entropy=gauss_entropy)

    def _update_impl(self, obs, action, reward):
        """obs [H+1, B, obs_dim], action [H, B, A], reward [H, B, 1]: one model update and one policy update."""
        a, m = self.args, self.model
        with torch.no_grad():
            next_z = m.encode(obs[1:])
            td_targets = reward + self.discount * m.Q(next_z, m.pi(next_z)[0], "min", target=True)
        m.train()
        z = m.encode(obs[0])
        zs, consistency_loss = [z], 0.0
        for t in range(a.horizon):
            z = m.next(z, action[t])
            consistency_loss = consistency_loss + F.mse_loss(z, next_z[t]) * a.rho ** t
            zs.append(z)
        zs = torch.stack(zs)
        qs = m.Q(zs[:-1], action, "all")  # [num_q, H, B, bins]
        reward_preds = m.reward(zs[:-1], action)
        rho = a.rho ** torch.arange(a.horizon, device=obs.device, dtype=obs.dtype)
        reward_loss = (soft_ce(reward_preds, reward, a).mean(dim=(1, 2)) * rho).sum() / a.horizon
        value_loss = (soft_ce(qs, td_targets.unsqueeze(0).expand(len(qs), -1, -1, -1), a).mean(dim=(2, 3))
                      * rho).sum() / (a.horizon * a.num_q)
        consistency_loss = consistency_loss / a.horizon
        total_loss = a.consistency_coef * consistency_loss + a.reward_coef * reward_loss + a.value_coef * value_loss
        total_loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(m.parameters(), a.grad_clip_norm)
        self.optim.step()
        self.optim.zero_grad(set_to_none=True)
        info = self.update_pi(zs.detach())
        with torch.no_grad():
            torch._foreach_lerp_(list(m.target_qs.parameters()), list(m.qs.parameters()), a.tau)
        m.eval()
        info.update(consistency_loss=consistency_loss, reward_loss=reward_loss, value_loss=value_loss,
                    total_loss=total_loss, grad_norm=grad_norm)
        return {k: v.detach() for k, v in info.items()}

    def update(self, buffer):
        return self._update(*buffer.sample())

    @torch.no_grad()
    def estimate_value(self, z, actions):
        """Discounted sum of predicted rewards over the plan plus discount^H * Q at its end."""
        G, discount = 0.0, 1.0
        for t in range(self.args.horizon):
            G = G + discount * two_hot_inv(self.model.reward(z, actions[t]), self.args)
            z = self.model.next(z, actions[t])
            discount = discount * self.discount
        return G + discount * self.model.Q(z, self.model.pi(z)[0], "avg")

    @torch.no_grad()
    def _plan_impl(self, obs, t0, eval_mode):
        a, H, A = self.args, self.args.horizon, self.act_dim
        z = self.model.encode(obs.unsqueeze(0))
        actions = torch.empty(H, a.num_samples, A, device=obs.device)
        if a.num_pi_trajs > 0:  # roll the policy prior through the model
            _z = z.expand(a.num_pi_trajs, -1)
            for t in range(H):
                actions[t, : a.num_pi_trajs] = self.model.pi(_z)[0]
                if t < H - 1:
                    _z = self.model.next(_z, actions[t, : a.num_pi_trajs])
        z = z.expand(a.num_samples, -1)
        mean = torch.zeros(H, A, device=obs.device)
        std = torch.full((H, A), a.max_std, device=obs.device)
        if not t0:
            mean[:-1] = self.prev_mean[1:]
        for _ in range(self.iterations):
            noise = torch.randn(H, a.num_samples - a.num_pi_trajs, A, device=obs.device)
            actions[:, a.num_pi_trajs:] = (mean.unsqueeze(1) + std.unsqueeze(1) * noise).clamp(-1, 1)
            value = self.estimate_value(z, actions).nan_to_num(0).squeeze(1)
            elite_value, elite_idx = torch.topk(value, a.num_elites, dim=0)
            elite_actions = actions[:, elite_idx]
            score = torch.exp(a.temperature * (elite_value - elite_value.max()))
            score = score / score.sum()
            mean = (score.view(1, -1, 1) * elite_actions).sum(1)
            std = (score.view(1, -1, 1) * (elite_actions - mean.unsqueeze(1)) ** 2).sum(1).sqrt()
            std = std.clamp(a.min_std, a.max_std)
        # pick one elite in proportion to its score (Gumbel-max), act with its first action
        gumbel = -torch.log(-torch.log(torch.rand_like(score).clamp(min=1e-20)))
        act = elite_actions[0, torch.argmax(score.log() + gumbel)]
        if not eval_mode:
            act = act + std[0] * torch.randn(A, device=obs.device)
        self.prev_mean.copy_(mean)
        return act.clamp(-1, 1)

    @torch.no_grad()
    def act(self, obs, t0, eval_mode=False):
        if self.args.mpc:
            return self._plan(obs, t0, eval_mode)
        action, info = self.model.pi(self.model.encode(obs.unsqueeze(0)))
        return (info["mean"] if eval_mode else action)[0]


# ------------------------------------------------------------------------------------------------ replay
class EpisodeBuffer:
    """Whole episodes in a ring of slots; samples slices of horizon+1 observations from finished episodes.

    Slot row k holds obs[k] and (for k >= 1) the action and reward that led to it, as the official buffer."""

    def __init__(self, num_slots, ep_len, obs_dim, act_dim, args, device):
        self.args, self.device, self.ep_len, self.num_slots = args, device, ep_len, num_slots
        self.obs = torch.zeros(num_slots, ep_len + 1, obs_dim)
        self.action = torch.zeros(num_slots, ep_len + 1, act_dim)
        self.reward = torch.zeros(num_slots, ep_len + 1)
        self.num_eps = 0  # finished episodes; the episode being collected lives in slot num_eps % num_slots

    def add(self, t, obs, action=None, reward=None):
        slot = self.num_eps % self.num_slots
        self.obs[slot, t] = torch.as_tensor(obs)
        if action is not None:
            self.action[slot, t] = torch.as_tensor(action)
            self.reward[slot, t] = float(reward)

    def sample(self):
        a = self.args
        available = min(self.num_eps, self.num_slots - 1)
        slot = (self.num_eps - 1 - torch.randint(available, (a.batch_size,))) % self.num_slots
        start = torch.randint(self.ep_len - a.horizon + 1, (a.batch_size,))
        t = start.unsqueeze(1) + torch.arange(a.horizon + 1)  # [B, H+1]
        s = slot.unsqueeze(1)
        obs = self.obs[s, t].transpose(0, 1)
        action = self.action[s, t[:, 1:]].transpose(0, 1)
        reward = self.reward[s, t[:, 1:]].transpose(0, 1).unsqueeze(-1)
        return tuple(x.to(self.device, non_blocking=True).contiguous() for x in (obs, action, reward))

    def state_dict(self):
        n = min(self.num_eps + 1, self.num_slots)  # only the slots written so far
        return dict(obs=self.obs[:n], action=self.action[:n], reward=self.reward[:n], num_eps=self.num_eps)

    def load_state_dict(self, d):
        n = len(d["obs"])
        self.obs[:n], self.action[:n], self.reward[:n] = d["obs"], d["action"], d["reward"]
        self.num_eps = d["num_eps"]


# ---------------------------------------------------------------------------------------------- checking
def check_args(args):
    """One clear error per bad flag, before any heavy work."""
    def need(ok, msg):
        if not ok:
            raise ValueError(msg)
    need(args.model_size in MODEL_SIZES, f"--model-size must be one of {sorted(MODEL_SIZES)}, got {args.model_size}")
    for k, v in MODEL_SIZES[args.model_size].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    for k in ("total_timesteps", "action_repeat", "batch_size", "horizon", "latent_dim", "mlp_dim", "enc_dim",
              "iterations", "num_samples", "num_elites", "eval_episodes", "log_every"):
        need(getattr(args, k) > 0, f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    need(args.num_q >= 2, f"--num-q must be >= 2 (Q is the min of 2 random heads), got {args.num_q}")
    need(args.latent_dim % args.simnorm_dim == 0,
         f"--latent-dim ({args.latent_dim}) must be a multiple of --simnorm-dim ({args.simnorm_dim})")
    need(0 <= args.num_pi_trajs < args.num_samples,
         f"--num-pi-trajs must be in [0, --num-samples), got {args.num_pi_trajs} with {args.num_samples} samples")
    need(args.num_elites <= args.num_samples,
         f"--num-elites must be in [1, --num-samples={args.num_samples}], got {args.num_elites}")
    need(0 < args.min_std <= args.max_std, f"need 0 < --min-std <= --max-std, got {args.min_std}, {args.max_std}")
    need(args.num_bins >= 2 and args.vmin < args.vmax, "need --num-bins >= 2 and --vmin < --vmax")
    need(0 < args.tau <= 1 and 0 < args.rho <= 1, "--tau and --rho must be in (0, 1]")
    need(args.save_every >= 0 and args.eval_every >= 0, "--save-every and --eval-every must be >= 0")
    if args.era:  # ERA
        era_core.gaussian_entropy_floor(torch.zeros(1), args.entropy_per_dim,  # ERA: raises on impossible target
                                        args.era_log_std_min, args.era_log_std_max)  # ERA
    else:  # ERA
        need(args.log_std_min < args.log_std_max, "--log-std-min must be < --log-std-max")  # ERA


# -------------------------------------------------------------------------------------------------- main
def save_checkpoint(path, agent, buffer, env, state, args):
    ckpt = dict(model=agent.model.state_dict(), optim=agent.optim.state_dict(), pi_optim=agent.pi_optim.state_dict(),
                scale=agent.scale, prev_mean=agent.prev_mean, buffer=buffer.state_dict(), env=env_state(env),
                state=state, args=asdict(args), rng=dict(torch=torch.get_rng_state(), numpy=np.random.get_state(),
                python=random.getstate(), cuda=torch.cuda.get_rng_state_all() if args.cuda else None))
    torch.save(ckpt, path + ".tmp")
    os.replace(path + ".tmp", path)


def main(args):
    ckpt = None
    if args.resume is not None:
        if not os.path.isfile(args.resume):
            raise ValueError(f"--resume: no checkpoint at {args.resume}")
        ckpt = torch.load(args.resume, map_location="cpu", weights_only=False)
        keep = {k: getattr(args, k) for k in ("total_timesteps", "save_every", "cuda", "compile", "resume")}
        args = Args(**{**ckpt["args"], **keep})
    check_args(args)
    if args.cuda and not torch.cuda.is_available():
        raise ValueError("--cuda was requested but no CUDA device is available (use --no-cuda)")
    env_id = args.env_id if args.env_id.startswith("dm_control/") else f"dm_control/{args.env_id}-v0"
    if env_id not in gym.registry:
        raise ValueError(f"--env-id {args.env_id!r} is not a dm_control task (e.g. dm_control/cartpole-swingup-v0)")
    if ckpt is None:
        run_name = f"{env_id}__{args.exp_name + ('' if args.era else '_noera')}__{args.seed}__{int(time.time())}"  # ERA
        run_dir = os.path.join(args.runs_dir, run_name)
    else:
        run_dir = os.path.dirname(os.path.abspath(args.resume))

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    if args.torch_deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)
    device = torch.device("cuda" if args.cuda else "cpu")

    env = make_env(env_id, args.action_repeat)
    eval_env = make_env(env_id, args.action_repeat)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    task_len = int(env.unwrapped._env._step_limit) // args.action_repeat
    ep_len = args.episode_length or task_len
    if not args.horizon < ep_len <= task_len:
        raise ValueError(f"--episode-length must be in ({args.horizon}, {task_len}] for this task, got {ep_len}")
    seed_steps = args.seed_steps if args.seed_steps is not None else max(1000, 5 * ep_len)
    if not ep_len <= seed_steps < args.total_timesteps:
        raise ValueError(f"--seed-steps must be in [episode length {ep_len}, --total-timesteps "
                         f"{args.total_timesteps}) so that a full episode exists before updates; got {seed_steps}")
    frac = ep_len / 5  # the official heuristic: discount from episode length, 0.99 for 500 steps
    discount = min(max((frac - 1) / frac, 0.95), 0.995)

    agent = Agent(obs_dim, act_dim, args, device, discount)
    num_slots = math.ceil(min(args.buffer_size, args.total_timesteps) / ep_len) + 1
    buffer = EpisodeBuffer(num_slots, ep_len, obs_dim, act_dim, args, device)
    # state of the loop; everything needed to continue exactly is here or in the networks/buffer/env/RNGs
    st = dict(global_step=0, ep_t=0, ep_return=0.0, done=True, pending_updates=0, eval_next=True, obs=None)

    if ckpt is not None:
        agent.model.load_state_dict(ckpt["model"])
        agent.optim.load_state_dict(ckpt["optim"])
        agent.pi_optim.load_state_dict(ckpt["pi_optim"])
        agent.scale.copy_(ckpt["scale"])
        agent.prev_mean.copy_(ckpt["prev_mean"])
        buffer.load_state_dict(ckpt["buffer"])
        set_env_state(env, ckpt["env"])
        st = ckpt["state"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        np.random.set_state(ckpt["rng"]["numpy"])
        random.setstate(ckpt["rng"]["python"])
        if args.cuda and ckpt["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])

    writer = SummaryWriter(run_dir, purge_step=st["global_step"] + 1 if ckpt is not None else None)
    if ckpt is None:
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(
            f"|{k}|{v}|" for k, v in {**asdict(args), "episode_length": ep_len, "seed_steps": seed_steps,
                                      "discount": discount}.items()))
    n_params = sum(p.numel() for n, p in agent.model.named_parameters() if not n.startswith("target_qs"))
    print(f"run dir {run_dir}: {n_params / 1e6:.2f}M parameters, obs {obs_dim}, actions {act_dim}, "
          f"episode {ep_len} agent steps, seed steps {seed_steps}, discount {discount:.4f}, device {device}")
    ckpt_path = os.path.join(run_dir, "checkpoint.pt")

    stop = {"requested": False}

    def on_sigint(signum, frame):  # first Ctrl-C: finish the current step/update, save, exit; second: abort
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        print("\nCtrl-C: saving a checkpoint at the next consistent point (press again to abort)")

    old_handler = signal.signal(signal.SIGINT, on_sigint)

    def evaluate():
        returns = []
        for i in range(args.eval_episodes):
            o, _ = eval_env.reset(seed=args.seed + 100 + i)  # fixed initial states: comparable over time
            ret = 0.0
            for t in range(ep_len):
                if stop["requested"]:
                    return None
                o, r, terminated, truncated, _ = eval_env.step(
                    agent.act(torch.as_tensor(o, device=device), t0=t == 0, eval_mode=True).cpu().numpy())
                ret += r
                if terminated:
                    break
            returns.append(ret)
        return float(np.mean(returns))

    pbar = tqdm(total=args.total_timesteps, initial=st["global_step"], desc="agent steps")
    start_time, start_step, info = time.time(), st["global_step"], None
    try:
        while True:
            # updates owed by the last environment step (a whole burst right after the seed steps)
            burst = st["pending_updates"] > 1
            while st["pending_updates"] > 0 and not stop["requested"]:
                info = agent.update(buffer)
                st["pending_updates"] -= 1
            gs = st["global_step"]
            if info is not None and st["pending_updates"] == 0 and (gs % args.log_every == 0 or burst):
                for k, v in info.items():
                    writer.add_scalar(f"losses/{k}" if "loss" in k or "norm" in k or "scale" in k else f"charts/{k}",
                                      v.item(), gs)
                if args.era:  # ERA
                    writer.add_scalar("charts/era_target_entropy", act_dim * args.entropy_per_dim, gs)  # ERA
                writer.add_scalar("charts/SPS", (gs - start_step) / (time.time() - start_time), gs)
                info = None
            if stop["requested"]:
                break
            if args.save_every and gs % args.save_every == 0 and gs > start_step:
                save_checkpoint(ckpt_path, agent, buffer, env, st, args)
            if st["done"]:
                if st["eval_next"] and args.eval_every:
                    saved = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if args.cuda else None,
                             agent.prev_mean.clone())
                    ret = evaluate()
                    if ret is None:  # Ctrl-C during eval: undo its RNG use and save as if it had not started
                        torch.set_rng_state(saved[0])
                        if args.cuda:
                            torch.cuda.set_rng_state_all(saved[1])
                        agent.prev_mean.copy_(saved[2])
                        break
                    writer.add_scalar("eval/episodic_return", ret, gs)
                    tqdm.write(f"step {gs} (env steps {gs * args.action_repeat}): eval return {ret:.1f}")
                    st["eval_next"] = False
                if gs > 0:
                    buffer.num_eps += 1  # the finished episode becomes sampleable
                    writer.add_scalar("charts/episodic_return", st["ep_return"], gs)
                    writer.add_scalar("charts/episodic_length", st["ep_t"], gs)
                    writer.add_scalar("charts/env_steps", gs * args.action_repeat, gs)
                    pbar.set_postfix(ret=f"{st['ep_return']:.1f}")
                st["obs"] = env.reset(seed=args.seed if gs == 0 else None)[0]
                st.update(ep_t=0, ep_return=0.0, done=False)
                buffer.add(0, st["obs"])
            if gs >= args.total_timesteps:
                break

            # collect one agent step
            if gs > seed_steps:
                action = agent.act(torch.as_tensor(st["obs"], device=device), t0=st["ep_t"] == 0).cpu().numpy()
            else:
                action = np.random.uniform(-1, 1, act_dim).astype(np.float32)
            obs, reward, terminated, truncated, _ = env.step(action.astype(np.float64))
            if terminated:
                raise ValueError(f"{env_id} terminated an episode; this TD-MPC2 covers non-episodic (DMC) tasks")
            st["ep_t"] += 1
            st["ep_return"] += float(reward)
            buffer.add(st["ep_t"], obs, action, reward)
            st.update(obs=obs, done=st["ep_t"] == ep_len, global_step=gs + 1)
            if gs >= seed_steps:
                st["pending_updates"] = seed_steps if gs == seed_steps else 1
            if args.eval_every and (gs + 1) % args.eval_every == 0:
                st["eval_next"] = True
            pbar.update(1)
    finally:
        # a crash in the middle of a step is not a consistent point: only clean exits and Ctrl-C save
        signal.signal(signal.SIGINT, old_handler)
        pbar.close()
    save_checkpoint(ckpt_path, agent, buffer, env, st, args)
    print(f"checkpoint written to {ckpt_path}" + (" (interrupted)" if stop["requested"] else ""))
    env.close()
    eval_env.close()
    writer.close()
    return run_dir


if __name__ == "__main__":
    main(tyro.cli(Args))
