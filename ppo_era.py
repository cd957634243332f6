# docs and results: docs/ppo_era.md · the run skeleton shared by all five scripts: docs/skeleton.md
"""PPO with ERA on MuJoCo (Gym v5 and dm_control): CleanRL's ppo_continuous_action for gymnasium 1.x.

ERA replaces the entropy bonus by an activation on the log-std head (`--era-mode pin`, the paper's: the Gaussian
entropy is exactly the target; `floor`: the log-stds are raised only when the entropy would fall below it).
`grep -v "# ERA" ppo_era.py > ppo.py` is the baseline, which logs what `ppo_era.py --no-era` logs.
"""
import contextlib
import importlib
import io
import math
import os
import random
import signal
import sys
import time
import dataclasses
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import tyro

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "disable")  # no display: no renderer, no GLFW warning at start
with contextlib.suppress(ImportError):  # with MUJOCO_GL=osmesa, OSMesa's LLVM loaded before triton's segfaults
    importlib.import_module("triton")
import gymnasium as gym  # noqa: E402
from gymnasium.utils.save_video import save_video  # noqa: E402
from gymnasium.wrappers.utils import RunningMeanStd  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

import era_core  # noqa: E402  # ERA

gym.register_envs(importlib.import_module("shimmy"))  # the dm_control/... ids
SCRIPT = os.path.basename(__file__)
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclasses.dataclass
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
    save_every: int = 100_000
    """write checkpoint.pt every N env steps, at the end of an iteration (0: only at the end and on a signal)"""
    eval_every: int = 20_480
    """evaluate the deterministic policy every N env steps, at the end of an iteration, and at the end of the run
    (0: only at the end)"""
    eval_episodes: int = 10
    """episodes per evaluation (one vector env)"""
    log_every: int = 2048
    """log losses every N env steps, at the end of an iteration"""
    compile: bool = False
    """torch.compile the update and the policy (opt-in)"""

    # Algorithm specific arguments
    env_id: str = "HalfCheetah-v5"
    """gymnasium MuJoCo id (Hopper-v5, Walker2d-v5, Ant-v5, ...) or dm_control id (dm_control/cheetah-run-v0, ...)"""
    total_timesteps: int = 1_000_000
    """total env steps of the experiment"""
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
    ent_coef: float = 0.0
    """coefficient of the entropy bonus (CleanRL's 0.0)"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    init_log_std: float = 0.0
    """initial value of the state-independent log-std parameter (CleanRL: 0)"""

    # ERA
    era: bool = True  # ERA
    """ERA on the log-std (default) or CleanRL's PPO (--no-era)"""  # ERA
    era_mode: Literal["pin", "floor"] = "pin"  # ERA
    """pin: the paper's activation (Gaussian entropy = the target); floor: raised only below the target"""  # ERA
    target_entropy_per_dim: float = -0.3  # ERA
    """target Gaussian entropy per action dimension; -0.3 is UNVERIFIED (third-party note, paper_facts 1.8)"""  # ERA
    log_std_min: float = -8.0  # ERA
    """log-std lower bound of --era-mode pin (sigma_min)"""  # ERA
    log_std_max: float = 0.0  # ERA
    """log-std upper bound of --era-mode pin (sigma_max = 1 in the [-1, 1] action scale)"""  # ERA


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


def check_args(args):
    """ValueError naming the first flag out of its range (tyro has checked the types; NaN fails every test)."""
    batch_size, a = args.num_envs * args.num_steps, vars(args)
    for name, ok, allowed in [
        *[(k, a[k] >= 1, ">= 1") for k in ("num_envs", "num_steps", "update_epochs", "eval_episodes", "log_every")],
        *[(k, a[k] >= 0, ">= 0") for k in ("save_every", "eval_every")],
        *[(k, 0 < a[k] < math.inf, "a finite number > 0") for k in ("learning_rate", "clip_coef", "max_grad_norm")],
        *[(k, 0 <= a[k] < math.inf, "a finite number >= 0") for k in ("ent_coef", "vf_coef")],
        ("num_minibatches", 1 <= args.num_minibatches and batch_size % args.num_minibatches == 0, f"a divisor of {batch_size}"),
        ("total_timesteps", args.total_timesteps >= batch_size, f">= one rollout (--num-envs x --num-steps = {batch_size})"),
        ("gamma", 0 < args.gamma <= 1, "in (0, 1]"),
        ("gae_lambda", 0 <= args.gae_lambda <= 1, "in [0, 1]"),
        ("init_log_std", abs(args.init_log_std) < math.inf, "a finite number"),
        ("env_id", args.env_id in gym.registry and isinstance(gym.make(args.env_id).action_space, gym.spaces.Box),
         "a registered gymnasium id with continuous actions (Hopper-v5, dm_control/cheetah-run-v0, ...)"),
        ("track", not args.track or importlib.util.find_spec("wandb"), "off unless wandb is installed (pip install wandb)"),
        ("capture_video", not args.capture_video or os.environ.get("MUJOCO_GL") != "disable" and importlib.util.find_spec(
            "moviepy"), "off unless MuJoCo can render (MUJOCO_GL=egl or osmesa without a display; pip install moviepy)"),
    ]:
        if not ok:
            raise ValueError(f"--{name.replace('_', '-')} must be {allowed}, got {getattr(args, name)}")
    era_core.check_gaussian_target(args.target_entropy_per_dim, args.log_std_min, args.log_std_max, "--target-entropy-per-dim")  # ERA


def load_checkpoint(args):
    """(the saved run's Args with this command line's budget flags, the checkpoint); ValueError if unusable."""
    given = [k for k, v in dataclasses.asdict(args).items() if k != "resume" and v != getattr(Args(), k)]
    try:
        checkpoint = torch.load(args.resume, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise ValueError(f"--resume {args.resume}: no such file") from None
    except Exception:
        raise ValueError(f"--resume {args.resume}: not a readable checkpoint (empty, truncated or not a torch.save file)") from None
    if (not isinstance(checkpoint, dict) or checkpoint.get("script") != SCRIPT or set(checkpoint["args"]) != set(dataclasses.asdict(args))
            or Agent(1, 1, Args(**checkpoint["args"])).state_dict().keys() != checkpoint.get("agent", {}).keys()):  # its layout too
        raise ValueError(f"--resume {args.resume}: not a checkpoint of this version of {SCRIPT}")
    for name in given:  # a flag equal to the run's own value is fine: benchmarks/run.py repeats them all
        if name not in BUDGET and getattr(args, name) != checkpoint["args"][name]:
            raise ValueError(f"--{name.replace('_', '-')} cannot change with --resume, which continues the run with "
                             f"its saved flags (only --{' and --'.join(b.replace('_', '-') for b in BUDGET)} may change)")
    return dataclasses.replace(Args(**checkpoint["args"]), resume=args.resume, **{k: getattr(args, k) for k in given}), checkpoint


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
    """The reset seed of episode `episode` (0, 1, ...): a resumed run starts its next episode as an uninterrupted
    one."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


def make_env(env_id, render_mode=None, seed=None, replay=()):
    """A thunk (CleanRL's). Given a reset seed and the actions of an episode in progress, the env replays them:
    MuJoCo is deterministic, so this rebuilds exactly the state a resumed run left off in."""
    def thunk():
        env = gym.make(env_id, render_mode=render_mode)
        env = gym.wrappers.FlattenObservation(env)  # dm_control's dict of arrays -> one vector
        if not (np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)):
            env = gym.wrappers.RescaleAction(env, np.float32(-1), np.float32(1))  # so the log-std bounds mean the same on every task
        env = gym.wrappers.RecordEpisodeStatistics(gym.wrappers.ClipAction(env))
        if seed is not None:
            env.reset(seed=seed)
            for action in replay:
                env.step(action)
        return env

    return thunk


def normalize_obs(obs, obs_rms, device):
    return torch.from_numpy(np.clip((obs - obs_rms.mean) / np.sqrt(obs_rms.var + 1e-8), -10, 10).astype(np.float32)).to(device)


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class EraLogStd(nn.Module):  # ERA: the activation on the log-std parameter, a torch parametrization (registered in Agent)
    def __init__(self, args, act_dim):  # ERA
        super().__init__()  # ERA
        self.args, self.target_entropy = args, args.target_entropy_per_dim * act_dim  # ERA: H0'

    def forward(self, raw_log_std):  # ERA
        if self.args.era_mode == "pin":  # ERA: the paper's: Gaussian entropy = H0' (sigma_min permitting), sigma <= sigma_max
            return era_core.gaussian_entropy_floor(raw_log_std, self.target_entropy, self.args.log_std_min, self.args.log_std_max)  # ERA
        return era_core.raise_gaussian_entropy(raw_log_std, self.target_entropy)  # ERA: floor: raised only where below H0'


class Agent(nn.Module):
    def __init__(self, obs_dim, act_dim, args):
        super().__init__()
        self.actor_logstd = nn.Parameter(torch.full((1, act_dim), args.init_log_std))
        if args.era:  # ERA: from here on, reading self.actor_logstd returns the activated log-std (same parameter order)
            nn.utils.parametrize.register_parametrization(self, "actor_logstd", EraLogStd(args, act_dim))  # ERA
        self.critic = nn.Sequential(layer_init(nn.Linear(obs_dim, 64)), nn.Tanh(), layer_init(nn.Linear(64, 64)), nn.Tanh(),
                                    layer_init(nn.Linear(64, 1), std=1.0))
        self.actor_mean = nn.Sequential(layer_init(nn.Linear(obs_dim, 64)), nn.Tanh(), layer_init(nn.Linear(64, 64)), nn.Tanh(),
                                        layer_init(nn.Linear(64, act_dim), std=0.01))

    def get_action_and_value(self, x, action=None):
        """Action (sampled unless given), its log-probability, the entropy (Normal's formulas inlined), the value."""
        action_mean = self.actor_mean(x)
        action_logstd = self.actor_logstd
        action_std = action_logstd.exp()
        if action is None:
            action = action_mean + action_std * torch.randn_like(action_mean)
        logprob = (-0.5 * ((action - action_mean) / action_std) ** 2 - action_logstd - LOG_SQRT_2PI).sum(1)
        return action, logprob, (0.5 + LOG_SQRT_2PI + action_logstd).sum(1).expand(len(x)), self.critic(x).flatten()


def evaluate(agent, eval_envs, obs_rms, seed, device, video_dir=None):
    """Mean return of the mean action under frozen observation statistics: one episode per sub-env, the same start
    states every time; with a video_dir, sub-env 0's episode is saved there."""
    obs, _ = eval_envs.reset(seed=seed)
    returns, finished, frames = np.zeros(eval_envs.num_envs), np.zeros(eval_envs.num_envs, dtype=bool), []
    while not finished.all():
        if video_dir and not finished[0]:
            frames.append(eval_envs.envs[0].render())
        with torch.no_grad():
            action = agent.actor_mean(normalize_obs(obs, obs_rms, device))
        obs, reward, terminations, truncations, _ = eval_envs.step(action.cpu().numpy())
        returns += np.where(finished, 0.0, reward)
        finished |= terminations | truncations
    if video_dir:
        save_video(frames, video_dir, fps=eval_envs.metadata.get("render_fps", 30), name_prefix="eval")
    return returns.mean()


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

    stop = []  # the first SIGINT/SIGTERM: finish this iteration, save, exit 128 + signal; a second one stops at once

    def request_stop(signum, frame):
        stop.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}

    if args.track:
        __import__("wandb").init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                                 config=vars(args), name=run_name, id=run_name, resume="allow", save_code=True)
    writer = SummaryWriter(run_dir, purge_step=checkpoint["global_step"] + 1 if checkpoint else None)
    if checkpoint is None:
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n%s" % "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
    batch_size, num_iterations = args.num_envs * args.num_steps, args.total_timesteps // (args.num_envs * args.num_steps)

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # env setup: episode k starts from reset(seed=episode_seed(seed, k)); a resumed run rebuilds the episodes in
    # progress by replaying their actions (docs/skeleton.md): no simulator snapshot, no pickled env
    episodes = checkpoint["episodes"] if checkpoint else [(episode_seed(args.seed, i), []) for i in range(args.num_envs)]
    vector_env = gym.vector.AsyncVectorEnv if args.vector_env == "async" else gym.vector.SyncVectorEnv
    envs = vector_env([make_env(args.env_id, None, seed, replay) for seed, replay in episodes],
                      autoreset_mode=gym.vector.AutoresetMode.DISABLED)  # we reset each sub-env with its episode's seed
    eval_envs = gym.vector.SyncVectorEnv([make_env(args.env_id, "rgb_array" if args.capture_video and i == 0 else None)
                                          for i in range(args.eval_episodes)])
    obs_dim, act_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]

    agent = Agent(obs_dim, act_dim, args).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)  # fused: 4x faster step on CPU
    policy = torch.compile(agent.get_action_and_value, mode="reduce-overhead" if device.type == "cuda" else None,
                           dynamic=False) if args.compile else agent.get_action_and_value

    # ALGO Logic: Storage setup
    obs, actions = (torch.zeros((args.num_steps, args.num_envs, dim)).to(device) for dim in (obs_dim, act_dim))
    logprobs, rewards, dones, values = torch.zeros((4, args.num_steps, args.num_envs)).to(device)

    # TRY NOT TO MODIFY: start the game
    # one normaliser for the whole vector env (as SB3's); rewards are divided by the std of the discounted return
    obs_rms, ret_rms, discounted_return = RunningMeanStd(shape=(obs_dim,)), RunningMeanStd(), np.zeros(args.num_envs)
    episode_seeds, episode_actions = [seed for seed, _ in episodes], [list(replay) for _, replay in episodes]
    next_episode, start_iteration, global_step = args.num_envs, 1, 0
    if checkpoint is None:
        raw_obs, _ = envs.reset(seed=episode_seeds)
        obs_rms.update(raw_obs)
        next_obs, next_done = normalize_obs(raw_obs, obs_rms, device), torch.zeros(args.num_envs).to(device)
    else:
        agent.load_state_dict(checkpoint["agent"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        obs_rms, ret_rms, discounted_return = checkpoint["normalisation"]
        next_obs, next_done = checkpoint["next_obs"].to(device), checkpoint["next_done"].to(device)
        next_episode, start_iteration, global_step = checkpoint["next_episode"], checkpoint["iteration"] + 1, checkpoint["global_step"]
        set_rng_state(checkpoint["rng"])

    ckpt_path, start_step, start_time = os.path.join(run_dir, "checkpoint.pt"), global_step, time.time()
    for iteration in range(start_iteration, num_iterations + 1):
        # Annealing the rate if instructed to do so.
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / num_iterations) * args.learning_rate

        era_rollout = contextlib.ExitStack()  # ERA: the parameter is fixed during a rollout: activate it once, not per step
        era_rollout.enter_context(nn.utils.parametrize.cached())  # ERA
        for step in range(0, args.num_steps):
            global_step += args.num_envs
            obs[step], dones[step] = next_obs, next_done

            # ALGO LOGIC: action logic
            with torch.inference_mode():
                action, logprob, _, value = policy(next_obs)
            actions[step], logprobs[step], values[step] = action, logprob, value

            # TRY NOT TO MODIFY: execute the game and log data.
            env_action = action.cpu().numpy()
            raw_obs, raw_reward, terminations, truncations, infos = envs.step(env_action)
            done = terminations | truncations
            discounted_return = discounted_return * args.gamma + raw_reward
            ret_rms.update(discounted_return)
            rewards[step] = torch.from_numpy(np.clip(raw_reward / np.sqrt(ret_rms.var + 1e-8), -10, 10)).to(device)
            discounted_return[done] = 0.0
            for i in range(args.num_envs):
                episode_actions[i].append(env_action[i])
            for i in np.flatnonzero(done):  # the episode ends: log it, start the next one from its own seed
                writer.add_scalar("charts/episodic_return", infos["episode"]["r"][i], global_step)
                writer.add_scalar("charts/episodic_length", infos["episode"]["l"][i], global_step)
                episode_seeds[i], episode_actions[i], next_episode = episode_seed(args.seed, next_episode), [], next_episode + 1
            next_raw_obs = envs.reset(seed=episode_seeds, options={"reset_mask": done})[0] if done.any() else raw_obs
            obs_rms.update(next_raw_obs)
            next_obs, next_done = normalize_obs(next_raw_obs, obs_rms, device), torch.from_numpy(done).float().to(device)
            cut = truncations & ~terminations  # a time-out is not a terminal state: bootstrap from the final obs
            if cut.any():
                with torch.no_grad():
                    final_value = agent.critic(normalize_obs(raw_obs[cut], obs_rms, device)).flatten()
                rewards[step, torch.from_numpy(cut)] += args.gamma * final_value

        era_rollout.close()  # ERA
        # bootstrap value if not done (a time-out's gamma * V(final obs) is in its reward: cut the chain at every end)
        with torch.no_grad():
            nextvalues = torch.cat([values[1:], agent.critic(next_obs).reshape(1, -1)])
            nextnonterminal = 1.0 - torch.cat([dones[1:], next_done.reshape(1, -1)])
            deltas = rewards + args.gamma * nextvalues * nextnonterminal - values
            advantages, lastgaelam = torch.zeros_like(rewards), 0
            for t in reversed(range(args.num_steps)):
                advantages[t] = lastgaelam = deltas[t] + args.gamma * args.gae_lambda * nextnonterminal[t] * lastgaelam
            returns = advantages + values

        # flatten the batch
        b_obs, b_actions = obs.reshape((-1, obs_dim)), actions.reshape((-1, act_dim))
        b_logprobs, b_advantages, b_returns, b_values = (x.reshape(-1) for x in (logprobs, advantages, returns, values))

        # Optimizing the policy and value network
        b_inds = np.arange(batch_size)
        clipfracs = []
        for epoch in range(args.update_epochs):
            np.random.shuffle(b_inds)
            epoch_inds = torch.from_numpy(b_inds).to(device)  # one host-to-device copy per epoch, not six per minibatch
            for start in range(0, batch_size, batch_size // args.num_minibatches):
                mb_inds = epoch_inds[start:start + batch_size // args.num_minibatches]

                _, newlogprob, entropy, newvalue = policy(b_obs[mb_inds], b_actions[mb_inds])
                logratio = newlogprob - b_logprobs[mb_inds]
                ratio = logratio.exp()

                with torch.no_grad():
                    # calculate approx_kl http://joschu.net/blog/kl-approx.html
                    old_approx_kl = (-logratio).mean()
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean())  # no .item(): no sync

                mb_advantages = b_advantages[mb_inds]
                if args.norm_adv:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

                # Policy loss
                pg_loss1 = -mb_advantages * ratio
                pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                pg_loss = torch.max(pg_loss1, pg_loss2).mean()

                # Value loss
                v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                v_clipped = b_values[mb_inds] + torch.clamp(newvalue - b_values[mb_inds], -args.clip_coef, args.clip_coef)
                v_loss = 0.5 * torch.max(v_loss_unclipped, (v_clipped - b_returns[mb_inds]) ** 2).mean()

                entropy_loss = entropy.mean()
                loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef

                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()

        # TRY NOT TO MODIFY: record rewards for plotting purposes
        if global_step % args.log_every < batch_size:
            y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
            explained_var = np.nan if np.var(y_true) == 0 else 1 - np.var(y_true - y_pred) / np.var(y_true)
            for tag, value in [("charts/learning_rate", optimizer.param_groups[0]["lr"]), ("losses/value_loss", v_loss.item()),
                               ("losses/policy_loss", pg_loss.item()), ("losses/entropy", entropy_loss.item()),
                               ("losses/old_approx_kl", old_approx_kl.item()), ("losses/approx_kl", approx_kl.item()),
                               ("losses/clipfrac", torch.stack(clipfracs).mean().item()),
                               ("losses/explained_variance", explained_var),
                               ("charts/SPS", int((global_step - start_step) / (time.time() - start_time)))]:
                writer.add_scalar(tag, value, global_step)
            if args.era:  # ERA
                writer.add_scalar("charts/era_target_entropy", args.target_entropy_per_dim * act_dim, global_step)  # ERA
        if (args.eval_every and global_step % args.eval_every < batch_size) or iteration == num_iterations:
            writer.add_scalar("eval/episodic_return", evaluate(agent, eval_envs, obs_rms, args.seed + 100_000, device, (
                args.capture_video and os.path.join(run_dir, "videos", f"step{global_step}"))), global_step)

        if stop or iteration == num_iterations or (args.save_every and global_step % args.save_every < batch_size):
            save_checkpoint(ckpt_path, args=dataclasses.asdict(args), agent=agent.state_dict(), optimizer=optimizer.state_dict(),
                            iteration=iteration, global_step=global_step, normalisation=(obs_rms, ret_rms, discounted_return),
                            next_obs=next_obs.cpu(), next_done=next_done.cpu(), next_episode=next_episode,
                            episodes=list(zip(episode_seeds, episode_actions)), rng=rng_state())
        if stop:
            break

    envs.close()
    writer.close()
    for s, handler in previous.items():
        signal.signal(s, handler)
    if stop:
        print(f"stopped by signal {stop[0]}: continue with python {SCRIPT} --resume {ckpt_path}", file=sys.stderr)
        sys.exit(128 + stop[0])


if __name__ == "__main__":
    main(parse_args())
