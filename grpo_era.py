# docs and results: docs/grpo_era.md · the run skeleton shared by all five scripts: docs/skeleton.md
"""GRPO and GRPO-ERA (Entropy Regularizing Activation, arXiv 2510.08549) for LLM reasoning, in one file.

GRPO samples `num_generations` responses per prompt, rewards a correct final answer, normalises rewards within the
group and takes a token-mean clipped-ratio policy-gradient step. ERA (the `# ERA` lines) rescales, in training
passes only, the logits of a positive-advantage response whose top-20 % token entropy H left [ω_low, ω_high].

    python grpo_era.py --model-name tiny --dataset parity --no-cuda                     # offline, CPU, minutes
    torchrun --nproc-per-node 8 grpo_era.py --recipe official --model-name Qwen/Qwen2.5-Math-7B --dataset d.jsonl
    python grpo_era.py --eval-only --model-name runs/<run>/policy_200 --eval-greedy-sets math500.jsonl
"""
import contextlib
import importlib.util
import io
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Literal, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import tyro
from torch.utils.checkpoint import checkpoint

from era_core import era_llm_transform, top_entropy_mean  # ERA

SCRIPT = os.path.basename(__file__)
warnings.filterwarnings("ignore", message="FSDP2-wrapped module")  # HF returns views of its outputs; none is changed in place


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.use_deterministic_algorithms(True)` (exact resume on CPU)"""
    cuda: bool = True
    """if toggled, cuda will be enabled when available (bf16 compute, fp32 master weights, activation checkpointing)"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases (pip install wandb)"""
    wandb_project_name: str = "era"
    """the wandb's project name"""
    wandb_entity: Optional[str] = None
    """the entity (team) of wandb's project"""
    runs_dir: str = "runs"
    """tensorboard logs, checkpoint.pt and the policy_<step> directory go to {runs_dir}/{run_name}/"""
    resume: Optional[str] = None
    """continue the run saved in this checkpoint.pt with its own flags (only --total-steps and --cuda may change)"""
    save_every: int = 50
    """write checkpoint.pt and policy_<step>/ every N optimizer steps (0: only at the end and on a signal)"""
    eval_every: int = 0
    """evaluate on the --eval-* sets every N optimizer steps (0: only at the end, when sets are given)"""
    log_every: int = 1
    """log scalars every N optimizer steps"""
    compile: bool = False
    """torch.compile each decoder layer (opt-in)"""
    eval_only: bool = False
    """only evaluate --model-name (a hub id, or a policy_<step> directory of a run) on the --eval-* sets"""
    dry_run: bool = False
    """print the memory plan and exit"""

    # Algorithm specific arguments
    recipe: Literal["demo", "official"] = "demo"
    """defaults of the flags below: `demo` (small, offline-friendly) or `official` (qwen_7b_era_topk.sh: DAPO dynamic
    sampling, top-20 log-probs, no advantage rescaling, 2048 responses of <= 8192 tokens, `Answer:` format)"""
    model_name: str = "tiny"
    """hub id or local directory of a causal LM, or `tiny` (random small Qwen2 + local character tokenizer)"""
    dataset: str = "parity"
    """JSONL/JSON/parquet path, hub dataset id, or `parity` (built-in task with many correct answers)"""
    prompt_field: Optional[str] = None
    """field with the problem text (or chat messages); default: the first of problem/question/prompt"""
    answer_field: str = "answer"
    """field with the reference answer (dots reach nested fields, e.g. reward_model.ground_truth)"""
    answer_format: Literal["boxed", "dapo"] = "boxed"
    """where the grader reads the final answer: the last \\boxed{} or DAPO's last `Answer:` line (checked at start
    against the prompts)"""
    prompt_suffix: Optional[str] = None
    """appended to string problems (default: the instruction of --answer-format)"""
    max_prompt_length: int = 1024
    """prompts are truncated on the left to this many tokens"""
    max_new_tokens: Optional[int] = None
    """response length limit while training (default: 2 for parity, 1024 otherwise)"""
    total_steps: int = 200
    """total optimizer steps"""
    batch_size: int = 64
    """responses per rollout batch over all ranks (= prompts x num_generations)"""
    num_generations: int = 8
    """responses sampled per prompt (the group size)"""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling: sample more prompts until every group of the batch has rewards that differ"""
    num_minibatches: int = 1
    """optimizer steps per rollout batch (official ERA: 1, strictly on-policy)"""
    micro_batch_size: int = 8
    """responses per forward/backward pass (gradient accumulation; memory only)"""
    max_tokens_per_micro_batch: int = 0
    """also cap a micro-batch at this many padded tokens (0: no cap)"""
    generation_batch_size: int = 0
    """responses per generate call on each rank, in rollouts and evaluation (0: the rank's share of a rollout batch)"""
    learning_rate: float = 1e-6
    """AdamW learning rate (constant; no weight decay)"""
    max_grad_norm: float = 1.0
    """gradient clipping norm"""
    temperature: float = 1.0
    """sampling temperature of the rollouts (log-probs and entropies use the same temperature)"""
    clip_low: float = 1.0
    """ratio clipped below at 1 - clip_low (official ERA runs: 1.0)"""
    clip_high: float = 1.0
    """ratio clipped above at 1 + clip_high (official ERA runs: 1.0)"""
    clip_ratio_c: float = 10.0
    """dual clip: a token with a negative advantage A costs at most c x |A| (official ERA runs: 10)"""
    topk_logprobs: int = 0
    """official-code trick: renormalise log-probs over the top-k logits, -1e4 outside (0: off)"""

    # Evaluation
    eval_sampled_sets: Tuple[str, ...] = ()
    """JSONL/parquet paths evaluated with avg@n and pass@k (AIME24/AIME25/AMC23 protocol)"""
    eval_greedy_sets: Tuple[str, ...] = ()
    """JSONL/parquet paths evaluated with greedy accuracy (MATH500 protocol)"""
    eval_num_samples: int = 32
    """samples per problem for the sampled sets (pass@k for k = 1, 2, 4, ... <= this)"""
    eval_temperature: float = 0.7
    """sampling temperature for the sampled sets"""
    eval_top_p: float = 0.95
    """top-p for the sampled sets"""
    eval_max_new_tokens: int = 3000
    """response length limit at evaluation"""
    eval_limit: int = 0
    """evaluate only the first N problems of each set (0: all)"""

    # ERA
    era: bool = True  # ERA
    """ERA (default) or the baseline (--no-era)"""  # ERA
    omega_low: float = 0.45  # ERA
    """ERA lower bound on a response's top-20 % token entropy (nats)"""  # ERA
    omega_high: float = 3.0  # ERA
    """ERA upper bound on a response's top-20 % token entropy (nats)"""  # ERA
    era_k: float = 2.0  # ERA
    """ERA logit scale factor k > 1"""  # ERA
    era_scale_advantages: bool = True  # ERA
    """rescale advantages with the logits (A/k, k*A; paper Eq. 16); the official README script runs without"""  # ERA
    era_adv_rule: Literal["paper", "official"] = "paper"  # ERA
    """which responses ERA rescales: A > 0 (paper), or int(A) >= 1 (official code, dp_actor.py)"""  # ERA


RECIPES = {"demo": {}, "official": dict(  # everything ERA-LLM/qwen_7b_era_topk.sh sets (docs/grpo_era.md)
    recipe="official", batch_size=2048, num_generations=8, dynamic_sampling=True, topk_logprobs=20,
    learning_rate=1e-6, clip_low=1.0, clip_high=1.0, max_prompt_length=2048, max_new_tokens=8192,
    answer_format="dapo", answer_field="reward_model.ground_truth",
    era_scale_advantages=False,  # ERA
)}
LOGIT_CHUNK = 256  # tokens per [tokens, vocab] block of logits: the only one alive at a time
MAX_SAMPLING_ROUNDS = 10  # dynamic sampling gives up (and fills with zero-variance groups) after this many rounds
SUFFIX = {"boxed": "\nPlease reason step by step, and put your final answer within \\boxed{}.",
          "dapo": "\n\nSolve the problem step by step. The last line of your response should be of the form "
                  "Answer: $Answer (without quotes) where $Answer is the answer to the problem."}
MARKER = {"boxed": "\\boxed", "dapo": "Answer:"}  # what every prompt must ask for, per --answer-format


# TRY NOT TO MODIFY: command line, checkpoints, RNG (the same design in all five scripts: docs/skeleton.md)
BUDGET = ("total_steps", "cuda")  # the only flags that may change with --resume


def fail(message):
    """Bad input: one line on stderr, exit code 2, no traceback; nothing saved is touched."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args():
    """tyro's command line (with the --recipe's defaults); its parse errors reduced to the same one line."""
    argv = " ".join(sys.argv[1:]).replace("=", " ").split()
    recipe = argv[argv.index("--recipe") + 1] if "--recipe" in argv[:-1] else "demo"
    try:
        with contextlib.redirect_stderr(io.StringIO()) as captured:
            return tyro.cli(Args, default=Args(**RECIPES.get(recipe, {})))
    except SystemExit as e:
        if e.code:  # tyro draws a box: keep the message line under its title
            text = [line.strip(" │╭╮╰╯─") for line in captured.getvalue().splitlines()]
            fail(" ".join(text[1:(text + [""]).index("", 1)]) or "bad command line")  # its lines, unwrapped
        raise


def check_args(args, world_size):
    """ValueError naming the first flag out of its range (tyro has checked the types; NaN fails every test)."""
    n, per_rank = max(args.num_generations, 1), args.batch_size // world_size
    for name, ok, allowed in [
        ("total_steps", args.total_steps >= 1 and args.total_steps % max(args.num_minibatches, 1) == 0,
         f">= 1 and a multiple of --num-minibatches {args.num_minibatches}"),
        ("num_generations", args.num_generations >= 2, ">= 2 (group statistics)"),
        ("batch_size", args.batch_size >= 1 and args.batch_size % n == 0 and args.batch_size // n % world_size == 0,
         f">= 1, a multiple of --num-generations {n}, with a number of prompts divisible by the {world_size} processes"),
        ("num_minibatches", 1 <= args.num_minibatches and per_rank % args.num_minibatches == 0,
         f">= 1 and divide the {per_rank} responses per process"),
        *[(k, getattr(args, k) is None or getattr(args, k) >= 1, ">= 1") for k in ("max_new_tokens", "micro_batch_size",
          "log_every", "max_prompt_length", "eval_num_samples", "eval_max_new_tokens")],
        *[(k, 0 <= getattr(args, k) < math.inf, "a finite number >= 0") for k in ("save_every", "eval_every", "eval_limit",
          "topk_logprobs", "max_tokens_per_micro_batch", "generation_batch_size", "clip_high")],
        *[(k, 0 < getattr(args, k) < math.inf, "a finite number > 0") for k in ("learning_rate", "max_grad_norm",
                                                                              "temperature", "eval_temperature")],
        ("clip_low", 0 <= args.clip_low <= 1, "in [0, 1]"), ("eval_top_p", 0 < args.eval_top_p <= 1, "in (0, 1]"),
        ("clip_ratio_c", 1 < args.clip_ratio_c < math.inf, "a finite number > 1"),
        ("eval_only", not args.eval_only or args.eval_sampled_sets or args.eval_greedy_sets, "given with eval sets"),
        ("dataset", not args.dataset.endswith((".jsonl", ".json", ".parquet")) or os.path.exists(args.dataset),
         "an existing file"),
        ("eval_sampled_sets", all(map(os.path.exists, args.eval_sampled_sets + args.eval_greedy_sets)),
         "existing files (and so must --eval-greedy-sets)"),
        ("track", not args.track or importlib.util.find_spec("wandb"), "off unless wandb is installed (pip install wandb)"),
        ("omega_low", -math.inf < args.omega_low < args.omega_high < math.inf, "finite and < --omega-high"),  # ERA
        ("era_k", 1 < args.era_k < math.inf, "a finite number > 1"),  # ERA
    ]:
        if not ok:
            raise ValueError(f"--{name.replace('_', '-')} must be {allowed}, got {getattr(args, name)}")


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
    if not os.path.isdir(os.path.join(os.path.dirname(args.resume), checkpoint["policy"])):
        raise ValueError(f"--resume {args.resume}: its policy directory {checkpoint['policy']} is missing")
    return replace(Args(**checkpoint["args"]), resume=args.resume, **{k: getattr(args, k) for k in given}), checkpoint


def save_checkpoint(run_dir, model, tokenizer, optimizer, rank, **state):
    """Collective. Rank 0 writes policy_<step>/ (save_pretrained: weights and tokenizer), then checkpoint.pt
    (atomically: a temporary file, then renamed) naming it, then removes the older policy_* directories."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights, optim = get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)
    rngs = [rng_state()] * (dist.get_world_size() if dist.is_initialized() else 1)
    if dist.is_initialized():
        dist.all_gather_object(rngs, rngs[0])
    if rank == 0:
        policy, path = f"policy_{state['global_step']}", os.path.join(run_dir, "checkpoint.pt")
        model.save_pretrained(os.path.join(run_dir, policy), state_dict=weights)
        tokenizer.save_pretrained(os.path.join(run_dir, policy))
        torch.save({"script": SCRIPT, "policy": policy, "optimizer": optim, "rng": rngs, **state}, path + ".tmp")
        os.replace(path + ".tmp", path)
        for old in [d for d in os.listdir(run_dir) if d.startswith("policy_") and d != policy]:
            shutil.rmtree(os.path.join(run_dir, old))


def rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def global_sum(values, op=dist.ReduceOp.SUM):
    """Per-rank numbers summed (or reduced with `op`) over all ranks, as a list of floats."""
    t = torch.tensor(values, dtype=torch.float64, device="cuda" if dist.is_initialized() and dist.get_backend() == "nccl" else "cpu")
    if dist.is_initialized():
        dist.all_reduce(t, op)
    return t.tolist()


# Data and grading
def parity_reward(completion, answer):
    """Correct iff the response starts with two digits that both have the parity of the prompt digit."""
    return len(completion) >= 2 and all(c.isdigit() and int(c) % 2 == int(answer) % 2 for c in completion[:2])


def last_boxed(text):
    """Content of the last \\boxed{...} (or \\fbox{...}) in text, braces matched; None if there is none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    i, depth = text.find("{", start) if start >= 0 else -1, 0
    for j in range(i, len(text) if i >= 0 else i):
        depth += (text[j] == "{") - (text[j] == "}")
        if depth == 0:
            return text[i + 1: j]


def dapo_answer(text):
    """What follows the last `Answer:` within the last 300 characters, to the end of its line (DAPO's rule)."""
    found = re.findall(r"(?i)Answer\s*:\s*([^\n]+)", text[-300:])
    return found[-1].strip() if found else None


def math_reward(completion, answer, answer_format="boxed"):
    """Correct iff the final answer (--answer-format) is equivalent to the reference, graded by math-verify; a grader
    crash on odd LaTeX counts as wrong, never kills the run."""
    from math_verify import parse, verify

    pred = last_boxed(completion) if answer_format == "boxed" else dapo_answer(completion)
    answer = int(answer) if isinstance(answer, float) and answer.is_integer() else answer  # AMC's 27.0 -> 27
    try:
        return pred is not None and bool(verify(parse(f"${answer}$"), parse(f"${pred.strip('$')}$")))
    except Exception:
        return False


def read_rows(source, flag):
    """List of dict rows from a JSONL/JSON/parquet path or a hub dataset id; ValueError naming `flag` if unreadable."""
    try:
        if source.endswith(".parquet"):
            import pyarrow.parquet as pq
            return pq.read_table(source).to_pylist()
        if not os.path.exists(source):
            import datasets
            logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # its retry lines: the error below says it
            return list(datasets.load_dataset(source, split="train"))
        with open(source) as f:
            text = f.read()
        return json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]
    except Exception as e:
        raise ValueError(f"{flag} {source}: neither a readable JSONL/JSON/parquet file nor a loadable hub dataset "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def get_field(row, name):
    for part in name.split("."):
        row = row.get(part) if isinstance(row, dict) else None
    return row


def format_prompt(problem, tokenizer, args):
    """Chat messages or plain text (plus the --answer-format instruction) -> the prompt string the model continues."""
    suffix = SUFFIX[args.answer_format] if args.prompt_suffix is None else args.prompt_suffix
    chat = [{"role": "user", "content": problem + suffix}] if isinstance(problem, str) else list(problem)
    if not tokenizer.chat_template:  # a model without a chat template (`tiny`): the texts
        return "\n".join(m["content"] for m in chat)
    return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)


def load_problems(rows, source, tokenizer, args, prompt_field=None, answer_field="answer"):
    """(prompts, answers) of a math set (`source`: its flag and path); ValueError naming the flag of a missing field,
    or unless every prompt asks for the answer where the grader reads it (--answer-format)."""
    if not rows:
        raise ValueError(f"{source} has no rows")
    field = prompt_field or next((f for f in ("problem", "question", "prompt") if f in rows[0]), "problem")
    for name, flag in ((field, "--prompt-field"), (answer_field, "--answer-field")):
        if get_field(rows[0], name) is None:
            raise ValueError(f"{flag} {name!r} is not a field of {source}; fields: {sorted(rows[0])}")
    prompts, marker = [format_prompt(get_field(r, field), tokenizer, args) for r in rows], MARKER[args.answer_format]
    missing = [p for p in prompts if marker not in p]
    if missing:
        raise ValueError(f"--answer-format {args.answer_format}: {len(missing)} of {len(prompts)} prompts of {source} never "
                         f"ask for {marker!r} (first: {missing[0][-80:]!r}); use --answer-format "
                         f"{'dapo' if args.answer_format == 'boxed' else 'boxed'} or a --prompt-suffix that asks for it")
    return prompts, [get_field(r, answer_field) for r in rows]


# Model
def load_tokenizer_and_config(name, rows):
    """The tokenizer (left padding and truncation: long prompts keep their end) and the model's config. `tiny`: one
    token per character of the parity task and of the data `rows` (<eos> = pad), a 2-layer Qwen2 with hidden size 64."""
    from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config

    if name == "tiny":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
        chars = "0123456789=" + "".join(sorted({c for r in rows for c in json.dumps(r, ensure_ascii=False)}))
        tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(dict.fromkeys(["<eos>", "<unk>", *chars]))}, "<unk>"))
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.Split("", "isolated"), decoders.Fuse()
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>", unk_token="<unk>")
        config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                             tie_word_embeddings=True, eos_token_id=0, pad_token_id=0, bos_token_id=None)
    else:
        tokenizer, config = AutoTokenizer.from_pretrained(name), AutoConfig.from_pretrained(name)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = tokenizer.truncation_side = "left"
    return tokenizer, config


def make_model(name, config, args, device):
    """The causal LM with float32 master weights (pretrained, or `tiny`'s seeded random ones). Under torchrun FSDP2
    shards it per decoder layer, then the rest (bf16 compute and fp32 gradient reduction on CUDA)."""
    import transformers
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    transformers.logging.disable_progress_bar()  # a quiet start (and quiet saves)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)  # `tiny`: identical weights on every rank
        model = (transformers.AutoModelForCausalLM.from_config(config) if name == "tiny" else
                 transformers.AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32))
    if device.type == "cuda":  # activation checkpointing of the decoder layers; bf16 compute, fp32 gradient reduction
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mp = MixedPrecisionPolicy(torch.bfloat16, torch.float32) if device.type == "cuda" else MixedPrecisionPolicy()
    for layer in model.model.layers:
        if args.compile:
            layer.compile()
        if dist.is_initialized():
            fully_shard(layer, mp_policy=mp)
    return fully_shard(model, mp_policy=mp) if dist.is_initialized() else model.to(device)


def memory_plan(config, args, world_size):
    """Estimated GB per GPU: float32 weights, gradients and AdamW moments (sharded over the ranks), bf16 weight copies,
    the KV cache of one generate call, checkpointed activations of one micro-batch, and the float32 logit blocks."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    head_dim, layers = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads, config.num_hidden_layers
    context, sequences = args.max_prompt_length + args.max_new_tokens, args.generation_batch_size or args.batch_size // world_size
    tokens = args.max_tokens_per_micro_batch or args.micro_batch_size * context
    return {k: v / 2 ** 30 for k, v in {  # bytes -> GB
        "weights + grads + AdamW (fp32, sharded)": 16 * params / world_size, "bf16 weights (compute copy)": 2 * params,
        "KV cache of one generate call (bf16)": 4 * layers * config.num_key_value_heads * head_dim * sequences * context,
        "activations of a micro-batch (bf16, checkpointed)": 2 * tokens * (
            config.hidden_size * (layers + 8) + 3 * config.intermediate_size),
        "logits (fp32 blocks)": 4 * config.vocab_size * (3 * LOGIT_CHUNK + 3 * sequences)}.items()}, params


# Rollouts, log-probs, advantages, evaluation
def autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def encode(tokenizer, prompts, args):
    return tokenizer(prompts, add_special_tokens=False, truncation=True, max_length=args.max_prompt_length)["input_ids"]


@torch.no_grad()
def sample(model, tokenizer, prompt_ids, n, max_new_tokens, args, device, seeds, temperature, top_p=1.0, greedy=False):
    """n responses per prompt from HF generate, as token-id lists up to and including their first eos. One generate
    call per --generation-batch-size responses (0: the rank's share of a rollout batch), seeded from `seeds` (seed,
    step, round) and the global index of its first prompt: rollouts do not depend on the number of processes, and a
    resumed run samples what an uninterrupted one would."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    per_call, eos, responses = max(1, (args.generation_batch_size or args.batch_size // world) // n), tokenizer.eos_token_id, []
    model.eval()  # HF keeps its KV cache off in training mode with gradient checkpointing
    for i in range(0, len(prompt_ids), per_call):
        torch.manual_seed(int(np.random.SeedSequence([*seeds, rank * len(prompt_ids) + i]).generate_state(1)[0]))
        enc = tokenizer.pad({"input_ids": prompt_ids[i: i + per_call]}, return_tensors="pt").to(device)
        with autocast(device):
            out = model.generate(**enc, do_sample=not greedy, temperature=None if greedy else temperature,
                                 top_p=None if greedy else top_p, top_k=None if greedy else 0,
                                 max_new_tokens=max_new_tokens, num_return_sequences=n, repetition_penalty=1.0,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, synced_gpus=dist.is_initialized())
        responses += [r[: r.index(eos) + 1] if eos in r else r for r in out[:, enc["input_ids"].shape[1]:].tolist()]
    model.train()
    return responses


def pad_batch(tokenizer, prompts, responses, device):
    """Token-id lists -> left-padded prompts [B, P] and right-padded responses [B, R], with their masks."""
    p = tokenizer.pad({"input_ids": prompts}, return_tensors="pt").to(device)
    r = tokenizer.pad({"input_ids": responses}, padding_side="right", return_tensors="pt").to(device)
    return p["input_ids"], p["attention_mask"], r["input_ids"], r["attention_mask"].bool()


def micro_batches(batch, start, end, args):
    """Row ranges covering start:end: at most --micro-batch-size rows and (--max-tokens-per-micro-batch) padded
    tokens (one row may exceed it), as many on every rank (FSDP's collectives need it): a minibatch's own rows only."""
    plen, rlen, starts = batch[1].sum(1).tolist(), batch[3].sum(1).tolist(), [start]
    for i in range(start + 1, end):  # row i starts a new range unless the current one s:i + 1 stays within both limits
        s = starts[-1]
        if i - s >= args.micro_batch_size or (args.max_tokens_per_micro_batch and (i + 1 - s) * (
                max(plen[s: i + 1]) + max(rlen[s: i + 1])) > args.max_tokens_per_micro_batch):
            starts.append(i)
    out = list(zip(starts, starts[1:] + [end]))
    while len(out) < global_sum([len(out)], dist.ReduceOp.MAX)[0]:  # split the largest range until as many as others
        i = max(range(len(out)), key=lambda j: out[j][1] - out[j][0])
        out[i: i + 1] = [(out[i][0], sum(out[i]) // 2), (sum(out[i]) // 2, out[i][1])]
    return out


def response_states(model, batch, s, e):
    """Final hidden states [n, d] at the positions that predict the n valid response tokens of rows s:e, and those
    tokens [n]. The rows are padded only to their own longest prompt and response, padding is dropped, and the model
    computes the logits of one position only: the head is applied in blocks."""
    p0, r = int(batch[1][s:e].any(0).long().argmax()), int(batch[3][s:e].sum(1).max())  # the rows' own padding
    (prompt_ids, prompt_mask), (response, response_mask) = (t[s:e, p0:] for t in batch[:2]), (t[s:e, :r] for t in batch[2:])
    attention_mask = torch.cat([prompt_mask, response_mask.long()], 1)  # positions numbered as generate() numbers them
    out = model(input_ids=torch.cat([prompt_ids, response], 1), attention_mask=attention_mask, use_cache=False,
                position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0), logits_to_keep=1, output_hidden_states=True)
    hidden = out.hidden_states[-1][:, prompt_ids.shape[1] - 1: -1]  # position t predicts token t + 1
    return hidden[response_mask], response[response_mask]


def block_logprobs(head, hidden, tokens, inv_temp, topk):
    """log π(token) of one block of tokens: the one place an [n, V] float32 block of logits exists. With
    --topk-logprobs (official-code trick): renormalised over the top-k logits, -1e4 outside them."""
    logits = head(hidden).float() * inv_temp[:, None]
    z = logits.gather(-1, tokens[:, None]).squeeze(-1)
    if topk > 0:
        top = logits.topk(topk, dim=-1).values
        return torch.where(z >= top[:, -1], z - top.logsumexp(-1), torch.full_like(z, -1e4))
    return z - logits.logsumexp(-1)  # no extra pass over the vocabulary when top-k is off (the default)


def token_logprobs(head, hidden, tokens, inv_temp, topk):
    """log π(token) [n] from hidden states [n, d], LOGIT_CHUNK tokens at a time; with grad, each block's logits are
    recomputed in backward (checkpointed), so one float32 block is alive at a time."""
    blocks = zip(hidden.split(LOGIT_CHUNK), tokens.split(LOGIT_CHUNK), inv_temp.split(LOGIT_CHUNK))
    return torch.cat([checkpoint(block_logprobs, head, *b, topk, use_reentrant=False) for b in blocks])


def token_entropy(head, hidden, inv_temp):
    """Entropy [n] of each token's distribution, LOGIT_CHUNK tokens at a time (the caller holds no grad)."""
    blocks = zip(hidden.split(LOGIT_CHUNK), inv_temp.split(LOGIT_CHUNK))
    logps = ((head(h).float() * t[:, None]).log_softmax(-1) for h, t in blocks)
    return torch.cat([-(logp.exp() * logp).sum(-1) for logp in logps])


def group_advantages(rewards, group_size):
    """GRPO advantages: reward minus its group mean, divided by the group std."""
    grouped = rewards.view(-1, group_size)
    return ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-6)).view(-1)


def pass_at_k(n, c, k):
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), from n samples of which c are correct."""
    return 1.0 if n - c < k else 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def evaluate(model, tokenizer, eval_sets, args, device, step, writer):
    """avg@n and unbiased pass@k on the sampled sets, greedy accuracy on the greedy sets (rows split over the ranks);
    printed and logged at `step` by rank 0."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    results = {}
    for number, (path, prompts, answers) in enumerate(eval_sets):
        greedy, name = number >= len(args.eval_sampled_sets), os.path.splitext(os.path.basename(path))[0]
        n, mine = 1 if greedy else args.eval_num_samples, range(rank, -(-len(prompts) // world) * world, world)
        ids = encode(tokenizer, [prompts[j % len(prompts)] for j in mine], args)  # padded: as many generate calls per rank
        texts = tokenizer.batch_decode(sample(model, tokenizer, ids, n, args.eval_max_new_tokens, args, device, (
            args.seed, step, MAX_SAMPLING_ROUNDS + number), args.eval_temperature, args.eval_top_p, greedy), skip_special_tokens=True)
        correct = {j: sum(math_reward(t, answers[j], args.answer_format) for t in texts[b * n: (b + 1) * n])
                   for b, j in enumerate(mine) if j < len(prompts)}  # correct samples of this rank's problems
        counts = global_sum([correct.get(j, 0) for j in range(len(prompts))])  # per problem, summed over the ranks
        results[f"eval/{name}/" + ("greedy_acc" if greedy else f"avg@{n}")] = sum(c / n for c in counts) / len(counts)
        for k in [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= n and not greedy]:
            results[f"eval/{name}/pass@{k}"] = sum(pass_at_k(n, c, k) for c in counts) / len(counts)
    if writer:
        for k, v in results.items():
            print(f"{k}: {v:.4f}")
            writer.add_scalar(k, v, step)
    return results


def main(args):
    world_size = int(os.environ.get("WORLD_SIZE", 1))  # under torchrun: FSDP2 over the ranks; else one process (as nanoGPT)
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    try:
        args, checkpoint_ = load_checkpoint(args) if args.resume else (args, None)
        check_args(args, world_size)
        args.max_new_tokens = args.max_new_tokens or (2 if args.dataset == "parity" else 1024)
        device = torch.device(f"cuda:{local_rank}" if args.cuda and torch.cuda.is_available() else "cpu")
        math_set = args.dataset != "parity" and not args.eval_only  # else the built-in parity task (unused by --eval-only)
        paths = args.eval_sampled_sets + args.eval_greedy_sets
        rows = [read_rows(args.dataset, "--dataset") if math_set else []] + [read_rows(p, "--eval-sampled-sets/--eval-greedy-sets") for p in paths]
        source = os.path.join(os.path.dirname(args.resume), checkpoint_["policy"]) if checkpoint_ else args.model_name
        tokenizer, config = load_tokenizer_and_config(source, [r for set_rows in rows for r in set_rows])
        prompts, answers = load_problems(rows[0], f"--dataset {args.dataset}", tokenizer, args, args.prompt_field,
                                         args.answer_field) if math_set else ([f"{d}=" for d in range(10)], list(range(10)))
        eval_sets = [(p, *load_problems(r[: args.eval_limit or None], f"--eval-sampled-sets/--eval-greedy-sets {p}", tokenizer, args))
                     for p, r in zip(paths, rows[1:])]
        plan, params = memory_plan(config, args, world_size)
        if rank == 0 and (device.type == "cuda" or args.dry_run):
            print(f"memory plan per GPU ({params / 1e9:.2f}B parameters, {world_size} GPU(s)): " + ", ".join(
                f"{k} {v:.1f}" for k, v in plan.items()) + f"; total {sum(plan.values()):.1f} GB")
        if device.type == "cuda" and sum(plan.values()) > torch.cuda.get_device_properties(device).total_memory / 2 ** 30:
            raise ValueError(f"--micro-batch-size: the memory plan needs {sum(plan.values()):.1f} GB per GPU, more than "
                             f"{device} has; lower --micro-batch-size, --generation-batch-size or --max-new-tokens, or use more GPUs")
    except ValueError as e:
        fail(e)
    if args.dry_run:
        return plan
    if world_size > 1:
        torch.cuda.set_device(device) if device.type == "cuda" else None
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    args.exp_name += "" if args.era or checkpoint_ else "_noera"  # ERA
    data_name = "eval_" + os.path.basename(source) if args.eval_only else os.path.splitext(os.path.basename(args.dataset))[0]
    run_dir = os.path.dirname(os.path.abspath(args.resume)) if args.resume else os.path.join(
        args.runs_dir, f"{data_name}__{args.exp_name}__{args.seed}__{int(time.time())}")

    stop = []  # the first SIGINT/SIGTERM: finish this optimizer step, save, exit 128 + signal; a second one stops at once

    def request_stop(signum, frame):
        stop.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}

    if rank == 0 and args.track:
        __import__("wandb").init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True, config=vars(args),
                                 name=os.path.basename(run_dir), id=os.path.basename(run_dir), resume="allow", save_code=True)
    from torch.utils.tensorboard import SummaryWriter  # (imported here: bad input fails fast)
    writer = SummaryWriter(run_dir, purge_step=checkpoint_["global_step"] + 1 if checkpoint_ else None) if rank == 0 else None
    if writer and checkpoint_ is None:
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n%s" % "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    torch.manual_seed(args.seed + rank)
    torch.use_deterministic_algorithms(args.torch_deterministic, warn_only=True)
    data_rng = np.random.default_rng(args.seed)  # the same prompts on every rank

    model = make_model(source, config, args, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)  # sharded by FSDP
    global_step = checkpoint_["global_step"] if checkpoint_ else 0
    if checkpoint_:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(model, optimizer, checkpoint_["optimizer"], options=StateDictOptions(full_state_dict=True))
        data_rng.bit_generator.state = checkpoint_["data_rng"]
        set_rng_state(checkpoint_["rng"][min(rank, len(checkpoint_["rng"]) - 1)])

    n, per_rank, stopped = args.num_generations, args.batch_size // args.num_generations // world_size, 0
    head = model.get_output_embeddings()
    band = (args.omega_low, args.omega_high, args.era_k)  # ERA
    while global_step < args.total_steps and not args.eval_only and not stopped:
        step_before, t0 = global_step, time.time()
        # ALGO LOGIC: rollouts. Every rank draws the same prompts, samples a group of responses for its share of them
        # and grades them; with dynamic sampling (DAPO), prompts are drawn again until every kept group has rewards
        # that differ
        pool = []  # (prompt ids, responses, correct, texts) of each group sampled in this step
        for rounds in range(1, MAX_SAMPLING_ROUNDS + 1):
            chosen = data_rng.integers(0, len(prompts), size=per_rank * world_size)[rank * per_rank: (rank + 1) * per_rank]
            ids = encode(tokenizer, [prompts[i] for i in chosen], args)
            responses = sample(model, tokenizer, ids, n, args.max_new_tokens, args, device, (args.seed, global_step, rounds - 1),
                               args.temperature)
            texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
            correct = [parity_reward(t, answers[chosen[i // n]]) if args.dataset == "parity" else
                       math_reward(t, answers[chosen[i // n]], args.answer_format) for i, t in enumerate(texts)]
            pool += [(ids[g], *(x[g * n: (g + 1) * n] for x in (responses, correct, texts))) for g in range(len(ids))]
            if not args.dynamic_sampling or not global_sum([sum(len(set(g[2])) > 1 for g in pool) < per_rank])[0]:
                break
        first = pool[:per_rank]  # the policy's own statistics: the first round's groups
        # with dynamic sampling, groups whose rewards differ first; zero-variance ones fill the batch only if needed
        groups = sorted(pool, key=lambda g: len(set(g[2])) == 1)[:per_rank] if args.dynamic_sampling else first
        advantages = group_advantages(torch.tensor([2.0 * c - 1 for g in groups for c in g[2]], device=device), n)  # reward ±1
        batch = pad_batch(tokenizer, [g[0] for g in groups for _ in range(n)], [r for g in groups for r in g[1]], device)
        response_mask, (B, R) = batch[3], batch[3].shape
        t_rollout = time.time() - t0

        # ALGO LOGIC: score the rollout without grad, micro-batch by micro-batch: token entropies, and the old
        # log-probs of the policy that is trained, whose inverse temperature ERA rescales per response
        minibatches = [micro_batches(batch, s, s + B // args.num_minibatches, args) for s in range(0, B, B // args.num_minibatches)]
        inv_temp, (token_ent, old_logp) = torch.full((B,), 1 / args.temperature, device=device), torch.zeros(2, B, R, device=device)
        resp_entropy = torch.zeros(B, device=device)  # ERA
        with torch.no_grad(), autocast(device):
            for s, e in [r for micro in minibatches for r in micro]:
                m, (hidden, tokens) = response_mask[s:e], response_states(model, batch, s, e)
                token_ent[s:e][m] = token_entropy(head, hidden, inv_temp[s:e, None].expand_as(m)[m])
                if args.era:  # ERA: H from the unmodified logits; the logits of A > 0 responses outside [ω_low, ω_high] x k or / k
                    resp_entropy[s:e] = top_entropy_mean(token_ent[s:e], m, 0.2)  # ERA
                    rule = advantages[s:e].trunc() if args.era_adv_rule == "official" else advantages[s:e]  # ERA
                    inv_temp[s:e] = era_llm_transform(inv_temp[s:e], resp_entropy[s:e], rule, *band)[0]  # ERA
                    advantages[s:e] = era_llm_transform(advantages[s:e], resp_entropy[s:e], advantages[s:e], *band,  # ERA
                                                        args.era_scale_advantages)[1]  # ERA: A/k, k*A (paper Eq. 16)
                old_logp[s:e][m] = token_logprobs(head, hidden, tokens, inv_temp[s:e, None].expand_as(m)[m], args.topk_logprobs)

        # ALGO LOGIC: the update. Per minibatch, the token-mean clipped-ratio loss over all ranks' tokens, gradients
        # accumulated over its micro-batches, then one optimizer step
        stats = torch.zeros(2, device=device)  # policy-loss sum, clipped tokens
        for micro in minibatches:
            mb_tokens = global_sum([response_mask[micro[0][0]: micro[-1][1]].sum().item()])[0]
            for s, e in micro:
                with autocast(device):
                    m, (hidden, tokens) = response_mask[s:e], response_states(model, batch, s, e)
                    logp = token_logprobs(head, hidden, tokens, inv_temp[s:e, None].expand_as(m)[m], args.topk_logprobs)
                # log-ratio clamped to [-20, 20] as verl does: with --topk-logprobs a token outside the top k (log-prob
                # -1e4) that enters it after a minibatch step would give an infinite ratio and NaN gradients
                ratio, a = torch.exp((logp - old_logp[s:e][m]).clamp(-20, 20)), advantages[s:e, None].expand_as(m)[m]
                pg = torch.maximum(-a * ratio, -a * ratio.clamp(1 - args.clip_low, 1 + args.clip_high))
                pg = torch.where(a < 0, torch.minimum(pg, -a * args.clip_ratio_c), pg)  # dual clip
                (pg.sum() / mb_tokens * world_size).backward()  # FSDP averages gradients over ranks
                clipped = ((ratio > 1 + args.clip_high) & (a > 0)) | ((ratio < 1 - args.clip_low) & (a < 0))
                stats += torch.stack([pg.detach().sum(), clipped.sum()])
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
        step_time, done = time.time() - t0, global_step >= args.total_steps

        # TRY NOT TO MODIFY: record metrics, evaluate, save at the step boundary
        if done or global_step // args.log_every > step_before // args.log_every:
            loss_sum, clipped, ent_sum, tokens, n_correct, zero_var, distinct = global_sum(stats.tolist() + [
                (token_ent * response_mask).sum().item(), response_mask.sum().item(), sum(sum(g[2]) for g in first),
                sum(len(set(g[2])) == 1 for g in first), sum(len({t for t, c in zip(g[3], g[2]) if c}) for g in first)])
            acc, num_groups, responses = n_correct / args.batch_size, args.batch_size // n, args.batch_size
            metrics = {"losses/policy_loss": loss_sum / tokens, "losses/clipfrac": clipped / tokens,
                       "losses/grad_norm": float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm),
                       "charts/reward_mean": 2 * acc - 1, "charts/reward_std": 2 * math.sqrt(acc * (1 - acc)),
                       "charts/accuracy": acc, "charts/frac_zero_std_groups": zero_var / num_groups,
                       "charts/distinct_correct_per_group": distinct / num_groups, "charts/token_entropy": ent_sum / tokens,
                       "charts/response_length": tokens / responses, "perf/tokens_per_sec": tokens / step_time,
                       "perf/rollout_time_frac": t_rollout / step_time, "perf/update_time": step_time - t_rollout,
                       **({"charts/sampling_rounds": rounds} if args.dynamic_sampling else {})}
            if args.era:  # ERA
                h_sum, sharpened, flattened = global_sum([resp_entropy.sum().item(), (inv_temp > 1 / args.temperature).sum().item(),  # ERA
                                                          (inv_temp < 1 / args.temperature).sum().item()])  # ERA
                metrics.update({"charts/top20_entropy": h_sum / responses, "era/frac_sharpened": sharpened / responses,  # ERA
                                "era/frac_flattened": flattened / responses})  # ERA
            if rank == 0:
                for k, v in metrics.items():
                    writer.add_scalar(k, v, global_step)
                print(f"step {global_step}: reward {metrics['charts/reward_mean']:.3f}, entropy {metrics['charts/token_entropy']:.3f}")
        if eval_sets and (done or args.eval_every and global_step // args.eval_every > step_before // args.eval_every):
            evaluate(model, tokenizer, eval_sets, args, device, global_step, writer)
        stopped = int(global_sum([stop[0] if stop else 0], dist.ReduceOp.MAX)[0])  # all ranks stop together
        if stopped or done or args.save_every and global_step // args.save_every > step_before // args.save_every:
            save_checkpoint(run_dir, model, tokenizer, optimizer, rank, args=asdict(args), global_step=global_step,
                            data_rng=data_rng.bit_generator.state)

    results = evaluate(model, tokenizer, eval_sets, args, device, global_step, writer) if args.eval_only else None
    if writer:
        writer.close()
    for s, handler in previous.items():
        signal.signal(s, handler)
    if world_size > 1:
        dist.destroy_process_group()
    if stopped:
        if rank == 0:
            print(f"stopped by signal {stopped}: continue with python {SCRIPT} --resume {run_dir}/checkpoint.pt", file=sys.stderr)
        sys.exit(128 + stopped)
    return results


if __name__ == "__main__":
    main(parse_args())
