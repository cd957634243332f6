"""SAC with ERA (Entropy Regularizing Activation, arXiv 2510.08549) for continuous control, in one file.

ERA (default): the policy is a truncated normal on [-1, 1] around tanh(mean) whose log-std comes from
era_core.gaussian_entropy_floor, so the Gaussian entropy is pinned at `entropy_per_dim` x D. The entropy is
kept by the activation, so the actor loss and the critic target carry no entropy term and there is no
temperature (the official SAC-ERA recipe). `--no-era`: SAC as CleanRL has it (tanh-Gaussian, automatic
temperature with target -D), same networks and schedule. `grep -n "# ERA" sac_era.py` shows every line that
differs between the two. Docs: README.md ("sac_era.py").
"""
import difflib
import os
import random
import re
import signal
import threading
import time
from dataclasses import asdict, dataclass
from typing import Optional

if os.environ.get("MUJOCO_GL") == "osmesa":  # OSMesa's LLVM must load after triton's (torch.optim pulls it in)
    import torch._dynamo  # noqa: F401  (in the other order the process segfaults)
import cloudpickle
import gymnasium as gym
import mujoco
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from era_core import HALF_LOG_2PI_E, gaussian_entropy_floor


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (`_noera` is appended with --no-era)"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda is used when available"""
    runs_dir: str = "runs"
    """tensorboard logs and checkpoints go to {runs_dir}/{run_name}/"""
    compile: bool = False
    """torch.compile the actor and critics (opt-in)"""

    # Environment
    env_id: str = "dm_control/cheetah-run-v0"
    """gymnasium MuJoCo (`HalfCheetah-v5`), dm_control (`dm_control/dog-run-v0`) or HumanoidBench (`h1hand-walk-v0`) id"""
    action_repeat: int = 0
    """env steps per agent step; 0 = auto: 2 for HumanoidBench (as the official SAC-ERA code), 1 otherwise.
    All step counts (total-timesteps, learning-starts, eval-every, x axes) count agent steps"""
    humanoidbench_termination: bool = False
    """keep HumanoidBench's early termination (the official SAC-ERA code disables it)"""
    num_envs: int = 1
    """parallel environments (synchronous vector env)"""

    # Algorithm specific arguments
    total_timesteps: int = 1_000_000
    """total agent steps (transitions collected, summed over envs)"""
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
    """gradient updates (critic, actor and temperature or delta) per agent step"""
    policy_lr: float = 3e-4
    """learning rate of the actor (Adam)"""
    q_lr: float = 3e-4
    """learning rate of the critics (AdamW) and of the temperature / delta"""
    critic_weight_decay: float = 1e-4
    """AdamW weight decay of the critics (optax's default, as the official code)"""
    hidden_dim: int = 512
    """width of the two hidden layers of actor and critics"""

    # ERA
    era: bool = True
    """ERA policy (truncated normal, entropy pinned by the activation); --no-era: SAC with temperature"""
    entropy_per_dim: float = 0.25
    """ERA target: the Gaussian's entropy is pinned at entropy_per_dim x D nats (official default 0.25)"""
    log_std_min: float = -8.0
    """ERA lower bound of log sigma (official -8)"""
    log_std_max: float = 0.0
    """ERA upper bound of log sigma (official 0, sigma <= 1 on the [-1, 1] action scale)"""
    learn_delta: bool = False
    """ERA: learn the paper's compensation delta >= 0 so the truncated policy's own entropy reaches the target
    (off by default, as in the official code)"""
    delta_lr: float = 3e-4
    """learning rate of delta (the paper gives none; SAC's temperature rate)"""

    # Evaluation, logging, checkpoints
    eval_every: int = 25_000
    """evaluate the deterministic policy every N agent steps (0 = never)"""
    eval_episodes: int = 10
    """episodes per evaluation"""
    log_every: int = 100
    """log losses every N agent steps"""
    save_every: int = 50_000
    """write {runs_dir}/{run_name}/checkpoint.pt every N agent steps (0 = only at the end and on Ctrl-C)"""
    resume: Optional[str] = None
    """path of a checkpoint.pt to continue from (its arguments are used, except total-timesteps and cuda)"""


HUMANOIDBENCH_ID = re.compile(r"^(h1|h1hand|h1strong|h1touch|g1)-.+-v\d+$")
HUMANOIDBENCH_INSTALL = ("HumanoidBench is not installed: pip install jax==0.4.30 jaxlib==0.4.30 \"numpy<2\" && "
                         "pip install --no-deps git+https://github.com/carlosferrazza/humanoid-bench.git")
TRUNC_BOUND = 1.0 - 1e-6  # ERA: the truncated normal lives on [-TRUNC_BOUND, TRUNC_BOUND], as the official code


def check_env_id(env_id):
    """Register the family `env_id` belongs to; one clear error if it is unknown."""
    if env_id.startswith("dm_control/"):
        import shimmy  # noqa: F401  (registers the dm_control/* ids)
    if HUMANOIDBENCH_ID.match(env_id) and env_id not in gym.registry:
        try:
            import humanoid_bench  # noqa: F401  (registers the HumanoidBench ids)
        except ImportError:
            raise SystemExit(HUMANOIDBENCH_INSTALL) from None
    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=3)
        raise ValueError(f"--env-id {env_id!r} is not a registered gymnasium id"
                         + (f"; did you mean {', '.join(close)}?" if close else
                            "; e.g. HalfCheetah-v5, dm_control/cheetah-run-v0, h1hand-walk-v0"))


class ActionRepeat(gym.Wrapper):
    """Repeat each action `repeat` times, summing rewards; stops early when the episode ends."""

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


class NoTermination(gym.Wrapper):
    """HumanoidBench as the official SAC-ERA code runs it: episodes only end at the time limit."""

    def step(self, action):
        obs, reward, _, truncated, info = self.env.step(action)
        return obs, reward, False, truncated, info


def make_env(env_id, seed, action_repeat, humanoidbench_termination):
    def thunk():
        env = gym.make(env_id)
        if HUMANOIDBENCH_ID.match(env_id) and not humanoidbench_termination:
            env = NoTermination(env)
        if isinstance(env.observation_space, gym.spaces.Dict):  # dm_control: dict of arrays
            env = gym.wrappers.FlattenObservation(env)
        env = gym.wrappers.RescaleAction(env, -1.0, 1.0)  # the policy always acts in [-1, 1]
        if action_repeat > 1:
            env = ActionRepeat(env, action_repeat)
        env = gym.wrappers.TransformObservation(
            env, lambda obs: obs.astype(np.float32),
            gym.spaces.Box(-np.inf, np.inf, env.observation_space.shape, np.float32))
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env.action_space.seed(seed)
        return env

    return thunk


def mujoco_handles(env):
    """(MjModel, MjData) of a gymnasium MuJoCo / HumanoidBench env or a shimmy dm_control env, else None."""
    base = env.unwrapped
    if isinstance(getattr(base, "data", None), mujoco.MjData):
        return base.model, base.data
    physics = getattr(getattr(base, "_env", None), "physics", None)
    return (physics.model.ptr, physics.data.ptr) if physics is not None else None


MJ_STATE = mujoco.mjtState.mjSTATE_INTEGRATION | mujoco.mjtState.mjSTATE_WARMSTART


def env_snapshot(envs):
    """Everything needed to continue `envs` bit-exactly: the pickled vector env plus, per sub-env, the MuJoCo
    state and RNG that pickling loses (gymnasium MuJoCo envs unpickle as fresh envs)."""
    states = []
    for env in envs.envs:
        handles, rng = mujoco_handles(env), env.unwrapped.np_random
        physics = None
        if handles is not None:
            physics = np.empty(mujoco.mj_stateSize(handles[0], MJ_STATE))
            mujoco.mj_getState(*handles, physics, MJ_STATE)
        states.append((physics, rng.bit_generator.state if isinstance(rng, np.random.Generator) else None))
    return {"pickle": cloudpickle.dumps(envs), "states": states}


def env_restore(snapshot):
    envs = cloudpickle.loads(snapshot["pickle"])
    for env, (physics, rng_state) in zip(envs.envs, snapshot["states"]):
        if physics is not None:
            mujoco.mj_setState(*mujoco_handles(env), physics, MJ_STATE)  # no mj_forward: it breaks exactness
        if rng_state is not None:
            env.unwrapped.np_random.bit_generator.state = rng_state
    return envs


def layer_init(layer, gain=np.sqrt(2)):
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class SoftQNetwork(nn.Module):
    """Q(s, a): two hidden layers Linear -> LayerNorm -> ELU, as the official critic."""

    def __init__(self, obs_dim, act_dim, hidden):
        super().__init__()
        self.net = nn.Sequential(
            layer_init(nn.Linear(obs_dim + act_dim, hidden)), nn.LayerNorm(hidden), nn.ELU(),
            layer_init(nn.Linear(hidden, hidden)), nn.LayerNorm(hidden), nn.ELU(),
            layer_init(nn.Linear(hidden, 1), gain=1.0),
        )

    def forward(self, obs, act):
        return self.net(torch.cat([obs, act], -1)).squeeze(-1)


class Actor(nn.Module):
    def __init__(self, obs_dim, act_dim, hidden, args):
        super().__init__()
        self.trunk = nn.Sequential(layer_init(nn.Linear(obs_dim, hidden)), nn.ELU(),
                                   layer_init(nn.Linear(hidden, hidden)), nn.ELU())
        self.fc_mean = layer_init(nn.Linear(hidden, act_dim), gain=1.0)
        self.fc_std = layer_init(nn.Linear(hidden, act_dim), gain=1.0)
        self.era = args.era
        self.target_entropy = args.entropy_per_dim * act_dim  # ERA
        self.log_std_min, self.log_std_max = args.log_std_min, args.log_std_max  # ERA
        if not args.era:  # ERA off: CleanRL's tanh-mapped log-std range
            self.log_std_min, self.log_std_max = -5.0, 2.0  # ERA off

    def forward(self, obs, delta=0.0):
        """Mean and log-std of the Gaussian before bounding."""
        hidden = self.trunk(obs)
        raw_std = self.fc_std(hidden)
        if self.era:  # ERA: the activation pins the Gaussian entropy at target + delta
            log_std = gaussian_entropy_floor(raw_std, self.target_entropy + delta,  # ERA
                                             self.log_std_min, self.log_std_max)  # ERA
        else:  # ERA off
            log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(raw_std) + 1)  # ERA off
        return self.fc_mean(hidden), log_std

    def get_action(self, obs, delta=0.0):
        """A reparameterised sample, its log-prob (None with ERA: no loss needs it), the deterministic action
        and the log-std."""
        mean, log_std = self(obs, delta)
        std = log_std.exp()
        if self.era:  # ERA: truncated normal on [-1, 1] around tanh(mean)
            loc = torch.tanh(mean).clamp(-TRUNC_BOUND, TRUNC_BOUND)  # ERA
            return truncated_normal_rsample(loc, std.clamp(min=1e-6)), None, loc, log_std  # ERA
        x = mean + std * torch.randn_like(mean)  # ERA off: tanh-squashed Gaussian
        action = torch.tanh(x)  # ERA off
        log_prob = torch.distributions.Normal(mean, std).log_prob(x) - torch.log(1 - action.pow(2) + 1e-6)  # ERA off
        return action, log_prob.sum(-1), torch.tanh(mean), log_std  # ERA off


def normal_cdf(x):
    return 0.5 * (1 + torch.erf(x / np.sqrt(2)))


def truncated_normal_rsample(loc, scale, bound=TRUNC_BOUND):
    """Reparameterised sample of N(loc, scale²) truncated to [-bound, bound], by the inverse CDF."""
    cdf_low, cdf_high = normal_cdf((-bound - loc) / scale), normal_cdf((bound - loc) / scale)
    u = torch.rand_like(loc).clamp(1e-6, 1 - 1e-6)
    p = cdf_low + u * (cdf_high - cdf_low)
    return (loc + scale * np.sqrt(2) * torch.erfinv(2 * p - 1)).clamp(-bound, bound)


def truncated_normal_entropy(loc, scale, bound=TRUNC_BOUND):
    """Exact entropy (nats, summed over the last dim) of N(loc, scale²) truncated to [-bound, bound]."""
    alpha, beta = (-bound - loc) / scale, (bound - loc) / scale
    mass = (normal_cdf(beta) - normal_cdf(alpha)).clamp(min=1e-6)
    pdf = lambda x: torch.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)  # noqa: E731
    per_dim = HALF_LOG_2PI_E + torch.log(scale * mass) + (alpha * pdf(alpha) - beta * pdf(beta)) / (2 * mass)
    return per_dim.sum(-1)


class ReplayBuffer:
    """Transitions in preallocated tensors on the training device; sampling uses torch's RNG."""

    def __init__(self, size, obs_dim, act_dim, device):
        self.size, self.pos, self.full = size, 0, False
        shapes = {"obs": obs_dim, "next_obs": obs_dim, "actions": act_dim, "rewards": None, "terminations": None}
        self.data = {k: torch.zeros((size,) if d is None else (size, d), device=device) for k, d in shapes.items()}

    def __len__(self):
        return self.size if self.full else self.pos

    def add(self, **batch):
        n = len(batch["obs"])
        idx = (self.pos + np.arange(n)) % self.size
        for k, v in batch.items():
            self.data[k][idx] = torch.as_tensor(v, dtype=torch.float32, device=self.data[k].device)
        self.full = self.full or self.pos + n >= self.size
        self.pos = (self.pos + n) % self.size

    def sample(self, batch_size):
        idx = torch.randint(len(self), (batch_size,), device=self.data["obs"].device)
        return {k: v[idx] for k, v in self.data.items()}

    def state_dict(self):
        return {"pos": self.pos, "full": self.full, "data": {k: v[: len(self)].cpu() for k, v in self.data.items()}}

    def load_state_dict(self, state):
        self.pos, self.full = state["pos"], state["full"]
        for k, v in state["data"].items():
            self.data[k][: len(v)] = v.to(self.data[k].device)


def evaluate(actor, env_id, seed, episodes, action_repeat, humanoidbench_termination, device):
    """Mean undiscounted return of the deterministic policy (tanh(mean) in both variants)."""
    env = make_env(env_id, seed, action_repeat, humanoidbench_termination)()
    returns = []
    obs, _ = env.reset(seed=seed)
    for _ in range(episodes):
        done, total = False, 0.0
        while not done:
            with torch.no_grad():
                action = torch.tanh(actor(torch.as_tensor(obs, device=device)[None])[0])
            obs, reward, terminated, truncated, _ = env.step(action[0].cpu().numpy())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
        obs, _ = env.reset()
    env.close()
    return float(np.mean(returns))


def validate(args):
    """One clear message per mistake, before anything expensive starts."""
    if args.total_timesteps <= 0:
        raise ValueError(f"--total-timesteps must be > 0, got {args.total_timesteps}")
    if not 0 <= args.learning_starts < args.total_timesteps:
        raise ValueError(f"--learning-starts ({args.learning_starts}) must be in [0, --total-timesteps "
                         f"({args.total_timesteps})): otherwise no update would run")
    if args.batch_size <= 0 or args.buffer_size < args.batch_size:
        raise ValueError(f"--batch-size ({args.batch_size}) must be in [1, --buffer-size ({args.buffer_size})]")
    for name in ("num_envs", "utd_ratio", "eval_episodes", "log_every", "hidden_dim"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("eval_every", "save_every", "action_repeat"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if not 0 < args.tau <= 1 or not 0 <= args.gamma <= 1:
        raise ValueError(f"--tau must be in (0, 1] and --gamma in [0, 1], got {args.tau}, {args.gamma}")
    if args.era and args.log_std_min >= args.log_std_max:  # ERA
        raise ValueError(f"--log-std-min ({args.log_std_min}) must be < --log-std-max ({args.log_std_max})")  # ERA
    max_per_dim = HALF_LOG_2PI_E + args.log_std_max
    if args.era and args.entropy_per_dim > max_per_dim:  # ERA
        raise ValueError(f"--entropy-per-dim {args.entropy_per_dim} is impossible with --log-std-max "  # ERA
                         f"{args.log_std_max}: the Gaussian entropy per dimension is at most {max_per_dim:.4f}")  # ERA


def main(args):
    """Train; returns a few final figures (used by the tests and the benchmark)."""
    checkpoint = None
    if args.resume:
        if not os.path.isfile(args.resume):
            raise ValueError(f"--resume {args.resume!r}: no such checkpoint file")
        checkpoint = torch.load(args.resume, map_location="cpu", weights_only=False)
        saved = Args(**checkpoint["args"])
        saved.total_timesteps, saved.cuda, saved.resume = args.total_timesteps, args.cuda, args.resume
        args = saved
    validate(args)
    check_env_id(args.env_id)
    action_repeat = args.action_repeat or (2 if HUMANOIDBENCH_ID.match(args.env_id) else 1)

    exp_name = args.exp_name if args.era else args.exp_name + "_noera"  # ERA
    run_name = checkpoint["run_name"] if checkpoint else f"{args.env_id.replace('/', '_')}__{exp_name}__{args.seed}__{int(time.time())}"
    run_dir = os.path.dirname(os.path.abspath(args.resume)) if checkpoint else os.path.join(args.runs_dir, run_name)
    writer = SummaryWriter(run_dir)
    if not checkpoint:
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items()))

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    envs = gym.vector.SyncVectorEnv([make_env(args.env_id, args.seed + i, action_repeat, args.humanoidbench_termination)
                                     for i in range(args.num_envs)])
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    act_dim = int(np.prod(envs.single_action_space.shape))

    actor = Actor(obs_dim, act_dim, args.hidden_dim, args).to(device)
    qf1, qf2 = SoftQNetwork(obs_dim, act_dim, args.hidden_dim).to(device), SoftQNetwork(obs_dim, act_dim, args.hidden_dim).to(device)
    qf1_target, qf2_target = SoftQNetwork(obs_dim, act_dim, args.hidden_dim).to(device), SoftQNetwork(obs_dim, act_dim, args.hidden_dim).to(device)
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    q_optimizer = torch.optim.AdamW(list(qf1.parameters()) + list(qf2.parameters()), lr=args.q_lr,
                                    weight_decay=args.critic_weight_decay)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.policy_lr)
    if args.era:  # ERA: no temperature; optionally the compensation delta of the paper (projected to stay admissible)
        target_entropy = actor.target_entropy  # ERA
        delta = torch.zeros((), device=device, requires_grad=True)  # ERA: stays 0 unless --learn-delta
        delta_max = act_dim * (HALF_LOG_2PI_E + args.log_std_max) - target_entropy  # ERA
        temp_param, temp_optimizer = delta, torch.optim.Adam([delta], lr=args.delta_lr)  # ERA
    else:  # ERA off: SAC's automatic temperature, target entropy -D
        target_entropy = -float(act_dim)  # ERA off
        log_alpha = torch.zeros((), device=device, requires_grad=True)  # ERA off
        temp_param, temp_optimizer = log_alpha, torch.optim.Adam([log_alpha], lr=args.q_lr)  # ERA off
    rb = ReplayBuffer(args.buffer_size, obs_dim, act_dim, device)
    online_params = list(qf1.parameters()) + list(qf2.parameters())
    target_params = list(qf1_target.parameters()) + list(qf2_target.parameters())
    if args.compile:
        for net in (actor, qf1, qf2, qf1_target, qf2_target):
            net.compile()

    global_step, next_eval, next_save = 0, args.eval_every, args.save_every
    obs, _ = envs.reset(seed=args.seed)
    resetting = np.zeros(args.num_envs, dtype=bool)  # sub-envs whose next step() is an autoreset
    stateful = {"actor": actor, "qf1": qf1, "qf2": qf2, "qf1_target": qf1_target, "qf2_target": qf2_target,
                "actor_optimizer": actor_optimizer, "q_optimizer": q_optimizer, "temp_optimizer": temp_optimizer,
                "rb": rb}  # what a checkpoint holds besides counters, RNGs and envs
    if checkpoint:
        for name, obj in stateful.items():
            obj.load_state_dict(checkpoint[name])
        with torch.no_grad():
            temp_param.copy_(checkpoint["temp_param"])
        envs.close()
        envs = env_restore(checkpoint["envs"])
        obs, resetting = checkpoint["obs"], checkpoint["resetting"]
        global_step, next_eval, next_save = checkpoint["global_step"], checkpoint["next_eval"], checkpoint["next_save"]
        random.setstate(checkpoint["rng"]["python"])
        np.random.set_state(checkpoint["rng"]["numpy"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if device.type == "cuda" and checkpoint["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state(checkpoint["rng"]["cuda"], device)

    def save_checkpoint(path):
        state = {name: obj.state_dict() for name, obj in stateful.items()}
        state.update(args=asdict(args), run_name=run_name, global_step=global_step, next_eval=next_eval,
                     next_save=next_save, temp_param=temp_param.detach().cpu(), envs=env_snapshot(envs), obs=obs,
                     resetting=resetting,
                     rng={"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                          "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None})
        torch.save(state, path + ".tmp")
        os.replace(path + ".tmp", path)  # atomic: a crash while saving never leaves a broken checkpoint

    def update(data, with_stats):
        """One gradient step of the critics, the actor and the temperature (or delta); with `with_stats`, returns
        the losses and entropies to log (computing them costs time, so only on logging steps)."""
        delta_now = temp_param.detach() if args.era else 0.0  # ERA
        with torch.no_grad():
            next_actions, next_log_pi, _, _ = actor.get_action(data["next_obs"], delta_now)
            min_qf_next = torch.min(qf1_target(data["next_obs"], next_actions), qf2_target(data["next_obs"], next_actions))
            if not args.era:  # ERA off: soft value; with ERA the target has no entropy term
                min_qf_next = min_qf_next - log_alpha.exp() * next_log_pi  # ERA off
            next_q_value = data["rewards"] + (1 - data["terminations"]) * args.gamma * min_qf_next
        qf1_a_values, qf2_a_values = qf1(data["obs"], data["actions"]), qf2(data["obs"], data["actions"])
        qf1_loss, qf2_loss = F.mse_loss(qf1_a_values, next_q_value), F.mse_loss(qf2_a_values, next_q_value)
        q_optimizer.zero_grad()
        (qf1_loss + qf2_loss).backward()
        q_optimizer.step()

        actions, log_pi, loc, log_std = actor.get_action(data["obs"], delta_now)
        min_qf_pi = torch.min(qf1(data["obs"], actions), qf2(data["obs"], actions))
        if args.era:  # ERA: no entropy term, the activation keeps the entropy
            actor_loss = -min_qf_pi.mean()  # ERA
        else:  # ERA off
            actor_loss = (log_alpha.exp().detach() * log_pi - min_qf_pi).mean()  # ERA off
        actor_optimizer.zero_grad()
        actor_loss.backward()
        actor_optimizer.step()

        need_entropy = with_stats or args.era and args.learn_delta  # ERA: delta's loss needs the bounded entropy
        if need_entropy:
            with torch.no_grad():
                gaussian_entropy = (HALF_LOG_2PI_E + log_std).sum(-1).mean()
                if args.era:  # ERA: exact entropy of the truncated normal
                    policy_entropy = truncated_normal_entropy(loc, log_std.exp().clamp(min=1e-6)).mean()  # ERA
                else:  # ERA off: Monte-Carlo estimate -E[log pi]
                    policy_entropy = -log_pi.mean()  # ERA off
        if args.era and need_entropy:  # ERA: delta rises while the bounded policy's entropy is below the target
            temp_loss = temp_param * (policy_entropy - target_entropy)  # ERA
        elif not args.era:  # ERA off: SAC's temperature loss
            temp_loss = -log_alpha.exp() * (log_pi.detach() + target_entropy).mean()  # ERA off
        if not args.era or args.learn_delta:  # ERA
            temp_optimizer.zero_grad()
            temp_loss.backward()
            temp_optimizer.step()
            if args.era:  # ERA: keep H0 + delta admissible
                with torch.no_grad():  # ERA
                    temp_param.clamp_(0.0, delta_max)  # ERA

        with torch.no_grad():
            torch._foreach_lerp_(target_params, online_params, args.tau)
        if not with_stats:
            return None
        losses = {"qf1_loss": qf1_loss, "qf2_loss": qf2_loss, "qf_loss": (qf1_loss + qf2_loss) / 2,
                  "actor_loss": actor_loss, "qf1_values": qf1_a_values.detach().mean(),
                  "qf2_values": qf2_a_values.detach().mean()}
        losses["delta_loss" if args.era else "alpha_loss"] = temp_loss.detach()  # ERA
        return losses, gaussian_entropy, policy_entropy

    # Ctrl-C / SIGTERM: finish the current step, write a checkpoint, exit; a second Ctrl-C stops at once
    stop_requested = []

    def request_stop(signum, frame):
        stop_requested.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous_handlers = {}
    if threading.current_thread() is threading.main_thread():
        previous_handlers = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
    start_time, start_step = time.time(), global_step
    update_seconds, num_updates, last_eval, losses = 0.0, 0, float("nan"), None
    progress = tqdm(total=args.total_timesteps, initial=global_step, desc=run_name, unit="step", dynamic_ncols=True)
    try:
        while global_step < args.total_timesteps and not stop_requested:
            # ALGO LOGIC: put action logic here
            if global_step < args.learning_starts:
                actions = envs.action_space.sample()
            else:
                with torch.no_grad():
                    actions, _, _, _ = actor.get_action(torch.as_tensor(obs, device=device),
                                                        temp_param.detach() if args.era else 0.0)  # ERA
                actions = actions.cpu().numpy()
            next_obs, rewards, terminations, truncations, infos = envs.step(actions)

            # gymnasium 1.x autoreset (next-step mode): a sub-env that ended last step was reset by this step, whose
            # action was ignored; that is no transition. On the step an episode ends, next_obs is its true final
            # observation, and only termination (not time-limit truncation) stops bootstrapping.
            real = ~resetting
            rb.add(obs=obs[real], next_obs=next_obs[real], actions=actions[real], rewards=rewards[real],
                   terminations=terminations[real].astype(np.float32))
            new_steps = int(real.sum())
            global_step += new_steps
            progress.update(new_steps)
            resetting = terminations | truncations
            obs = next_obs
            if "episode" in infos:
                for i in np.flatnonzero(infos["_episode"]):
                    writer.add_scalar("charts/episodic_return", infos["episode"]["r"][i], global_step)
                    writer.add_scalar("charts/episodic_length", infos["episode"]["l"][i], global_step)

            # ALGO LOGIC: training
            if global_step > args.learning_starts and new_steps:
                tick = time.perf_counter()
                log_now = global_step % args.log_every < new_steps
                num_new = new_steps * args.utd_ratio
                for i in range(num_new):
                    stats = update(rb.sample(args.batch_size), with_stats=log_now and i == num_new - 1)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                update_seconds += time.perf_counter() - tick
                num_updates += num_new
                if log_now:  # the only host syncs: every log_every steps
                    losses, gaussian_entropy, policy_entropy = stats
                    for name, value in losses.items():
                        writer.add_scalar(f"losses/{name}", value.item(), global_step)
                    writer.add_scalar("charts/entropy", gaussian_entropy.item(), global_step)  # of the Gaussian
                    writer.add_scalar("charts/policy_entropy", policy_entropy.item(), global_step)  # after bounding
                    if args.era:  # ERA
                        writer.add_scalar("charts/era_target_entropy", target_entropy, global_step)  # ERA
                        writer.add_scalar("charts/delta", temp_param.item(), global_step)  # ERA
                    else:  # ERA off
                        writer.add_scalar("losses/alpha", log_alpha.exp().item(), global_step)  # ERA off
                    sps = int((global_step - start_step) / (time.time() - start_time))
                    writer.add_scalar("charts/SPS", sps, global_step)
                    writer.add_scalar("charts/env_steps", global_step * action_repeat, global_step)
                    writer.add_scalar("perf/update_ms", 1000 * update_seconds / num_updates, global_step)
                    progress.set_postfix(SPS=sps, eval=f"{last_eval:.1f}", refresh=False)

            if args.eval_every and global_step >= next_eval:
                last_eval = evaluate(actor, args.env_id, args.seed + 100_000 + global_step, args.eval_episodes,
                                     action_repeat, args.humanoidbench_termination, device)
                writer.add_scalar("eval/episodic_return", last_eval, global_step)
                next_eval += args.eval_every
            if args.save_every and global_step >= next_save:
                save_checkpoint(checkpoint_path)
                next_save += args.save_every
        save_checkpoint(checkpoint_path)
        if stop_requested:
            progress.write(f"stopped at step {global_step}; resume with --resume {checkpoint_path}")
    except Exception:
        save_checkpoint(os.path.join(run_dir, "checkpoint_crash.pt"))  # the periodic checkpoint stays intact
        raise
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        progress.close()
        envs.close()
        writer.close()
    return {"run_dir": run_dir, "global_step": global_step, "num_updates": num_updates,
            "update_ms": 1000 * update_seconds / max(num_updates, 1),
            "sps": (global_step - start_step) / (time.time() - start_time), "eval_return": last_eval}


if __name__ == "__main__":
    main(tyro.cli(Args))
