# docs and results: docs/tdmpc2_era.md · the run skeleton shared by all five scripts: docs/skeleton.md
"""TD-MPC2 (Hansen, Su, Wang, ICLR 2024) and TD-MPC2-ERA on dm_control, in one file.

A latent world model (SimNorm encoder, latent dynamics, reward head, ensemble of Q heads with two-hot symlog
regression) learns from horizon-3 slices of replay; actions come from MPPI planning in latent space, seeded by
a policy prior. ERA changes only the prior: N(tanh(mean), σ²) truncated to [-1, 1] (the official SAC-ERA
bounding) with the ERA log-std, whose action-space entropy keeps a floor whatever the mean does, and no entropy
bonus in its loss. A "step" is an agent step: one planned action, repeated for `--action-repeat` control steps.

    python tdmpc2_era.py --env-id dm_control/dog-run-v0                 # 5M model, 1M agent steps (GPU)
    python tdmpc2_era.py --env-id cartpole-swingup --model-size 1 --no-era
"""
import contextlib
import importlib.util
import io
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Literal, Optional

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "disable")  # no display: no renderer, no GLFW warning at start
try:  # with MUJOCO_GL=osmesa, OSMesa's LLVM loaded before triton's segfaults the process: load triton's first
    importlib.import_module("triton")
except ImportError:
    pass

import gymnasium as gym
import numpy as np
import shimmy
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import era_core  # ERA

gym.register_envs(shimmy)  # the dm_control/* ids

SCRIPT = os.path.basename(__file__)
MODEL_SIZES = {1: dict(mlp_dim=384, latent_dim=128, num_q=2),  # the official presets (millions of parameters);
               5: dict(mlp_dim=512, latent_dim=512, num_q=5)}  # the encoder's hidden width is 256 in both
NUM_BINS, VMIN, VMAX = 101, -10.0, 10.0  # TD-MPC2's two-hot regression: 101 bins on [-10, 10] in symlog space
SIMNORM_DIM = 8  # SimNorm group size
LOG_STD_MIN, LOG_STD_MAX = -10.0, 2.0  # TD-MPC2's tanh map of the policy log-std
CONSISTENCY_COEF, REWARD_COEF, VALUE_COEF = 20.0, 0.1, 0.1  # TD-MPC2's loss weights
ENC_LR_SCALE, GRAD_CLIP_NORM = 0.3, 20.0  # the encoder's learning-rate factor; the gradient-norm clip
MIN_STD, MAX_STD, TEMPERATURE = 0.05, 2.0, 0.5  # MPPI's std bounds and temperature


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be enabled when available"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases (pip install wandb)"""
    wandb_project_name: str = "era"
    """the wandb's project name"""
    wandb_entity: Optional[str] = None
    """the entity (team) of wandb's project"""
    capture_video: bool = False
    """whether to capture videos of the evaluation episodes (check out the `videos` folder of the run)"""
    runs_dir: str = "runs"
    """tensorboard logs, checkpoint.pt and videos go to {runs_dir}/{run_name}/"""
    resume: Optional[str] = None
    """continue the run saved in this checkpoint.pt with its own flags (only --total-timesteps and --cuda may change)"""
    save_every: int = 50_000
    """write checkpoint.pt every N agent steps, at the next episode end (0: only at the end and on a signal)"""
    eval_every: int = 50_000
    """evaluate (planning without exploration noise) every N agent steps, at the next episode end (0: never)"""
    eval_episodes: int = 10
    """episodes per evaluation"""
    log_every: int = 1000
    """log losses every N agent steps"""
    compile: bool = False
    """torch.compile the update and the planner (CUDA graphs on CUDA)"""

    # Algorithm specific arguments
    env_id: str = "dm_control/dog-run-v0"
    """dm_control task: `dm_control/<domain>-<task>-v0` or the short `<domain>-<task>`"""
    total_timesteps: int = 1_000_000
    """total agent steps (the run ends with the episode that reaches it)"""
    action_repeat: int = 2
    """dm_control control steps per agent step"""
    episode_length: Optional[int] = None
    """agent steps per episode (default: the task's time limit / action_repeat, 500 for DMC)"""
    seed_steps: Optional[int] = None
    """random-action steps, then one burst of as many updates (default: max(1000, 5 x episode length))"""
    model_size: Literal[1, 5] = 5
    """1 or 5: the official presets (millions of parameters)"""
    latent_dim: Optional[int] = None
    """override the preset's latent size (a multiple of the SimNorm group size 8)"""
    mlp_dim: Optional[int] = None
    """override the preset's hidden width of dynamics, reward, Q and policy"""
    num_q: Optional[int] = None
    """override the preset's number of Q heads"""
    buffer_size: int = 1_000_000
    """replay capacity in agent steps"""
    batch_size: int = 256
    """slices per update"""
    horizon: int = 3
    """latent rollout length for training and planning"""
    rho: float = 0.5
    """temporal weight rho^t of the losses"""
    lr: float = 3e-4
    """Adam learning rate (encoder: 0.3 x lr)"""
    tau: float = 0.01
    """Polyak rate of the target Qs and of the running Q scale"""
    entropy_coef: float = 1e-4
    """weight of the policy prior's entropy bonus"""
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

    # ERA
    era: bool = True  # ERA
    """ERA (default) or TD-MPC2 as released (--no-era)"""  # ERA
    entropy_per_dim: float = 0.25  # ERA
    """ERA target entropy H0' / D of the Gaussian before truncation, nats per action dimension"""  # ERA
    log_std_min: float = -10.0  # ERA
    """ERA's lowest log-std (TD-MPC2's)"""  # ERA
    log_std_max: float = 0.0  # ERA
    """ERA's highest log-std (SAC-ERA's: sigma <= 1 on the [-1, 1] action scale)"""  # ERA


# TRY NOT TO MODIFY: command line, checkpoints, RNG (the same design in all five scripts: docs/skeleton.md)
BUDGET = ("total_timesteps", "cuda")  # the only flags that may change with --resume


def fail(message):
    """Bad input: one line on stderr, exit code 2, no traceback; nothing saved is touched."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args():
    """tyro's command line; its parse errors reduced to the same one line as check_args'."""
    try:
        with contextlib.redirect_stderr(io.StringIO()) as captured:
            return tyro.cli(Args)
    except SystemExit as e:
        if e.code:  # tyro draws a box: keep the message line under its title
            text = [line.strip(" │╭╮╰╯─") for line in captured.getvalue().splitlines()]
            fail(" ".join(text[1:(text + [""]).index("", 1)]) or "bad command line")  # its lines, unwrapped
        raise


def check_args(args, control_steps):
    """ValueError naming the first flag out of its range; fills in the preset and the task's episode length."""
    for name, value in MODEL_SIZES[args.model_size].items():
        setattr(args, name, value if getattr(args, name) is None else getattr(args, name))
    task_len = int(control_steps) // max(args.action_repeat, 1)
    args.episode_length = task_len if args.episode_length is None else args.episode_length
    args.seed_steps = max(1000, 5 * args.episode_length) if args.seed_steps is None else args.seed_steps
    for name, ok, allowed in [
        *[(k, getattr(args, k) >= 1, ">= 1") for k in ("total_timesteps", "action_repeat", "buffer_size", "batch_size",
          "horizon", "mlp_dim", "iterations", "num_samples", "eval_episodes", "log_every")],
        ("lr", 0 < args.lr < math.inf, "a finite number > 0"),
        ("entropy_coef", 0 <= args.entropy_coef < math.inf, "a finite number >= 0"),
        *[(k, 0 < getattr(args, k) <= 1, "in (0, 1]") for k in ("tau", "rho")],
        *[(k, getattr(args, k) >= 0, ">= 0") for k in ("save_every", "eval_every")],
        ("latent_dim", args.latent_dim >= 1 and args.latent_dim % SIMNORM_DIM == 0, f"a positive multiple of {SIMNORM_DIM}"),
        ("num_q", args.num_q >= 2, ">= 2 (Q is the min of 2 random heads)"),
        ("num_elites", 1 <= args.num_elites <= args.num_samples, f"in [1, --num-samples={args.num_samples}]"),
        ("num_pi_trajs", 0 <= args.num_pi_trajs < args.num_samples, f"in [0, --num-samples={args.num_samples})"),
        ("episode_length", args.horizon < args.episode_length <= task_len, f"in (--horizon, {task_len}] for this task"),
        ("seed_steps", args.episode_length <= args.seed_steps < args.total_timesteps, "in [episode length, --total-timesteps)"),
        ("track", not args.track or importlib.util.find_spec("wandb"), "off unless wandb is installed (pip install wandb)"),
        ("capture_video", not args.capture_video or (os.environ.get("MUJOCO_GL") != "disable" and importlib.util.find_spec(
            "moviepy")), "off without a renderer (MUJOCO_GL=egl or osmesa) and moviepy (pip install moviepy)"),
    ]:
        if not ok:
            raise ValueError(f"--{name.replace('_', '-')} must be {allowed}, got {getattr(args, name)}")
    era_core.check_gaussian_target(args.entropy_per_dim, args.log_std_min, args.log_std_max, "--entropy-per-dim")  # ERA


def load_checkpoint(args):
    """(the saved run's Args with this command line's budget flags, the checkpoint); ValueError if unusable."""
    given = [k for k, v in asdict(args).items() if k != "resume" and v != getattr(Args(), k)]
    try:
        checkpoint = torch.load(args.resume, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise ValueError(f"--resume {args.resume}: no such file") from None
    except Exception:
        raise ValueError(f"--resume {args.resume}: not a readable checkpoint (empty, truncated or not a torch.save file)") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("script") != SCRIPT or set(checkpoint["args"]) != set(asdict(args)):
        raise ValueError(f"--resume {args.resume}: not a checkpoint of this version of {SCRIPT}")
    for name in given:  # a flag equal to the run's own value is fine: benchmarks/run.py repeats them all
        if name not in BUDGET and getattr(args, name) != checkpoint["args"][name]:
            raise ValueError(f"--{name.replace('_', '-')} cannot change with --resume, which continues the run with "
                             f"its saved flags (only --{' and --'.join(b.replace('_', '-') for b in BUDGET)} may change)")
    return replace(Args(**checkpoint["args"]), resume=args.resume, **{k: getattr(args, k) for k in given}), checkpoint


def save_checkpoint(path, **state):
    """Atomic: written to a temporary file, then renamed, so a kill mid-write keeps the previous checkpoint."""
    torch.save({"script": SCRIPT, **state}, path + ".tmp")
    os.replace(path + ".tmp", path)


def rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def episode_seed(seed, episode):
    """The reset seed of episode `episode` (0, 1, ...): a resumed run starts its next episode as an uninterrupted one."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


def make_env(env_id, render_mode=None):
    """A dm_control task via shimmy, its dict of observations flattened."""
    if env_id not in gym.registry:
        raise ValueError(f"--env-id must name a dm_control task (dm_control/<domain>-<task>-v0), got {env_id}")
    return gym.wrappers.FlattenObservation(gym.make(env_id, render_mode=render_mode))


def step_repeated(env, action, repeat):
    """`repeat` control steps with one action, their rewards summed (DMC tasks never terminate)."""
    steps = [env.step(action) for _ in range(repeat)]
    return steps[-1][0], sum(step[1] for step in steps)


# ALGO LOGIC: TD-MPC2's math helpers
def symlog(x):
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x):
    return torch.sign(x) * torch.expm1(x.abs())


def two_hot(x):
    """Scalars [..., 1] -> soft two-hot over NUM_BINS in symlog space [..., NUM_BINS]."""
    pos = (symlog(x).clamp(VMIN, VMAX) - VMIN) / ((VMAX - VMIN) / (NUM_BINS - 1))
    low = pos.floor().clamp(max=NUM_BINS - 2)
    out = torch.zeros(*x.shape[:-1], NUM_BINS, device=x.device, dtype=x.dtype)
    out.scatter_(-1, low.long(), 1 - (pos - low))
    return out.scatter_(-1, low.long() + 1, pos - low)


def two_hot_inv(logits):
    """Logits [..., NUM_BINS] -> expected value, mapped back by symexp [..., 1]."""
    bins = torch.linspace(VMIN, VMAX, NUM_BINS, device=logits.device, dtype=logits.dtype)
    return symexp((F.softmax(logits, dim=-1) * bins).sum(-1, keepdim=True))


def soft_ce(logits, target):
    """Cross-entropy of logits [..., NUM_BINS] against the two-hot of scalar targets [..., 1]."""
    return -(two_hot(target) * F.log_softmax(logits, dim=-1)).sum(-1, keepdim=True)


def mish(x):
    """x·tanh(softplus(x)); without autograd on CPU as x - 2x / ((1 + e^x)^2 + 1) from one exp, in place: F.mish
    goes through expm1/log1p on our CPU torch build and costs 3.5x more (planned actions: -30 % time)."""
    if x.is_cuda or (torch.is_grad_enabled() and x.requires_grad):
        return F.mish(x)
    return torch.addcdiv(x, x, torch.clamp(x, max=20.0).exp_().add_(1).square_().add_(1), value=-2)  # x > 20: x


def simnorm(x):
    """Simplicial normalization: softmax over consecutive groups of SIMNORM_DIM features."""
    x = x.unflatten(-1, (-1, SIMNORM_DIM))
    e = (x - x.amax(-1, keepdim=True).detach()).exp_()  # F.softmax over 8 features is 7x slower on our CPU
    return (e / e.sum(-1, keepdim=True)).flatten(-2)


# ALGO LOGIC: networks
class NormedLinear(nn.Linear):
    """Linear -> LayerNorm -> Mish (or `act`)."""

    def __init__(self, in_dim, out_dim, act=mish):
        super().__init__(in_dim, out_dim)
        self.ln = nn.LayerNorm(out_dim)
        self.act = act

    def forward(self, x):
        return self.act(self.ln(super().forward(x)))


def mlp(in_dim, hidden, out_dim, out_act=None):
    return nn.Sequential(*[NormedLinear(i, o) for i, o in zip([in_dim] + hidden[:-1], hidden)],
                         NormedLinear(hidden[-1], out_dim, act=out_act) if out_act else nn.Linear(hidden[-1], out_dim))


class QEnsemble(nn.Module):
    """num_q Q heads (in -> hidden -> hidden -> bins) with stacked weights: one batched matmul per layer."""

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

    def forward(self, x, heads=None, detach=False):
        """x [..., in] -> logits [heads, ..., bins] of every head, or of `heads` only; `detach`: no grad to them."""
        w, b, ln_w, ln_b = ([q.detach() if detach else q for q in (p if heads is None else [q[heads] for q in p])]
                            for p in (self.weights, self.biases, self.ln_w, self.ln_b))
        h = x.reshape(1, -1, x.shape[-1]).expand(len(w[0]), -1, -1)
        for i in range(2):
            h = torch.baddbmm(b[i], h, w[i])
            h = F.dropout(h, self.dropout, self.training) if i == 0 else h  # independent masks per head
            h = mish(F.layer_norm(h, h.shape[-1:]) * ln_w[i] + ln_b[i])
        return torch.baddbmm(b[2], h, w[2]).unflatten(1, x.shape[:-1])


def tanh_normal(mean, raw_std, args):
    """TD-MPC2's prior: tanh(u), u ~ N(mean, σ²), log σ tanh-mapped into [LOG_STD_MIN, LOG_STD_MAX].

    Returns the action, log σ, the one-sample entropy estimate -log π(action), and the loss's entropy bonus
    D·(-log N(u; mean, σ)): the official form since Dec 2024, without the tanh correction.
    """
    log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw_std) + 1)
    eps = torch.randn_like(mean)
    log_prob_u = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1, keepdim=True)
    action = torch.tanh(mean + eps * log_std.exp())
    entropy = -log_prob_u + torch.log(F.relu(1 - action.pow(2)) + 1e-6).sum(-1, keepdim=True)
    return action, log_std, entropy, -log_prob_u * mean.shape[-1]


def truncated_normal(mean, raw_std, args):  # ERA
    """ERA's prior: N(tanh(mean), σ²) on [-1, 1], ERA's log σ; exact entropy; no bonus: ERA holds the entropy."""  # ERA
    target = mean.shape[-1] * args.entropy_per_dim  # ERA
    log_std = era_core.gaussian_entropy_floor(raw_std, target, args.log_std_min, args.log_std_max)  # ERA
    loc = torch.tanh(mean).clamp(-era_core.TRUNCATION_BOUND, era_core.TRUNCATION_BOUND)  # ERA
    entropy = era_core.truncated_normal_entropy(loc, log_std.exp()).unsqueeze(-1)  # ERA
    return era_core.truncated_normal_rsample(loc, log_std.exp()), log_std, entropy, torch.zeros_like(entropy)  # ERA


class WorldModel(nn.Module):
    def __init__(self, obs_dim, act_dim, args, discount):
        super().__init__()
        self.args, self.discount, L, H = args, discount, args.latent_dim, args.mlp_dim
        self.encoder = mlp(obs_dim, [256], L, out_act=simnorm)
        self.dynamics = mlp(L + act_dim, [H, H], L, out_act=simnorm)
        self.reward_head = mlp(L + act_dim, [H, H], NUM_BINS)
        self.pi_head = mlp(L, [H, H], 2 * act_dim)
        self.qs = QEnsemble(args.num_q, L + act_dim, H, NUM_BINS, dropout=0.01)  # in the first layer
        for m in self.modules():  # truncated-normal init (std 0.02), zero biases
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.reward_head[-1].weight)
        self.target_qs = QEnsemble(args.num_q, L + act_dim, H, NUM_BINS, dropout=0.0).requires_grad_(False)
        self.target_qs.load_state_dict(self.qs.state_dict())
        self.register_buffer("scale", torch.ones(()))  # running 5-95 % range of Q, floored at 1 (policy loss)
        self.prior = tanh_normal
        self.prior = truncated_normal if args.era else self.prior  # ERA

    def next(self, z, a):
        return self.dynamics(torch.cat([z, a], dim=-1))

    def reward(self, z, a):
        return self.reward_head(torch.cat([z, a], dim=-1))

    def pi(self, z):
        """A sample of the policy prior at latent states z, and its mean action, log-std, entropy, entropy bonus."""
        mean, raw_std = self.pi_head(z).chunk(2, dim=-1)
        action, log_std, entropy, bonus = self.prior(mean, raw_std, self.args)
        return action, dict(mean=torch.tanh(mean), log_std=log_std, entropy=entropy, bonus=bonus)

    def Q(self, z, a, return_type="min", target=False, detach=False):
        """All heads' logits ('all'), or the min / mean of 2 randomly drawn heads as scalars."""
        x = torch.cat([z, a], dim=-1)
        if return_type == "all":
            return self.qs(x)
        heads = torch.randperm(self.args.num_q, device=x.device)[:2]
        q = two_hot_inv((self.target_qs if target else self.qs)(x, heads, detach))
        return q.min(0).values if return_type == "min" else q.mean(0)


def update(model, optim, pi_optim, obs, action, reward, args):
    """One world-model and one policy update on slices obs [H+1, B, obs], action [H, B, A], reward [H, B, 1]."""
    with torch.no_grad():
        next_z = model.encoder(obs[1:])
        td_target = reward + model.discount * model.Q(next_z, model.pi(next_z)[0], "min", target=True)
    model.train()
    zs = [model.encoder(obs[0])]
    for t in range(args.horizon):
        zs.append(model.next(zs[-1], action[t]))
    zs = torch.stack(zs)
    qs = model.Q(zs[:-1], action, "all")  # [num_q, H, B, bins]
    rho = args.rho ** torch.arange(args.horizon + 1, device=obs.device, dtype=obs.dtype)
    consistency_loss = (F.mse_loss(zs[1:], next_z, reduction="none").mean(dim=(1, 2)) * rho[:-1]).sum() / args.horizon
    reward_loss = (soft_ce(model.reward(zs[:-1], action), reward).mean(dim=(1, 2)) * rho[:-1]).sum() / args.horizon
    value_loss = (soft_ce(qs, td_target).mean(dim=(0, 2, 3)) * rho[:-1]).sum() / args.horizon  # mean over heads
    total_loss = CONSISTENCY_COEF * consistency_loss + REWARD_COEF * reward_loss + VALUE_COEF * value_loss
    total_loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
    optim.step()
    optim.zero_grad(set_to_none=True)

    # the policy prior: maximise Q (scaled by its running 5-95 % range) + the entropy bonus, on detached latents
    zs = zs.detach()
    pi_action, info = model.pi(zs)
    q = model.Q(zs, pi_action, "avg", detach=True)
    pct = torch.quantile(q[0].detach().float().flatten(), torch.tensor([0.05, 0.95], device=q.device))
    model.scale.lerp_((pct[1] - pct[0]).clamp(min=1.0), args.tau)
    pi_loss = (-(args.entropy_coef * info["bonus"] + q / model.scale).mean(dim=(1, 2)) * rho).mean()
    pi_loss.backward()
    pi_grad_norm = nn.utils.clip_grad_norm_(model.pi_head.parameters(), GRAD_CLIP_NORM)
    pi_optim.step()
    pi_optim.zero_grad(set_to_none=True)
    torch._foreach_lerp_(list(model.target_qs.parameters()), [p.detach() for p in model.qs.parameters()], args.tau)
    model.eval()
    return {"losses/consistency_loss": consistency_loss, "losses/reward_loss": reward_loss, "losses/value_loss":
            value_loss, "losses/total_loss": total_loss, "losses/grad_norm": grad_norm, "losses/pi_loss": pi_loss,
            "losses/pi_grad_norm": pi_grad_norm, "losses/pi_scale": model.scale.clone(), "charts/policy_entropy":
            info["entropy"].mean(), "charts/policy_gaussian_entropy": info["log_std"].sum(-1).mean()
            + info["log_std"].shape[-1] * 0.5 * math.log(2 * math.pi * math.e),
            "charts/action_std": (pi_action - info["mean"]).pow(2).mean().sqrt()}


@torch.no_grad()
def estimate_value(model, z, actions, args):
    """Discounted predicted rewards along each plan, plus discount^H times Q at its end."""
    G, discount = 0.0, 1.0
    for t in range(args.horizon):
        G = G + discount * two_hot_inv(model.reward(z, actions[t]))
        z = model.next(z, actions[t])
        discount = discount * model.discount
    return G + discount * model.Q(z, model.pi(z)[0], "avg")


@torch.no_grad()
def act(model, obs, prev_mean, t0, eval_mode, args):
    """MPPI in latent space (or the prior with --no-mpc); prev_mean holds the plan that warm-starts the next step."""
    z = model.encoder(obs.unsqueeze(0))
    if not args.mpc:
        action, info = model.pi(z)
        return (info["mean"] if eval_mode else action)[0]
    H, A, n_pi = args.horizon, prev_mean.shape[-1], args.num_pi_trajs
    actions = torch.empty(H, args.num_samples, A, device=obs.device)
    pi_z = z.expand(n_pi, -1)
    for t in range(H):  # roll the policy prior through the model
        actions[t, :n_pi] = model.pi(pi_z)[0]
        pi_z = model.next(pi_z, actions[t, :n_pi])
    z = z.expand(args.num_samples, -1)
    mean = torch.cat([torch.zeros_like(prev_mean[1:]) if t0 else prev_mean[1:], torch.zeros_like(prev_mean[:1])])
    std = torch.full((H, A), MAX_STD, device=obs.device)
    for _ in range(args.iterations + 2 * int(A >= 20)):  # more iterations for large action spaces
        noise = torch.randn(H, args.num_samples - n_pi, A, device=obs.device)
        actions[:, n_pi:] = (mean.unsqueeze(1) + std.unsqueeze(1) * noise).clamp(-1, 1)
        value = estimate_value(model, z, actions, args).nan_to_num(0).squeeze(1)
        elite_value, elite_idx = torch.topk(value, args.num_elites, dim=0)
        elite_actions = actions[:, elite_idx]
        score = torch.softmax(TEMPERATURE * elite_value, dim=0)
        mean = (score.view(1, -1, 1) * elite_actions).sum(1)
        std = (score.view(1, -1, 1) * (elite_actions - mean.unsqueeze(1)) ** 2).sum(1).sqrt().clamp(MIN_STD, MAX_STD)
    gumbel = -torch.log(-torch.log(torch.rand_like(score).clamp(min=1e-20)))  # an elite drawn by its score
    action = elite_actions[0, torch.argmax(score.log() + gumbel)]
    if not eval_mode:
        action = action + std[0] * torch.randn(A, device=obs.device)
    prev_mean.copy_(mean)
    return action.clamp(-1, 1)


def evaluate(act_fn, model, prev_mean, env, args, global_step, device):
    """Mean return of --eval-episodes episodes from fixed starts, without exploration noise."""
    total = 0.0
    for i in range(args.eval_episodes):
        obs, _ = env.reset(seed=episode_seed(args.seed, 2**31 + i))  # the same starts every time, not training's
        if args.capture_video and i == 0:
            env.start_recording(f"eval-step-{global_step}")
        for t in tqdm(range(args.episode_length), desc=f"evaluation {i + 1}/{args.eval_episodes}", leave=False):
            action = act_fn(model, torch.as_tensor(obs, dtype=torch.float32, device=device), prev_mean, t == 0, True, args)
            obs, reward = step_repeated(env, action.cpu().numpy(), args.action_repeat)
            total += reward
        if args.capture_video and i == 0:
            env.stop_recording()
    return total / args.eval_episodes


class EpisodeBuffer:
    """Whole episodes in a ring of slots; row t of a slot holds obs[t], the action that led to it and its reward (as
    the official buffer). Samples slices of horizon + 1 steps from finished episodes."""

    def __init__(self, num_slots, ep_len, obs_dim, act_dim, args, device):
        self.args, self.device, self.obs_dim, self.num_eps = args, device, obs_dim, 0  # num_eps: finished episodes
        self.rows = torch.empty(num_slots, ep_len + 1, obs_dim + act_dim + 1)  # memory is used as rows are written

    def add(self, t, obs, action, reward):
        self.rows[self.num_eps % len(self.rows), t] = torch.as_tensor(np.concatenate([obs, action, [reward]]))

    def sample(self):
        """obs [H+1, B, obs_dim], action [H, B, act_dim], reward [H, B, 1] of B slices of finished episodes."""
        a, n = self.args, len(self.rows)
        slot = (self.num_eps - 1 - torch.randint(min(self.num_eps, n - 1), (a.batch_size, 1))) % n
        t = torch.randint(self.rows.shape[1] - a.horizon, (a.batch_size, 1)) + torch.arange(a.horizon + 1)
        x = self.rows[slot, t].transpose(0, 1).to(self.device, non_blocking=True)
        return x[:, :, : self.obs_dim], x[1:, :, self.obs_dim : -1], x[1:, :, -1:]

    def state_dict(self):
        """A copy of the rows written so far, and the episode count: what a checkpoint holds."""
        return dict(rows=self.rows[: min(self.num_eps, len(self.rows))].clone(), num_eps=self.num_eps)

    def load_state_dict(self, saved):
        self.rows[: len(saved["rows"])], self.num_eps = saved["rows"], saved["num_eps"]


def main(args):
    try:
        if args.resume:
            args, checkpoint = load_checkpoint(args)
        args.env_id = args.env_id if args.env_id.startswith("dm_control/") else f"dm_control/{args.env_id}-v0"
        env = make_env(args.env_id)
        check_args(args, env.unwrapped._env._step_limit)
    except ValueError as e:
        fail(e)
    checkpoint = checkpoint if args.resume else None
    if checkpoint is None:
        args.exp_name += "" if args.era else "_noera"  # ERA
        run_name = f"{args.env_id.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"
        run_dir = os.path.join(args.runs_dir, run_name)
    else:
        run_dir = os.path.dirname(os.path.abspath(args.resume))
        run_name = os.path.basename(run_dir)

    stop = []  # the first SIGINT/SIGTERM: finish this episode, save, exit 128 + signal; a second one stops at once

    def request_stop(signum, frame):
        stop.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}

    if args.track:
        import wandb
        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True, config=vars(args),
                   name=run_name, id=run_name, resume="allow", monitor_gym=True, save_code=True)
    writer = SummaryWriter(run_dir, purge_step=checkpoint["global_step"] + 1 if checkpoint else None)
    if checkpoint is None:
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n%s" % "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    eval_env = make_env(args.env_id, "rgb_array" if args.capture_video else None)
    if args.capture_video:  # evaluate() records the first episode of each evaluation
        eval_env = gym.wrappers.RecordVideo(eval_env, os.path.join(run_dir, "videos"), episode_trigger=lambda _: False)
    obs_dim, act_dim, ep_len = env.observation_space.shape[0], env.action_space.shape[0], args.episode_length
    discount = min(max(1 - 5 / ep_len, 0.95), 0.995)  # the official heuristic: 0.99 for 500-step episodes
    model = WorldModel(obs_dim, act_dim, args, discount).to(device).eval()
    optim = torch.optim.Adam([{"params": model.encoder.parameters(), "lr": args.lr * ENC_LR_SCALE},
                              {"params": [*model.dynamics.parameters(), *model.reward_head.parameters(),
                                          *model.qs.parameters()]}], lr=args.lr)
    pi_optim = torch.optim.Adam(model.pi_head.parameters(), lr=args.lr, eps=1e-5)
    prev_mean = torch.zeros(args.horizon, act_dim, device=device)  # the planner's warm start within an episode
    buffer = EpisodeBuffer(math.ceil(args.buffer_size / ep_len) + 1, ep_len, obs_dim, act_dim, args, device)
    mode = "reduce-overhead" if device.type == "cuda" else None  # CUDA graphs on CUDA
    update_fn, act_fn = (torch.compile(update, mode=mode), torch.compile(act, mode=mode)) if args.compile else (update, act)
    global_step, episode, next_eval, next_save = 0, 0, args.eval_every, args.save_every
    if checkpoint:
        for name, saved in (("model", model), ("optim", optim), ("pi_optim", pi_optim), ("buffer", buffer)):
            saved.load_state_dict(checkpoint[name])
        global_step, episode, next_eval, next_save = (checkpoint[k] for k in ("global_step", "episode", "next_eval", "next_save"))
        set_rng_state(checkpoint["rng"])

    ckpt_path = os.path.join(run_dir, "checkpoint.pt")
    pbar = tqdm(total=args.total_timesteps, initial=global_step, desc="agent steps")
    start_time, start_step = time.time(), global_step
    while True:
        if args.eval_every and global_step >= next_eval and not stop:
            eval_return = evaluate(act_fn, model, prev_mean, eval_env, args, global_step, device)
            writer.add_scalar("eval/episodic_return", eval_return, global_step)
            tqdm.write(f"step {global_step}: eval return {eval_return:.1f}")
            next_eval = (global_step // args.eval_every + 1) * args.eval_every
        done = global_step >= args.total_timesteps
        if stop or done or (args.save_every and global_step >= next_save):
            next_save = (global_step // args.save_every + 1) * args.save_every if args.save_every else 0
            save_checkpoint(ckpt_path, args=asdict(args), global_step=global_step, episode=episode, next_eval=next_eval,
                            next_save=next_save, model=model.state_dict(), optim=optim.state_dict(),
                            pi_optim=pi_optim.state_dict(), buffer=buffer.state_dict(), rng=rng_state())
        if stop or done:
            break

        # ALGO LOGIC: one episode, the unit at whose end a checkpoint is written
        obs, _ = env.reset(seed=episode_seed(args.seed, episode))
        buffer.add(0, obs, np.zeros(act_dim), 0.0)  # no action led to the first observation
        episode_return = 0.0
        for t in range(ep_len):
            if global_step > args.seed_steps:
                action = act_fn(model, torch.as_tensor(obs, dtype=torch.float32, device=device), prev_mean, t == 0, False,
                                args).cpu().numpy()
            else:
                action = np.random.uniform(-1, 1, act_dim).astype(np.float32)
            obs, reward = step_repeated(env, action, args.action_repeat)
            buffer.add(t + 1, obs, action, reward)
            episode_return += reward
            if global_step >= args.seed_steps:  # a burst of seed_steps updates after the seed steps, then one per step
                n = args.seed_steps if global_step == args.seed_steps else 1
                for _ in tqdm(range(n), desc="updates on the seed data") if n > 1 else range(n):
                    info = update_fn(model, optim, pi_optim, *buffer.sample(), args)
            global_step += 1
            pbar.update()
            if global_step > args.seed_steps and (global_step % args.log_every == 0 or global_step == args.seed_steps + 1):
                for tag, value in zip(info, torch.stack(list(info.values())).tolist()):  # one host sync
                    writer.add_scalar(tag, value, global_step)
                if args.era:  # ERA: the target H0' and the action-space entropy it guarantees (era_core)
                    writer.add_scalar("charts/era_target_entropy", act_dim * args.entropy_per_dim, global_step)  # ERA
                    writer.add_scalar("charts/era_entropy_bound", era_core.truncated_normal_entropy_bound(  # ERA
                        act_dim * args.entropy_per_dim, act_dim, args.log_std_max), global_step)  # ERA
                writer.add_scalar("charts/SPS", (global_step - start_step) / (time.time() - start_time), global_step)
        buffer.num_eps += 1
        episode += 1
        writer.add_scalar("charts/episodic_return", episode_return, global_step)
        writer.add_scalar("charts/episodic_length", ep_len, global_step)
        writer.add_scalar("charts/env_steps", global_step * args.action_repeat, global_step)
        pbar.set_postfix(episodic_return=f"{episode_return:.1f}")

    pbar.close()
    writer.close()
    env.close()
    eval_env.close()
    for s, handler in previous.items():
        signal.signal(s, handler)
    if stop:
        print(f"stopped by signal {stop[0]}: continue with python {SCRIPT} --resume {ckpt_path}", file=sys.stderr)
        sys.exit(128 + stop[0])


if __name__ == "__main__":
    main(parse_args())
