# docs and results: docs/sac_era.md · the run skeleton shared by all five scripts: docs/skeleton.md
import contextlib
import importlib
import io
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "disable")  # no display: no renderer, no GLFW warning at start
if importlib.util.find_spec("triton"):  # with MUJOCO_GL=osmesa, OSMesa's LLVM loaded before triton's segfaults
    importlib.import_module("triton")

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import tyro
from torch.utils.tensorboard import SummaryWriter

from era_core import HALF_LOG_2PI_E, TRUNCATION_BOUND, check_gaussian_target, gaussian_entropy_floor  # ERA
from era_core import truncated_normal_entropy, truncated_normal_rsample_log_prob  # ERA

SCRIPT = os.path.basename(__file__)


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
    wandb_entity: str | None = None
    """the entity (team) of wandb's project"""
    capture_video: bool = False
    """whether to capture videos of the evaluation episodes (check out the `videos` folder of the run)"""
    runs_dir: str = "runs"
    """tensorboard logs, checkpoint.pt and videos go to {runs_dir}/{run_name}/"""
    resume: str | None = None
    """continue the run saved in this checkpoint.pt with its own flags (only --total-timesteps and --cuda may change)"""
    save_every: int = 50_000
    """write checkpoint.pt every N agent steps, at the next episode end (0: only at the end and on a signal)"""
    eval_every: int = 25_000
    """evaluate the deterministic policy every N agent steps and at the end (0: only at the end)"""
    eval_episodes: int = 10
    """episodes per evaluation"""
    log_every: int = 100
    """log losses every N agent steps"""
    compile: bool = False
    """torch.compile the networks (opt-in; mode reduce-overhead, i.e. CUDA graphs, on a GPU)"""

    # Algorithm specific arguments
    env_id: str = "dm_control/cheetah-run-v0"
    """gymnasium MuJoCo (`HalfCheetah-v5`), dm_control (`dm_control/dog-run-v0`) or HumanoidBench (`h1hand-walk-v0`) id"""
    action_repeat: int = 0
    """env steps per agent step (0: 2 on HumanoidBench, as the official SAC-ERA code, else 1); steps count agent steps"""
    humanoidbench_termination: bool = False
    """keep HumanoidBench's early termination (the official SAC-ERA code disables it)"""
    total_timesteps: int = 1_000_000
    """total agent steps"""
    buffer_size: int = 1_000_000
    """the replay memory buffer size"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """target smoothing coefficient"""
    batch_size: int = 256
    """the batch size of samples from the replay memory"""
    learning_starts: int = 5000
    """agent steps of uniformly random actions before the first update"""
    utd_ratio: int = 2
    """gradient updates (critics, actor, temperature or delta) per agent step"""
    policy_lr: float = 3e-4
    """learning rate of the actor (Adam)"""
    q_lr: float = 3e-4
    """learning rate of the critics (AdamW) and of the temperature"""
    critic_weight_decay: float = 1e-4
    """AdamW weight decay of the critics (optax's default, as the official code)"""
    hidden_dim: int = 512
    """width of the two hidden layers of actor and critics"""

    # ERA
    era: bool = True  # ERA
    """ERA (default) or the SAC baseline (--no-era)"""  # ERA
    entropy_per_dim: float = 0.25  # ERA
    """ERA target: the Gaussian's entropy is pinned at entropy_per_dim x D nats (official default 0.25)"""  # ERA
    log_std_min: float = -8.0  # ERA
    """ERA lower bound of log sigma (official -8)"""  # ERA
    log_std_max: float = 0.0  # ERA
    """ERA upper bound of log sigma (official 0: sigma <= 1 on the [-1, 1] action scale)"""  # ERA
    learn_delta: bool = False  # ERA
    """learn the paper's compensation delta >= 0 so the bounded policy's own entropy reaches the target"""  # ERA
    delta_lr: float = 3e-4  # ERA
    """learning rate of delta (Adam; the paper gives none)"""  # ERA


# TRY NOT TO MODIFY: command line, checkpoints, RNG (the same design in all five scripts: docs/skeleton.md)
BUDGET = ("total_timesteps", "cuda")  # the only flags that may change with --resume
HUMANOIDBENCH = ("h1-", "h1hand-", "h1strong-", "h1touch-", "g1-")  # HumanoidBench ids start with a robot's name
HUMANOIDBENCH_INSTALL = ('pip install jax==0.4.30 jaxlib==0.4.30 "numpy<2" && git clone '  # -e: its dmc_deps/ has no __init__.py
                         "https://github.com/carlosferrazza/humanoid-bench && pip install --no-deps -e humanoid-bench")


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


def check_args(args):
    """ValueError naming the first flag out of its range (tyro has checked the types; NaN fails every test)."""
    renderer = os.environ.get("MUJOCO_GL", "").lower() not in ("off", "disable", "disabled", "false", "0")
    for name, ok, allowed in [
        *[(n, getattr(args, n) >= 1, ">= 1") for n in ("total_timesteps", "utd_ratio", "hidden_dim", "eval_episodes", "log_every")],
        *[(n, getattr(args, n) >= 0, ">= 0") for n in ("action_repeat", "eval_every", "save_every")],
        *[(n, 0 < getattr(args, n) < math.inf, "a finite number > 0") for n in ("policy_lr", "q_lr")],
        ("delta_lr", 0 < args.delta_lr < math.inf, "a finite number > 0"),  # ERA
        ("critic_weight_decay", 0 <= args.critic_weight_decay < math.inf, "a finite number >= 0"),
        ("learning_starts", 0 <= args.learning_starts < args.total_timesteps, "in [0, --total-timesteps)"),
        ("batch_size", 1 <= args.batch_size <= args.buffer_size, "in [1, --buffer-size]"),
        ("gamma", 0 <= args.gamma <= 1, "in [0, 1]"),
        ("tau", 0 < args.tau <= 1, "in (0, 1]"),
        ("track", not args.track or importlib.util.find_spec("wandb"), "off unless wandb is installed (pip install wandb)"),
        ("capture_video", not args.capture_video or renderer, "off unless MUJOCO_GL=egl (GPU) or =osmesa (CPU) is set"),
        ("capture_video", not args.capture_video or importlib.util.find_spec("moviepy"), "off without pip install moviepy"),
    ]:
        if not ok:
            raise ValueError(f"--{name.replace('_', '-')} must be {allowed}, got {getattr(args, name)}")
    check_gaussian_target(args.entropy_per_dim, args.log_std_min, args.log_std_max, "--entropy-per-dim")  # ERA
    if args.env_id.startswith("dm_control/"):
        gym.register_envs(importlib.import_module("shimmy"))
    if args.env_id.startswith(HUMANOIDBENCH):
        if not importlib.util.find_spec("humanoid_bench"):
            raise ValueError(f"--env-id {args.env_id}: HumanoidBench is not installed: {HUMANOIDBENCH_INSTALL}")
        if not renderer:
            raise ValueError(f"--env-id {args.env_id}: HumanoidBench opens a renderer: set MUJOCO_GL=egl or MUJOCO_GL=osmesa")
        importlib.import_module("humanoid_bench")  # registers its ids
    if args.env_id not in gym.registry:
        raise ValueError(f"--env-id {args.env_id} is not a registered gymnasium id (e.g. dm_control/cheetah-run-v0)")


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


class NoTermination(gym.Wrapper):
    """Episodes end only at the time limit (HumanoidBench as the official SAC-ERA code runs it)."""

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, False, truncated, info


def make_env(args, action_repeat, video_dir=None):
    env = gym.make(args.env_id, render_mode="rgb_array" if video_dir else None)
    env = gym.wrappers.FlattenObservation(env)  # dm_control's dict of arrays -> one vector
    env = gym.wrappers.RescaleAction(env, np.float32(-1), np.float32(1))  # the policy always acts in [-1, 1]
    if video_dir:
        env = gym.wrappers.RecordVideo(env, video_dir, episode_trigger=lambda i: i == 0)  # the first episode
    if args.env_id.startswith(HUMANOIDBENCH) and not args.humanoidbench_termination:
        env = NoTermination(env)
    return gym.wrappers.RecordEpisodeStatistics(gym.wrappers.RepeatAction(env, action_repeat))  # rewards summed


# ALGO LOGIC: initialize agent here:
class EnsembleLinear(nn.Module):
    """`n` independent Linear layers as one batched matmul, [n, batch, in] -> [n, batch, out]; orthogonal init."""

    def __init__(self, n, n_in, n_out, gain=math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([nn.init.orthogonal_(torch.empty(n_out, n_in), gain).T for _ in range(n)]))
        self.bias = nn.Parameter(torch.zeros(n, 1, n_out))

    def forward(self, x):
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    """`n` independent LayerNorms (each with its own scale and shift) over the last dim of [n, batch, dim]."""

    def __init__(self, n, dim):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(n, 1, dim)), nn.Parameter(torch.zeros(n, 1, dim))

    def forward(self, x):
        return torch.addcmul(self.bias, nn.functional.layer_norm(x, x.shape[-1:]), self.weight)


class SoftQNetwork(nn.Module):
    """Q1 and Q2 as one ensemble: each is the official critic (Linear -> LayerNorm -> ELU, twice, then Linear), their
    weights stacked so that each layer of both is one batched matmul (as TD-MPC2 and FastTD3 do). Returns [2, batch].
    ELU runs in place here and in the actor (same numbers, no 1 MB buffer per call: -3 % CPU per update at 512 wide)."""

    def __init__(self, obs_dim, act_dim, hidden):
        super().__init__()
        self.net = nn.Sequential(EnsembleLinear(2, obs_dim + act_dim, hidden), EnsembleLayerNorm(2, hidden),
                                 nn.ELU(True), EnsembleLinear(2, hidden, hidden), EnsembleLayerNorm(2, hidden),
                                 nn.ELU(True), EnsembleLinear(2, hidden, 1, gain=1.0))

    def forward(self, x, a):
        return self.net(torch.cat([x, a], -1).expand(2, -1, -1)).squeeze(-1)


def layer_init(layer, gain=math.sqrt(2)):
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


LOG_STD_MIN, LOG_STD_MAX = -5, 2


class Actor(nn.Module):
    def __init__(self, obs_dim, act_dim, hidden):
        super().__init__()
        self.trunk = nn.Sequential(layer_init(nn.Linear(obs_dim, hidden)), nn.ELU(True),
                                   layer_init(nn.Linear(hidden, hidden)), nn.ELU(True))
        self.fc_mean = layer_init(nn.Linear(hidden, act_dim), gain=1.0)
        self.fc_logstd = layer_init(nn.Linear(hidden, act_dim), gain=1.0)

    def forward(self, x):
        """The Gaussian's mean and the raw log-std head."""
        h = self.trunk(x)
        return self.fc_mean(h), self.fc_logstd(h)

    def get_action(self, x):
        """tanh(N(mean, std²)): a reparameterised action, its log-probability, the deterministic action, log std."""
        mean, raw_std = self(x)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw_std) + 1)  # From SpinUp / Denis Yarats
        noise = torch.randn_like(mean)
        action = torch.tanh(mean + log_std.exp() * noise)  # for reparameterization trick (mean + std * N(0,1))
        # log N(mean + std * noise; mean, std), written out: torch.distributions.Normal checks its arguments (a GPU sync)
        log_prob = -0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi) - torch.log(1 - action.pow(2) + 1e-6)
        return action, log_prob.sum(-1), torch.tanh(mean), log_std


class EraActor(nn.Module):  # ERA: SAC's actor network with ERA's std activation and the bounded policy
    def __init__(self, actor, target_entropy, delta, args):  # ERA
        super().__init__()  # ERA
        self.actor, self.target_entropy, self.log_std_bounds = actor, target_entropy, (args.log_std_min, args.log_std_max)  # ERA
        self.register_buffer("delta", delta)  # ERA: the paper's compensation delta >= 0 (learned in main)

    def forward(self, x):  # ERA
        return self.actor(x)  # ERA

    def get_action(self, x):  # ERA: N(tanh(mean), std²) truncated to [-1, 1]; the Gaussian's entropy is pinned at H0 + delta
        mean, raw_std = self(x)  # ERA
        log_std = gaussian_entropy_floor(raw_std, self.target_entropy + self.delta.detach(), *self.log_std_bounds)  # ERA
        loc, scale = torch.tanh(mean).clamp(-TRUNCATION_BOUND, TRUNCATION_BOUND), log_std.exp().clamp(min=1e-6)  # ERA
        action, log_prob = truncated_normal_rsample_log_prob(loc, scale)  # ERA
        return action, log_prob, loc, log_std  # ERA


def optimize(optimizer, loss):
    """One gradient step of `optimizer` on `loss`."""
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def evaluate(actor, args, action_repeat, device, video_dir=None):
    """Mean return of the deterministic policy tanh(mean) (both variants) from fixed reset seeds; no torch RNG."""
    env, returns = make_env(args, action_repeat, video_dir), []
    for i in range(args.eval_episodes):
        obs, info = env.reset(seed=episode_seed(args.seed, 10**9 + i))
        while "episode" not in info:  # RecordEpisodeStatistics adds the episode's return at its end
            with torch.no_grad():
                mean, _ = actor(torch.as_tensor(obs, dtype=torch.float32, device=device)[None])
            obs, _, _, _, info = env.step(torch.tanh(mean[0]).cpu().numpy())
        returns.append(info["episode"]["r"])
    env.close()
    return float(np.mean(returns))


def main(args):
    try:
        args, checkpoint = load_checkpoint(args) if args.resume else (args, None)
        check_args(args)
    except ValueError as e:
        fail(e)
    args.exp_name += "" if args.era or checkpoint else "_noera"  # ERA
    run_dir = os.path.dirname(os.path.abspath(args.resume)) if checkpoint else os.path.join(
        args.runs_dir, f"{args.env_id.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}")
    run_name = os.path.basename(run_dir)

    stop = []  # the first SIGINT/SIGTERM: finish this episode, save, exit 128 + signal; a second one stops at once

    def request_stop(signum, frame):
        stop.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}

    if args.track:
        __import__("wandb").init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                                 config=vars(args), name=run_name, id=run_name, resume="allow", monitor_gym=True, save_code=True)
    writer = SummaryWriter(run_dir, purge_step=checkpoint["global_step"] + 1 if checkpoint else None)
    if checkpoint is None:
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n%s" % "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # env setup: one env; episode k starts from reset(seed=episode_seed(seed, k)), so a checkpoint needs no env state
    action_repeat = args.action_repeat or (2 if args.env_id.startswith(HUMANOIDBENCH) else 1)
    env = make_env(args, action_repeat)
    obs_dim, act_dim = int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))

    actor = Actor(obs_dim, act_dim, args.hidden_dim).to(device)
    qf, qf_target = (SoftQNetwork(obs_dim, act_dim, args.hidden_dim).to(device) for _ in range(2))
    qf_target.load_state_dict(qf.state_dict())
    q_optimizer = torch.optim.AdamW(qf.parameters(), lr=args.q_lr, weight_decay=args.critic_weight_decay, fused=True)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.policy_lr, fused=True)  # fused: one kernel per step

    # Automatic entropy tuning
    autotune = True
    target_entropy = -float(act_dim)
    log_alpha = torch.zeros((), device=device, requires_grad=True)
    alpha = log_alpha.detach().exp()
    a_optimizer = torch.optim.Adam([log_alpha], lr=args.q_lr)

    checkpointed = {"actor": actor, "qf": qf, "qf_target": qf_target, "actor_optimizer": actor_optimizer,
                    "q_optimizer": q_optimizer, "a_optimizer": a_optimizer}  # + log_alpha, alpha, counters, RNGs, rb
    if args.era:  # ERA: SAC-ERA is SAC with alpha == 0: the activation, not an entropy bonus, keeps the entropy
        autotune, alpha = False, torch.zeros((), device=device)  # ERA
        era_target = args.entropy_per_dim * act_dim  # ERA: H0
        delta_max = act_dim * (HALF_LOG_2PI_E + args.log_std_max) - era_target  # ERA: keeps H0 + delta admissible
        actor = EraActor(actor, era_target, torch.zeros((), device=device, requires_grad=True), args)  # ERA
        delta_optimizer = torch.optim.Adam([actor.delta], lr=args.delta_lr)  # ERA
        checkpointed.update(actor=actor, delta_optimizer=delta_optimizer)  # ERA
    if args.compile:
        for net in (actor, qf, qf_target):
            net.compile(mode="reduce-overhead" if device.type == "cuda" else None)

    # replay buffer: preallocated on the device; transition t sits in row t % buffer_size (one per agent step)
    rb = {k: torch.zeros(args.buffer_size, *d, device=device) for k, d in
          [("obs", [obs_dim]), ("next_obs", [obs_dim]), ("actions", [act_dim]), ("rewards", []), ("terminations", [])]}
    global_step, episode, episode_actions = 0, 0, []
    if checkpoint:
        for name, obj in checkpointed.items():
            obj.load_state_dict(checkpoint[name])
        for k, v in checkpoint["rb"].items():
            rb[k][: len(v)] = v
        log_alpha.data.copy_(checkpoint["log_alpha"])
        alpha, global_step, episode = checkpoint["alpha"].to(device), checkpoint["global_step"], checkpoint["episode"]
        episode_actions = checkpoint["episode_actions"]
        set_rng_state(checkpoint["rng"])

    ckpt_path, saved_step, start_step, start_time = os.path.join(run_dir, "checkpoint.pt"), global_step, global_step, time.time()

    # TRY NOT TO MODIFY: start the game
    obs, _ = env.reset(seed=episode_seed(args.seed, episode))
    for action in episode_actions:  # a run saved at its end, mid-episode: replay that episode from the same reset
        obs, *_ = env.step(action)
    while global_step < args.total_timesteps:
        # ALGO LOGIC: put action logic here
        if global_step < args.learning_starts:
            action = np.random.uniform(-1.0, 1.0, act_dim).astype(np.float32)
        else:
            with torch.no_grad():
                action, _, _, _ = actor.get_action(torch.as_tensor(obs, dtype=torch.float32, device=device)[None])
            action = action[0].cpu().numpy()

        # TRY NOT TO MODIFY: execute the game and log data.
        next_obs, reward, terminated, truncated, info = env.step(action)
        for k, v in zip(rb, (obs, next_obs, action, reward, terminated)):  # a time-out is not a termination: it bootstraps
            rb[k][global_step % args.buffer_size] = torch.as_tensor(v, dtype=torch.float32)
        obs = next_obs
        episode_actions.append(action)
        global_step += 1

        # ALGO LOGIC: training.
        if global_step > args.learning_starts:
            update_start = time.time()
            for _ in range(args.utd_ratio):
                idx = torch.randint(min(global_step, args.buffer_size), (args.batch_size,), device=device)
                data = {k: v[idx] for k, v in rb.items()}
                with torch.no_grad():
                    next_state_actions, next_state_log_pi, _, _ = actor.get_action(data["next_obs"])
                    qf_next_target = qf_target(data["next_obs"], next_state_actions)  # [2, batch]: both target critics
                    min_qf_next_target = qf_next_target.min(0).values - alpha * next_state_log_pi
                    next_q_value = data["rewards"] + (1 - data["terminations"]) * args.gamma * min_qf_next_target

                qf_a_values = qf(data["obs"], data["actions"])
                qf_losses = (qf_a_values - next_q_value).pow(2).mean(1)  # the MSE of Q1 and of Q2
                optimize(q_optimizer, qf_losses.sum())

                qf.requires_grad_(False)  # the actor's loss needs no gradients of the critics' weights (-10 % CPU)
                pi, log_pi, det_action, log_std = actor.get_action(data["obs"])
                actor_loss = ((alpha * log_pi) - qf(data["obs"], pi).min(0).values).mean()
                optimize(actor_optimizer, actor_loss)
                qf.requires_grad_(True)

                policy_entropy = -log_pi.detach().mean()  # -E[log pi]: a Monte-Carlo estimate
                if autotune:
                    alpha_loss = (-log_alpha.exp() * (log_pi.detach() + target_entropy)).mean()
                    optimize(a_optimizer, alpha_loss)
                    alpha = log_alpha.detach().exp()
                if args.era and (args.learn_delta or global_step % args.log_every == 0):  # ERA: exact, when it is used
                    policy_entropy = truncated_normal_entropy(det_action, log_std.exp().clamp(min=1e-6)).mean().detach()  # ERA
                    delta_loss = actor.delta * (policy_entropy - era_target)  # ERA: the paper's loss: delta rises while H < H0
                if args.era and args.learn_delta:  # ERA
                    optimize(delta_optimizer, delta_loss)  # ERA
                    actor.delta.data.clamp_(0.0, delta_max)  # ERA

                # update the target networks
                with torch.no_grad():
                    torch._foreach_lerp_(list(qf_target.parameters()), list(qf.parameters()), args.tau)

            if args.compile and global_step == args.learning_starts + 1:  # the first updates compile the networks
                print(f"torch.compile: the first {args.utd_ratio} updates took {time.time() - update_start:.0f} s")
            if global_step % args.log_every == 0:  # the only host syncs of the update loop
                logged = {"losses/qf1_values": qf_a_values[0].mean(), "losses/qf2_values": qf_a_values[1].mean(),
                          "losses/qf1_loss": qf_losses[0], "losses/qf2_loss": qf_losses[1], "losses/qf_loss": qf_losses.mean(),
                          "losses/actor_loss": actor_loss, "charts/policy_entropy": policy_entropy,
                          "charts/entropy": (0.5 * math.log(2 * math.pi * math.e) + log_std).sum(-1).mean()}
                if autotune:
                    logged.update({"losses/alpha": alpha, "losses/alpha_loss": alpha_loss})
                if args.era:  # ERA
                    logged.update({"charts/delta": actor.delta, "losses/delta_loss": delta_loss})  # ERA
                    writer.add_scalar("charts/era_target_entropy", era_target, global_step)  # ERA
                for tag, value in logged.items():
                    writer.add_scalar(tag, value.detach().item(), global_step)
                writer.add_scalar("charts/SPS", int((global_step - start_step) / (time.time() - start_time)), global_step)
                writer.add_scalar("charts/env_steps", global_step * action_repeat, global_step)

        if (args.eval_every and global_step % args.eval_every == 0) or global_step == args.total_timesteps:
            video_dir = os.path.join(run_dir, "videos", f"step{global_step}") if args.capture_video else None
            eval_return = evaluate(actor, args, action_repeat, device, video_dir)
            print(f"global_step={global_step}, eval_return={eval_return:.1f}")
            writer.add_scalar("eval/episodic_return", eval_return, global_step)

        boundary = terminated or truncated  # the unit: a checkpoint at an episode's end needs no simulator state
        if boundary:
            print(f"global_step={global_step}, episodic_return={info['episode']['r']:.1f}")
            writer.add_scalar("charts/episodic_return", info["episode"]["r"], global_step)
            writer.add_scalar("charts/episodic_length", info["episode"]["l"], global_step)
            episode, episode_actions = episode + 1, []
            obs, _ = env.reset(seed=episode_seed(args.seed, episode))
        save_due = args.save_every and global_step // args.save_every > saved_step // args.save_every
        if (boundary and (stop or save_due)) or global_step == args.total_timesteps:
            save_checkpoint(ckpt_path, **{name: obj.state_dict() for name, obj in checkpointed.items()}, args=asdict(args),
                            rb={k: v[: min(global_step, args.buffer_size)].clone().cpu() for k, v in rb.items()},
                            log_alpha=log_alpha.detach(), alpha=alpha, global_step=global_step, episode=episode,
                            episode_actions=episode_actions, rng=rng_state())
            saved_step = global_step
        if boundary and stop:
            break

    env.close()
    writer.close()
    for s, handler in previous.items():
        signal.signal(s, handler)
    if stop:
        print(f"stopped by signal {stop[0]}: continue with python {SCRIPT} --resume {ckpt_path}", file=sys.stderr)
        sys.exit(128 + stop[0])


if __name__ == "__main__":
    main(parse_args())
