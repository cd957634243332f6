"""PPO with ERA (Entropy Regularizing Activation, arXiv 2510.08549) on MuJoCo: one file, CleanRL style.

The skeleton is CleanRL's ppo_continuous_action, rewritten for gymnasium 1.x. ERA replaces the entropy
bonus by an activation on the log-std head: era_core.gaussian_entropy_floor maps the raw log-std vector to
log-stds whose Gaussian entropy is exactly the target (unless the sigma_min clamp binds), so the policy can
only choose how the fixed entropy budget is split over action dimensions. `--no-era` is CleanRL's PPO.
`grep -n "# ERA" ppo_era.py` lists every line that differs between the two.

Implementation details (differences from CleanRL's ppo_continuous_action, same in both variants):
1. Time-limit truncation bootstraps: on a truncated step the reward gets + gamma * V(final obs) and the GAE
   chain is cut there, so a time-out is not treated as a terminal state (CleanRL treats it as one).
   The vector env runs in SAME_STEP autoreset mode so the final obs arrives in infos["final_obs"] and every
   stored transition is a real one (no dead reset steps inside the fixed-length rollout).
2. Observation and reward normalisation are done here, over the whole vector env (one set of running
   statistics instead of one per sub-env, as SB3's VecNormalize), so they are saved in the checkpoint and the
   frozen observation statistics are used for evaluation. Same formulas as gymnasium's NormalizeObservation
   / NormalizeReward (clip to +-10), except that the reward scaler's discounted return restarts at every
   episode end (gymnasium's restarts only on termination).
3. Actions are rescaled to [-1, 1] where an env's range differs (Humanoid-v5: [-0.4, 0.4]), so the log-std
   bounds mean the same thing on every task; the unclipped Gaussian sample is stored, the env gets it clipped.
4. Deterministic evaluation (mean action) every --eval-every iterations, logged as eval/episodic_return.
5. Exact resume: networks, optimizer, normaliser statistics, RNG states, iteration counter and the state of
   every sub-env (wrapper stack, MuJoCo physics, env RNG) are saved; Ctrl-C saves the last finished iteration.
   A dm_control sub-env adds ~12 MB (dm_control pickles its whole MjData), a Gym MuJoCo one ~2 KB.

ERA choices (facts §1.8: how the paper put ERA into PPO is not published): state-independent raw log-std
parameter (CleanRL's) passed through ERA, optionally a state-dependent head (--state-dependent-std);
log_std in [-8, 0] (sigma_max = 1 = half the action range; the official SAC-ERA bounds); no entropy bonus.
"""
import copy
import io
import os
import random
import time
from dataclasses import asdict, dataclass
from typing import Literal, Optional

import cloudpickle
import gymnasium as gym
import mujoco
import numpy as np
import shimmy  # registers the dm_control/... ids
import torch
import torch.nn as nn
import torch.optim as optim
import tyro
from torch.distributions.normal import Normal
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from era_core import HALF_LOG_2PI_E, gaussian_entropy_floor, raise_gaussian_entropy

gym.register_envs(shimmy)


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment ("_noera" is appended with --no-era)"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda is used when available"""
    runs_dir: str = "runs"
    """tensorboard logs and checkpoints go to {runs_dir}/{run_name}"""
    save_every: int = 50
    """write {runs_dir}/{run_name}/checkpoint.pt every N iterations (0: only at the end and on Ctrl-C)"""
    resume: Optional[str] = None
    """path of a checkpoint.pt to continue (same run dir); the run keeps its saved arguments, except
    --total-timesteps, --cuda, --save-every, --eval-every and --eval-episodes when given"""
    eval_every: int = 10
    """deterministic evaluation every N iterations and at the end (0: only at the end)"""
    eval_episodes: int = 10
    """episodes per evaluation (run as one vector env)"""

    # Algorithm specific arguments
    env_id: str = "HalfCheetah-v5"
    """gymnasium MuJoCo id (HalfCheetah-v5, Hopper-v5, Walker2d-v5, Ant-v5, Humanoid-v5) or dm_control id
    (dm_control/cheetah-run-v0, ...)"""
    total_timesteps: int = 1000000
    """total environment steps of the experiment"""
    learning_rate: float = 3e-4
    """the learning rate of the optimizer"""
    num_envs: int = 1
    """the number of parallel game environments"""
    vector_env: Literal["sync", "async"] = "sync"
    """sync: sub-envs stepped in this process; async: one subprocess per sub-env"""
    num_steps: int = 2048
    """the number of steps to run in each environment per policy rollout"""
    anneal_lr: bool = True
    """toggle learning rate annealing"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 32
    """the number of mini-batches (must divide num_envs * num_steps)"""
    update_epochs: int = 10
    """the K epochs to update the policy"""
    norm_adv: bool = True
    """toggles advantages normalization"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """toggles whether or not to use a clipped loss for the value function"""
    ent_coef: float = 0.0
    """coefficient of the entropy bonus (CleanRL's 0.0; ERA adds none)"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    target_kl: Optional[float] = None
    """the target KL divergence threshold"""

    # ERA
    era: bool = True
    """ERA on the log-std (--no-era: plain CleanRL PPO)"""
    target_entropy_per_dim: float = -0.3
    """ERA target Gaussian entropy per action dimension (total = value x D). -0.3 is UNVERIFIED: the only
    published account of PPO-ERA's target is a third-party note quoting the paper's appendix (paper_facts §1.8)"""
    era_mode: Literal["pin", "floor"] = "pin"
    """ERA: pin = the paper's activation (entropy exactly the target); floor = raise the log-stds only when the entropy would fall below it"""
    init_log_std: float = 0.0
    """initial value of the state-independent log-std parameter (CleanRL: 0)"""
    state_dependent_std: bool = False
    """raw log-std from a linear head on the actor's features instead of CleanRL's state-independent vector
    (with --no-era the head's output is the log-std, unbounded like CleanRL's vector)"""
    log_std_min: float = -8.0
    """ERA lower log-std bound (sigma_min)"""
    log_std_max: float = 0.0
    """ERA upper log-std bound (sigma_max = 1 in the [-1, 1] action scale)"""


def check_args(args):
    """One clear error per bad flag, before any env or network is built."""
    positive = ["total_timesteps", "num_envs", "num_steps", "num_minibatches", "update_epochs", "eval_episodes"]
    for name in positive:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ["save_every", "eval_every"]:
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    batch_size = args.num_envs * args.num_steps
    if batch_size % args.num_minibatches:
        raise ValueError(f"--num-minibatches ({args.num_minibatches}) must divide --num-envs x --num-steps "
                         f"= {args.num_envs} x {args.num_steps} = {batch_size}")
    if args.total_timesteps < batch_size:
        raise ValueError(f"--total-timesteps ({args.total_timesteps}) must be >= one rollout, --num-envs x "
                         f"--num-steps = {batch_size}")
    if not 0 < args.gamma <= 1 or not 0 <= args.gae_lambda <= 1:
        raise ValueError(f"--gamma must be in (0, 1] and --gae-lambda in [0, 1], got {args.gamma}, {args.gae_lambda}")
    if not args.learning_rate > 0 or not args.clip_coef > 0 or not args.max_grad_norm > 0:
        raise ValueError("--learning-rate, --clip-coef and --max-grad-norm must be > 0")
    if args.target_kl is not None and not args.target_kl > 0:
        raise ValueError(f"--target-kl must be > 0, got {args.target_kl}")
    if args.era:  # ERA
        if not args.log_std_min < args.log_std_max:  # ERA
            raise ValueError(f"--log-std-min ({args.log_std_min}) must be < --log-std-max ({args.log_std_max})")  # ERA
        low, high = args.log_std_min + HALF_LOG_2PI_E, args.log_std_max + HALF_LOG_2PI_E  # ERA: per-dim range
        if not low <= args.target_entropy_per_dim <= high:  # ERA
            raise ValueError(f"--target-entropy-per-dim ({args.target_entropy_per_dim}) is impossible with "  # ERA
                             f"log-std in [{args.log_std_min}, {args.log_std_max}]: it must be in "  # ERA
                             f"[{low:.4f}, {high:.4f}] (log-std bound + log sqrt(2 pi e))")  # ERA
    if args.resume is not None and not os.path.isfile(args.resume):
        raise ValueError(f"--resume: no checkpoint file at {args.resume!r}")
    try:
        gym.spec(args.env_id)
    except gym.error.Error as e:
        raise ValueError(f"--env-id {args.env_id!r} is not a registered gymnasium id (e.g. HalfCheetah-v5, "
                         f"Hopper-v5, dm_control/cheetah-run-v0): {e}") from None


class EnvSnapshot(gym.Wrapper):
    """Outermost wrapper of each sub-env: exact save/restore of its whole state, in sync and async vector envs.

    gymnasium MuJoCo envs (and shimmy's dm_control env) are EzPickle: unpickling rebuilds them from their
    constructor arguments, losing physics and RNG, so those are saved next to the pickled wrapper stack.
    mj_forward is NOT called after mj_setState: it would break bit-exactness.
    """

    SPEC = mujoco.mjtState.mjSTATE_INTEGRATION | mujoco.mjtState.mjSTATE_WARMSTART

    def __init__(self, env, idx):
        super().__init__(env)
        self.idx = idx

    def _model_data(self):
        u = self.env.unwrapped
        if isinstance(getattr(u, "data", None), mujoco.MjData):
            return u.model, u.data, u  # gymnasium MuJoCo
        return u._env.physics.model.ptr, u._env.physics.data.ptr, u  # shimmy dm_control

    def get_snapshot(self):
        model, data, u = self._model_data()
        physics = np.empty(mujoco.mj_stateSize(model, self.SPEC))
        mujoco.mj_getState(model, data, physics, self.SPEC)
        rng = u.np_random  # a numpy Generator, or dm_control's legacy RandomState
        rng_state = rng.bit_generator.state if isinstance(rng, np.random.Generator) else rng.get_state()
        return cloudpickle.dumps((self.env, physics, rng_state))

    def set_snapshot(self, snapshots):
        self.env, physics, rng_state = cloudpickle.loads(snapshots[self.idx])
        model, data, u = self._model_data()
        mujoco.mj_setState(model, data, physics, self.SPEC)
        if isinstance(u.np_random, np.random.Generator):
            u.np_random.bit_generator.state = rng_state
        else:
            u.np_random.set_state(rng_state)


def make_env(env_id, idx):
    def thunk():
        env = gym.make(env_id)
        if isinstance(env.observation_space, gym.spaces.Dict):
            env = gym.wrappers.FlattenObservation(env)  # dm_control: dict of arrays -> one vector
        if not isinstance(env.action_space, gym.spaces.Box):
            raise ValueError(f"--env-id {env_id!r}: PPO here needs continuous (Box) actions, got {env.action_space}")
        if not (np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)):
            one = np.ones(env.action_space.shape, dtype=env.action_space.dtype)
            env = gym.wrappers.RescaleAction(env, -one, one)
        env = gym.wrappers.ClipAction(env)
        return EnvSnapshot(env, idx)

    return thunk


def make_vector_env(env_id, n, kind, autoreset_mode):
    vector_cls = gym.vector.AsyncVectorEnv if kind == "async" else gym.vector.SyncVectorEnv
    return vector_cls([make_env(env_id, i) for i in range(n)], autoreset_mode=autoreset_mode)


class RunningMeanStd:
    """Running mean/variance of a stream of batches (parallel-variance update, float64), as gymnasium's."""

    def __init__(self, shape=()):
        self.mean, self.var, self.count = np.zeros(shape), np.ones(shape), 1e-4

    def update(self, x):
        batch_mean, batch_var, batch_count = x.mean(0), x.var(0), x.shape[0]
        delta, total = batch_mean - self.mean, self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var, self.count = m2 / total, total


def normalize_obs(obs, obs_rms, device):
    return torch.tensor(np.clip((obs - obs_rms.mean) / np.sqrt(obs_rms.var + 1e-8), -10, 10),
                        dtype=torch.float32, device=device)


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, obs_dim, act_dim, args):
        super().__init__()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )
        self.actor_trunk = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, 64)), nn.Tanh(),
        )
        self.actor_mean = layer_init(nn.Linear(64, act_dim), std=0.01)
        self.state_dependent_std = args.state_dependent_std
        if args.state_dependent_std:
            self.actor_logstd = layer_init(nn.Linear(64, act_dim), std=0.01)
        else:
            self.actor_logstd = nn.Parameter(torch.full((1, act_dim), args.init_log_std))
        self.era = args.era
        self.target_entropy = args.target_entropy_per_dim * act_dim  # ERA: H0' = per-dim target x D
        self.log_std_bounds = (args.log_std_min, args.log_std_max)  # ERA
        self.era_mode = args.era_mode  # ERA

    def get_value(self, x):
        return self.critic(x)

    def get_action_and_value(self, x, action=None):
        hidden = self.actor_trunk(x)
        action_mean = self.actor_mean(hidden)
        action_logstd = self.actor_logstd(hidden) if self.state_dependent_std else self.actor_logstd
        if self.era and self.era_mode == "pin":  # ERA: the raw log-std becomes log-stds with Gaussian entropy = target (sigma_min permitting)
            action_logstd = gaussian_entropy_floor(action_logstd, self.target_entropy, *self.log_std_bounds)  # ERA
        if self.era and self.era_mode == "floor":  # ERA
            action_logstd = raise_gaussian_entropy(action_logstd, self.target_entropy)  # ERA
        probs = Normal(action_mean, action_logstd.expand_as(action_mean).exp())
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action).sum(1), probs.entropy().sum(1), self.critic(x)


def truncation_bootstrap(agent, terminations, truncations, infos, obs_rms, gamma):
    """gamma * V(final obs) for sub-envs cut by a time limit, 0 elsewhere: added to their reward.

    Together with gae() cutting the chain at every episode end, a truncated step then gets
    delta = r + gamma V(s_final) - V(s), a terminated one delta = r - V(s) (SB3's form of the fix).
    """
    device = next(agent.parameters()).device
    bonus = torch.zeros(len(truncations), device=device)
    cut = truncations & ~terminations
    if cut.any():  # SAME_STEP autoreset: the returned obs is the reset obs, the final one is in infos
        final_obs = normalize_obs(np.stack(infos["final_obs"][cut]), obs_rms, device)
        with torch.no_grad():
            bonus[torch.from_numpy(cut).to(device)] = gamma * agent.get_value(final_obs).flatten()
    return bonus


def gae(rewards, values, dones, next_value, next_done, gamma, gae_lambda):
    """Generalised advantage estimates [T, N]; dones[t] = 1 when obs[t] starts a new episode."""
    advantages = torch.zeros_like(rewards)
    lastgaelam = 0
    num_steps = rewards.shape[0]
    for t in reversed(range(num_steps)):
        if t == num_steps - 1:
            nextnonterminal = 1.0 - next_done
            nextvalues = next_value
        else:
            nextnonterminal = 1.0 - dones[t + 1]
            nextvalues = values[t + 1]
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        advantages[t] = lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
    return advantages


def rng_states():
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_states(states):
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_bytes(blob, path):
    """Atomic write: a crash mid-write never leaves a truncated checkpoint."""
    with open(path + ".tmp", "wb") as f:
        f.write(blob)
    os.replace(path + ".tmp", path)


def evaluate(agent, eval_envs, obs_rms, seed, device):
    """Mean action, frozen observation statistics; one episode per sub-env, same start states every time."""
    obs, _ = eval_envs.reset(seed=seed)
    returns = np.zeros(eval_envs.num_envs)
    finished = np.zeros(eval_envs.num_envs, dtype=bool)
    while not finished.all():
        with torch.no_grad():
            action = agent.actor_mean(agent.actor_trunk(normalize_obs(obs, obs_rms, device)))
        obs, reward, terminations, truncations, _ = eval_envs.step(action.cpu().numpy())
        returns += np.where(finished, 0.0, reward)
        finished |= terminations | truncations
    return returns


def main(args):
    """Train; returns {"run_dir", "checkpoint", "history" (per-iteration logged scalars), "eval_returns"}."""
    check_args(args)
    resume_ckpt = None
    if args.resume is not None:
        resume_ckpt = torch.load(args.resume, map_location="cpu", weights_only=False)
        saved, defaults = resume_ckpt["args"], Args()
        given = {k for k, v in asdict(args).items() if k != "resume" and v != getattr(defaults, k)}
        overridable = {"total_timesteps", "cuda", "save_every", "eval_every", "eval_episodes"}
        ignored = sorted(k for k in given - overridable if getattr(args, k) != saved[k])
        if ignored:
            print(f"--resume: the run keeps its saved {', '.join(ignored)}; the command-line values are ignored")
        args = Args(**{**saved, **{k: getattr(args, k) for k in given & overridable}, "resume": args.resume})
        check_args(args)
    batch_size = args.num_envs * args.num_steps
    minibatch_size = batch_size // args.num_minibatches
    num_iterations = args.total_timesteps // batch_size
    exp_name = args.exp_name + ("" if args.era else "_noera")  # ERA: run name marks the baseline
    if resume_ckpt is not None:
        run_dir = os.path.dirname(os.path.abspath(args.resume))
    else:
        run_dir = os.path.join(args.runs_dir, f"{args.env_id}__{exp_name}__{args.seed}__{int(time.time())}")
    os.makedirs(run_dir, exist_ok=True)
    ckpt_path = os.path.join(run_dir, "checkpoint.pt")
    writer = SummaryWriter(run_dir)
    if resume_ckpt is None:
        writer.add_text(
            "hyperparameters",
            "|param|value|\n|-|-|\n%s" % ("\n".join([f"|{key}|{value}|" for key, value in vars(args).items()])),
        )

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # env setup
    envs = make_vector_env(args.env_id, args.num_envs, args.vector_env, gym.vector.AutoresetMode.SAME_STEP)
    eval_envs = make_vector_env(args.env_id, args.eval_episodes, "sync", gym.vector.AutoresetMode.NEXT_STEP)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    act_dim = int(np.prod(envs.single_action_space.shape))

    agent = Agent(obs_dim, act_dim, args).to(device)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)

    # ALGO Logic: Storage setup
    obs = torch.zeros((args.num_steps, args.num_envs, obs_dim)).to(device)
    actions = torch.zeros((args.num_steps, args.num_envs, act_dim)).to(device)
    logprobs = torch.zeros((args.num_steps, args.num_envs)).to(device)
    rewards = torch.zeros((args.num_steps, args.num_envs)).to(device)
    dones = torch.zeros((args.num_steps, args.num_envs)).to(device)
    values = torch.zeros((args.num_steps, args.num_envs)).to(device)

    # TRY NOT TO MODIFY: start the game
    obs_rms, ret_rms = RunningMeanStd((obs_dim,)), RunningMeanStd()
    discounted_return = np.zeros(args.num_envs)  # reward normalisation divides by the std of this
    episode_return, episode_length = np.zeros(args.num_envs), np.zeros(args.num_envs, dtype=np.int64)
    iteration, global_step = 0, 0
    if resume_ckpt is None:
        raw_obs, _ = envs.reset(seed=args.seed)
        obs_rms.update(raw_obs)
        next_obs = normalize_obs(raw_obs, obs_rms, device)
        next_done = torch.zeros(args.num_envs).to(device)
    else:
        agent.load_state_dict(resume_ckpt["agent"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        envs.reset(seed=args.seed)  # builds the sub-envs' state; every piece is then overwritten
        envs.call("set_snapshot", resume_ckpt["env_snapshots"])
        obs_rms.__dict__.update(resume_ckpt["obs_rms"])
        ret_rms.__dict__.update(resume_ckpt["ret_rms"])
        discounted_return, episode_return, episode_length = resume_ckpt["episode_state"]
        next_obs, next_done = resume_ckpt["next_obs"].to(device), resume_ckpt["next_done"].to(device)
        iteration, global_step = resume_ckpt["iteration"], resume_ckpt["global_step"]
        set_rng_states(resume_ckpt["rng"])

    def checkpoint_bytes():
        buffer = io.BytesIO()
        torch.save({
            "agent": agent.state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration,
            "global_step": global_step, "obs_rms": copy.deepcopy(vars(obs_rms)), "ret_rms": copy.deepcopy(vars(ret_rms)),
            "episode_state": (discounted_return.copy(), episode_return.copy(), episode_length.copy()),
            "next_obs": next_obs.cpu(), "next_done": next_done.cpu(), "env_snapshots": list(envs.call("get_snapshot")),
            "rng": rng_states(), "args": asdict(args),
        }, buffer)
        return buffer.getvalue()

    last_checkpoint, last_iteration = checkpoint_bytes(), iteration  # what Ctrl-C saves: the last finished iteration
    history, eval_returns = [], []
    start_step, start_time = global_step, time.time()
    pbar = tqdm(total=args.total_timesteps, initial=global_step, unit="step", dynamic_ncols=True)
    try:
        while iteration < num_iterations:
            iteration += 1
            # Annealing the rate if instructed to do so.
            if args.anneal_lr:
                frac = 1.0 - (iteration - 1.0) / num_iterations
                optimizer.param_groups[0]["lr"] = frac * args.learning_rate

            for step in range(0, args.num_steps):
                global_step += args.num_envs
                obs[step] = next_obs
                dones[step] = next_done

                # ALGO LOGIC: action logic
                with torch.no_grad():
                    action, logprob, _, value = agent.get_action_and_value(next_obs)
                    values[step] = value.flatten()
                actions[step] = action
                logprobs[step] = logprob

                # TRY NOT TO MODIFY: execute the game and log data.
                raw_obs, raw_reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
                done = terminations | truncations
                discounted_return = discounted_return * args.gamma + raw_reward
                ret_rms.update(discounted_return)
                reward = np.clip(raw_reward / np.sqrt(ret_rms.var + 1e-8), -10, 10)
                discounted_return[done] = 0.0
                obs_rms.update(raw_obs)
                next_obs = normalize_obs(raw_obs, obs_rms, device)
                next_done = torch.tensor(done, dtype=torch.float32, device=device)
                rewards[step] = torch.tensor(reward, dtype=torch.float32, device=device)
                rewards[step] += truncation_bootstrap(agent, terminations, truncations, infos, obs_rms, args.gamma)

                episode_return += raw_reward
                episode_length += 1
                for i in np.flatnonzero(done):
                    writer.add_scalar("charts/episodic_return", episode_return[i], global_step)
                    writer.add_scalar("charts/episodic_length", episode_length[i], global_step)
                    pbar.set_postfix(episodic_return=f"{episode_return[i]:.1f}", refresh=False)
                episode_return[done], episode_length[done] = 0.0, 0

            # bootstrap value if not done
            with torch.no_grad():
                next_value = agent.get_value(next_obs).reshape(1, -1)
                advantages = gae(rewards, values, dones, next_value, next_done, args.gamma, args.gae_lambda)
                returns = advantages + values

            # flatten the batch
            b_obs = obs.reshape((-1, obs_dim))
            b_logprobs = logprobs.reshape(-1)
            b_actions = actions.reshape((-1, act_dim))
            b_advantages = advantages.reshape(-1)
            b_returns = returns.reshape(-1)
            b_values = values.reshape(-1)

            # Optimizing the policy and value network
            b_inds = np.arange(batch_size)
            clipfracs = []
            for epoch in range(args.update_epochs):
                np.random.shuffle(b_inds)
                for start in range(0, batch_size, minibatch_size):
                    end = start + minibatch_size
                    mb_inds = b_inds[start:end]

                    _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb_inds], b_actions[mb_inds])
                    logratio = newlogprob - b_logprobs[mb_inds]
                    ratio = logratio.exp()

                    with torch.no_grad():
                        # calculate approx_kl http://joschu.net/blog/kl-approx.html
                        old_approx_kl = (-logratio).mean()
                        approx_kl = ((ratio - 1) - logratio).mean()
                        clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean())

                    mb_advantages = b_advantages[mb_inds]
                    if args.norm_adv:
                        mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

                    # Policy loss
                    pg_loss1 = -mb_advantages * ratio
                    pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                    pg_loss = torch.max(pg_loss1, pg_loss2).mean()

                    # Value loss
                    newvalue = newvalue.view(-1)
                    if args.clip_vloss:
                        v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                        v_clipped = b_values[mb_inds] + torch.clamp(
                            newvalue - b_values[mb_inds], -args.clip_coef, args.clip_coef,
                        )
                        v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
                        v_loss_max = torch.max(v_loss_unclipped, v_loss_clipped)
                        v_loss = 0.5 * v_loss_max.mean()
                    else:
                        v_loss = 0.5 * ((newvalue - b_returns[mb_inds]) ** 2).mean()

                    entropy_loss = entropy.mean()
                    loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef

                    optimizer.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                    optimizer.step()

                if args.target_kl is not None and approx_kl > args.target_kl:
                    break

            y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
            var_y = np.var(y_true)
            explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

            # TRY NOT TO MODIFY: record rewards for plotting purposes
            sps = int((global_step - start_step) / (time.time() - start_time))
            logs = {
                "charts/learning_rate": optimizer.param_groups[0]["lr"],
                "losses/value_loss": v_loss.item(),
                "losses/policy_loss": pg_loss.item(),
                "losses/entropy": entropy_loss.item(),
                "losses/old_approx_kl": old_approx_kl.item(),
                "losses/approx_kl": approx_kl.item(),
                "losses/clipfrac": torch.stack(clipfracs).mean().item(),
                "losses/explained_variance": float(explained_var),
                "charts/SPS": sps,
            }
            if args.era:  # ERA
                logs["charts/era_target_entropy"] = agent.target_entropy  # ERA
            for tag, value in logs.items():
                writer.add_scalar(tag, value, global_step)
            history.append({"iteration": iteration, "global_step": global_step, **logs})
            pbar.update(global_step - pbar.n)

            if (args.eval_every and iteration % args.eval_every == 0) or iteration == num_iterations:
                returns_eval = evaluate(agent, eval_envs, obs_rms, args.seed + 100_000, device)
                writer.add_scalar("eval/episodic_return", returns_eval.mean(), global_step)
                eval_returns.append((global_step, float(returns_eval.mean())))
                pbar.set_postfix(eval_return=f"{returns_eval.mean():.1f}", refresh=False)

            last_checkpoint, last_iteration = checkpoint_bytes(), iteration
            if (args.save_every and iteration % args.save_every == 0) or iteration == num_iterations:
                save_bytes(last_checkpoint, ckpt_path)
        if resume_ckpt is not None and not history:  # a finished run: evaluate the reloaded agent
            returns_eval = evaluate(agent, eval_envs, obs_rms, args.seed + 100_000, device)
            eval_returns.append((global_step, float(returns_eval.mean())))
    except BaseException:  # Ctrl-C or a crash: keep everything up to the last finished iteration
        save_bytes(last_checkpoint, ckpt_path)
        print(f"\nsaved the checkpoint of iteration {last_iteration} to {ckpt_path}; continue with --resume {ckpt_path}")
        raise
    finally:
        pbar.close()
        envs.close()
        eval_envs.close()
        writer.close()
    return {"run_dir": run_dir, "checkpoint": ckpt_path, "history": history, "eval_returns": eval_returns}


if __name__ == "__main__":
    main(tyro.cli(Args))
