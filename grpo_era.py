"""GRPO with ERA (Entropy Regularizing Activation, arXiv 2510.08549) for LLM reasoning, in one file.

GRPO: sample `num_generations` responses per prompt at temperature 1, reward ±1 for a correct final answer,
advantage = reward normalised within its group, clipped-ratio policy gradient averaged over tokens.
ERA (`# ERA` lines are the whole difference): per response, H = mean entropy of its top-20 % tokens under the
unmodified logits; in TRAINING forward passes only (never when sampling), a positive-advantage response with
H < ω_low has its logits multiplied by k (advantage / k), one with H > ω_high divided by k (advantage · k).

    python grpo_era.py --model-name Qwen/Qwen2.5-Math-1.5B --dataset train.jsonl       # one GPU
    torchrun --nproc-per-node 8 grpo_era.py --model-name ... --dataset ...              # DDP, rollouts split
    python grpo_era.py --model-name tiny --dataset parity --no-cuda                      # offline, CPU, minutes
    python grpo_era.py --eval-only --resume runs/.../checkpoint.pt --eval-sampled-sets aime24.jsonl ...
"""
import contextlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from typing import Callable, Literal, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import tyro
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from era_core import era_llm_transform, top_entropy_mean


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (the script stem; "_noera" is appended for --no-era)"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.use_deterministic_algorithms(True)` (exact resume on CPU)"""
    cuda: bool = True
    """if toggled, cuda is used when available"""
    runs_dir: str = "runs"
    """tensorboard logs and checkpoints go to {runs_dir}/{run_name}"""
    save_every: int = 50
    """save a checkpoint every N optimizer steps (0: only at the end and on interrupt)"""
    resume: Optional[str] = None
    """path of a checkpoint.pt to resume from (with --eval-only: the weights to evaluate)"""
    eval_only: bool = False
    """only evaluate (the base model, or the --resume checkpoint) and exit"""

    # Model and data
    model_name: str = "tiny"
    """hub id or local path of a causal LM, or `tiny` (random small Qwen2 + local character tokenizer)"""
    dataset: str = "parity"
    """JSONL/JSON/parquet path, hub dataset id, or `parity` (built-in task with many correct answers)"""
    dataset_split: str = "train"
    """split of a hub dataset"""
    prompt_field: Optional[str] = None
    """field with the problem text (or chat messages); default: the first of problem/question/prompt"""
    answer_field: str = "answer"
    """field with the reference answer (dots reach nested fields, e.g. reward_model.ground_truth)"""
    prompt_suffix: str = "\nPlease reason step by step, and put your final answer within \\boxed{}."
    """appended to every math problem (not to `parity` prompts)"""
    use_chat_template: bool = True
    """wrap math problems in the tokenizer's chat template when it has one"""
    max_prompt_length: int = 1024
    """prompts are truncated on the left to this many tokens"""
    max_new_tokens: Optional[int] = None
    """response length limit while training (default: 2 for parity, 1024 otherwise)"""
    use_vllm: bool = False
    """sample rollouts with vLLM (must be installed; single process, one GPU)"""

    # GRPO
    total_steps: int = 200
    """total optimizer steps"""
    batch_size: int = 64
    """responses per rollout batch over all ranks (= prompts x num_generations)"""
    num_generations: int = 8
    """responses sampled per prompt (the group size)"""
    num_minibatches: int = 1
    """optimizer steps per rollout batch (official ERA: 1, strictly on-policy)"""
    micro_batch_size: int = 8
    """responses per forward/backward pass (gradient accumulation; memory only)"""
    learning_rate: float = 1e-6
    """AdamW learning rate (constant)"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    max_grad_norm: float = 1.0
    """gradient clipping norm"""
    temperature: float = 1.0
    """sampling temperature of the rollouts (log-probs and entropies use the same temperature)"""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """divide centred rewards by the std of the group, of the whole batch, or not at all"""
    reward_type: Literal["pm1", "binary"] = "pm1"
    """reward +1/-1 (official DAPO rule) or 1/0 for correct/incorrect"""
    clip_low: float = 1.0
    """ratio clipped below at 1 - clip_low (official ERA runs: 1.0)"""
    clip_high: float = 1.0
    """ratio clipped above at 1 + clip_high (official ERA runs: 1.0)"""
    beta: float = 0.0
    """coefficient of the k3 KL to a frozen copy of the initial model (0: no KL, no reference model)"""
    filter_zero_variance: bool = False
    """drop groups whose rewards are all equal from the loss (they carry no signal)"""
    topk_logprobs: int = 0
    """official-code trick (off by default): renormalise log-probs over the top-k logits, -1e4 outside"""
    bf16: bool = True
    """bfloat16 autocast on CUDA"""
    gradient_checkpointing: bool = True
    """gradient checkpointing on CUDA"""
    log_every: int = 1
    """log scalars every N optimizer steps"""

    # ERA
    era: bool = True
    """ERA (the default); --no-era runs plain GRPO"""
    omega_low: float = 0.45
    """ERA lower bound on the top-20 % response entropy (nats)"""
    omega_high: float = 3.0
    """ERA upper bound on the top-20 % response entropy (nats)"""
    era_k: float = 2.0
    """ERA logit scale factor k > 1"""
    era_scale_advantages: bool = True
    """rescale advantages with the logits (A/k, k*A); the official README script ran with it off"""
    era_top_frac: float = 0.2
    """fraction of highest-entropy tokens whose mean is the response entropy"""

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
    eval_batch_size: int = 8
    """prompts per generate call at evaluation"""
    eval_limit: int = 0
    """evaluate only the first N problems of each set (0: all)"""
    eval_every: int = 0
    """evaluate every N optimizer steps during training (0: only at the end, when sets are given)"""


# ----------------------------------------------------------------------------------------------------------
# Tokenizer and model
def make_char_tokenizer(chars):
    """A character-level tokenizer built locally (no download): one token per character, <eos> doubles as pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, "<unk>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>", unk_token="<unk>")


def make_model(args, vocab_chars, dtype=torch.float32):
    """(model, tokenizer). `tiny`: a randomly initialised 2-layer Qwen2 (seeded by --seed) over characters."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    if args.model_name == "tiny":
        tokenizer = make_char_tokenizer(vocab_chars)
        config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                             tie_word_embeddings=True, eos_token_id=0, pad_token_id=0, bos_token_id=None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)  # identical weights on every rank
            model = Qwen2ForCausalLM(config)
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.model_name)
        model = AutoModelForCausalLM.from_pretrained(args.model_name, dtype=dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"  # long prompts keep their end (the question and the instruction)
    return model, tokenizer


# ----------------------------------------------------------------------------------------------------------
# Data and grading
PARITY_CHARS = "0123456789="


def parity_reward(completion, answer):
    """Correct iff the response starts with two digits that both have the parity of the prompt digit."""
    return len(completion) >= 2 and all(c.isdigit() and int(c) % 2 == int(answer) % 2 for c in completion[:2])


def last_boxed(text):
    """Content of the last \\boxed{...} (or \\fbox{...}) in text, braces matched; None if there is none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1: j]
    return None


def math_reward(completion, answer):
    """Correct iff the last \\boxed{} of the response is equivalent to the answer, graded by math-verify."""
    from math_verify import parse, verify

    pred = last_boxed(completion)
    if pred is None:
        return False
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)  # AMC's 27.0 -> 27
    try:
        return bool(verify(parse(f"${answer}$"), parse(f"${pred}$")))
    except Exception:  # a grader crash on odd LaTeX counts as wrong, never kills the run
        return False


def read_rows(source, split="train"):
    """List of dict rows from a JSONL/JSON/parquet path or a hub dataset id."""
    if os.path.exists(source):
        if source.endswith(".parquet"):
            try:
                import pyarrow.parquet as pq
            except ImportError as e:
                raise ValueError(f"reading {source} needs a working pyarrow ({e})") from None
            return pq.read_table(source).to_pylist()
        with open(source) as f:
            text = f.read()
        if source.endswith(".json") and text.lstrip().startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    try:
        import datasets
    except ImportError as e:
        raise ValueError(f"{source} is not a local file, and hub datasets need a working `datasets` ({e})") from None
    return list(datasets.load_dataset(source, split=split))


def get_field(row, name):
    for part in name.split("."):
        row = row[part]
    return row


def has_field(row, name):
    try:
        get_field(row, name)
        return True
    except (KeyError, TypeError, IndexError):
        return False


def load_problems(source, args, split="train", prompt_field=None):
    """(prompt texts or chat messages, answers) of a math set; clear errors for missing fields."""
    rows = read_rows(source, split)
    if not rows:
        raise ValueError(f"{source} has no rows")
    field = prompt_field
    if field is None:
        field = next((f for f in ("problem", "question", "prompt") if f in rows[0]), None)
        if field is None:
            raise ValueError(f"--prompt-field: none of problem/question/prompt in {source}; fields: {sorted(rows[0])}")
    for name, flag in ((field, "--prompt-field"), (args.answer_field, "--answer-field")):
        if not has_field(rows[0], name):
            raise ValueError(f"{flag} {name!r} is not a field of {source}; fields: {sorted(rows[0])}")
    return [get_field(r, field) for r in rows], [get_field(r, args.answer_field) for r in rows]


def format_prompt(problem, tokenizer, args):
    """Chat messages or plain text -> the prompt string the model continues."""
    if isinstance(problem, str):
        problem = problem + args.prompt_suffix
        if not (args.use_chat_template and tokenizer.chat_template):
            return problem
        problem = [{"role": "user", "content": problem}]
    return tokenizer.apply_chat_template(list(problem), tokenize=False, add_generation_prompt=True)


# ----------------------------------------------------------------------------------------------------------
# Rollouts, log-probs, metrics
def autocast(device, args):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and args.bf16)


@torch.no_grad()
def generate(model, tokenizer, prompts, n, max_new_tokens, device, args, temperature, top_p=1.0, greedy=False):
    """Sample n responses per prompt. Returns prompt ids/mask [B*n, P] (left-padded) and response ids/mask
    [B*n, R]; the response mask covers the tokens up to and including the first eos."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True,
                    max_length=args.max_prompt_length, add_special_tokens=False).to(device)
    was_training = model.training
    model.eval()
    with autocast(device, args):
        out = model.generate(**enc, do_sample=not greedy, temperature=temperature if not greedy else None,
                             top_p=top_p if not greedy else None, top_k=0 if not greedy else None,
                             max_new_tokens=max_new_tokens, num_return_sequences=n, repetition_penalty=1.0,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model.train(was_training)
    prompt_len = enc["input_ids"].shape[1]
    response = out[:, prompt_len:]
    is_eos = response == tokenizer.eos_token_id
    response_mask = (is_eos.long().cumsum(-1) - is_eos.long()) == 0  # up to and including the first eos
    return (enc["input_ids"].repeat_interleave(n, 0), enc["attention_mask"].repeat_interleave(n, 0),
            response, response_mask)


def response_logits(model, prompt_ids, prompt_mask, response, response_mask, temperature):
    """Logits [B, R, V] (float32, divided by the sampling temperature) that score each response token."""
    input_ids = torch.cat([prompt_ids, response], 1)
    attention_mask = torch.cat([prompt_mask, response_mask.long()], 1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # as generate() numbers left-padded prompts
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   logits_to_keep=response.shape[1] + 1, use_cache=False).logits[:, :-1]
    return logits.float() / temperature


def token_logprobs(logits, tokens, topk=0):
    """log π(token) under logits; with topk > 0 the official top-k renormalisation (-1e4 outside the top k)."""
    if topk > 0:
        top = logits.topk(topk, dim=-1).values
        z = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        inside = z >= top[..., -1]
        return torch.where(inside, z - top.logsumexp(-1), torch.full_like(z, -1e4))
    return logits.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def token_entropy(logits):
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def pass_at_k(n, c, k):
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), from n samples of which c are correct."""
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def group_advantages(rewards, group_size, scale):
    """GRPO advantages: reward minus its group mean, divided by the group std, the batch std, or nothing."""
    grouped = rewards.view(-1, group_size)
    centred = (grouped - grouped.mean(1, keepdim=True)).view(-1)
    if scale == "group":
        return centred / (grouped.std(1).repeat_interleave(group_size) + 1e-6)
    if scale == "batch":
        return centred / (rewards.std() + 1e-6)
    return centred


@torch.no_grad()
def evaluate(model, tokenizer, args, device, rank, world_size):
    """avg@n and unbiased pass@k on the sampled sets, greedy accuracy on the greedy sets; rows split over ranks."""
    results = {}
    for path, greedy in [(p, False) for p in args.eval_sampled_sets] + [(p, True) for p in args.eval_greedy_sets]:
        problems, answers = load_problems(path, args)  # field auto-detected per set (problem or question)
        if args.eval_limit > 0:
            problems, answers = problems[: args.eval_limit], answers[: args.eval_limit]
        n = 1 if greedy else args.eval_num_samples
        ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= n]
        sums = torch.zeros(len(ks) + 2, dtype=torch.float64, device=device)  # avg, pass@k..., rows
        mine = list(range(rank, len(problems), world_size))
        for i in range(0, len(mine), args.eval_batch_size):
            idx = mine[i: i + args.eval_batch_size]
            prompts = [format_prompt(problems[j], tokenizer, args) for j in idx]
            _, _, response, mask = generate(model, tokenizer, prompts, n, args.eval_max_new_tokens, device, args,
                                            args.eval_temperature, args.eval_top_p, greedy=greedy)
            texts = tokenizer.batch_decode(response.masked_fill(~mask, tokenizer.pad_token_id),
                                           skip_special_tokens=True)
            for b, j in enumerate(idx):
                c = sum(math_reward(t, answers[j]) for t in texts[b * n: (b + 1) * n])
                sums[0] += c / n
                for m, k in enumerate(ks):
                    sums[1 + m] += pass_at_k(n, c, k)
                sums[-1] += 1
        if world_size > 1:
            dist.all_reduce(sums)
        name = os.path.splitext(os.path.basename(path))[0]
        rows = sums[-1].clamp(min=1)
        if greedy:
            results[f"eval/{name}/greedy_acc"] = (sums[0] / rows).item()
        else:
            results[f"eval/{name}/avg@{n}"] = (sums[0] / rows).item()
            for m, k in enumerate(ks):
                results[f"eval/{name}/pass@{k}"] = (sums[1 + m] / rows).item()
    return results


# ----------------------------------------------------------------------------------------------------------
def check_args(args, world_size):
    """One clear error per bad flag, before any model is loaded."""
    if args.num_generations < 2:
        raise ValueError(f"--num-generations must be >= 2 (group statistics), got {args.num_generations}")
    if args.batch_size % args.num_generations:
        raise ValueError(f"--batch-size {args.batch_size} must be divisible by "
                         f"--num-generations {args.num_generations}")
    if (args.batch_size // args.num_generations) % world_size:
        raise ValueError(f"--batch-size / --num-generations = {args.batch_size // args.num_generations} prompts "
                         f"must be divisible by the number of processes ({world_size})")
    per_rank = args.batch_size // world_size
    if per_rank % args.num_minibatches:
        raise ValueError(f"--num-minibatches {args.num_minibatches} must divide the {per_rank} responses per rank")
    if args.micro_batch_size < 1:
        raise ValueError(f"--micro-batch-size must be >= 1, got {args.micro_batch_size}")
    if args.era and not args.omega_low < args.omega_high:  # ERA
        raise ValueError(f"--omega-low ({args.omega_low}) must be < --omega-high ({args.omega_high})")  # ERA
    if args.era and not args.era_k > 1:  # ERA
        raise ValueError(f"--era-k must be > 1, got {args.era_k}")  # ERA
    if args.era and not 0 < args.era_top_frac <= 1:  # ERA
        raise ValueError(f"--era-top-frac must be in (0, 1], got {args.era_top_frac}")  # ERA
    if not (0 <= args.clip_low <= 1 and args.clip_high >= 0):
        raise ValueError(f"--clip-low must be in [0, 1] and --clip-high >= 0, got {args.clip_low}, {args.clip_high}")
    if args.beta < 0 or args.temperature <= 0 or args.learning_rate <= 0:
        raise ValueError("--beta must be >= 0, --temperature and --learning-rate > 0")
    if args.total_steps < 1 or args.eval_num_samples < 1:
        raise ValueError("--total-steps and --eval-num-samples must be >= 1")
    if args.eval_only and args.model_name == "tiny" and args.resume is None:
        print("note: --eval-only on an untrained `tiny` model: every score will be ~0")
    if args.use_vllm:
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise ValueError("--use-vllm needs the vllm package (pip install vllm)") from None
        if world_size > 1 or args.model_name == "tiny":
            raise ValueError("--use-vllm supports a single process with a hub/local model")
    for path in args.eval_sampled_sets + args.eval_greedy_sets:
        if not os.path.exists(path):
            raise ValueError(f"evaluation set {path} does not exist")
    if args.dataset.endswith((".jsonl", ".json", ".parquet")) and not os.path.exists(args.dataset):
        raise ValueError(f"--dataset {args.dataset} does not exist")


def main(args, reward_fn: Optional[Callable[[str, object], bool]] = None):
    """Train (or evaluate). `reward_fn(completion_text, answer) -> bool` is the hook for other tasks.
    Returns the last logged scalars (a dict), on rank 0."""
    distributed = "RANK" in os.environ
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    check_args(args, world_size)
    use_cuda = args.cuda and torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if distributed:
        if use_cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    is_main = rank == 0

    # Task
    if args.eval_only:  # no training data needed
        problems, answers, max_new_tokens, vocab_chars = [], [], 0, ""
    elif args.dataset == "parity":
        problems, answers = [f"{d}=" for d in range(10)], list(range(10))
        reward_fn = reward_fn or parity_reward
        max_new_tokens = args.max_new_tokens or 2
        vocab_chars = PARITY_CHARS
    else:
        problems, answers = load_problems(args.dataset, args, args.dataset_split, args.prompt_field)
        reward_fn = reward_fn or math_reward
        max_new_tokens = args.max_new_tokens or 1024
        vocab_chars = "".join(sorted({c for p in problems + answers for c in json.dumps(p, ensure_ascii=False)}))
    ckpt = torch.load(args.resume, map_location="cpu", weights_only=False) if args.resume else None
    if ckpt is not None and ckpt.get("vocab_chars") is not None:
        vocab_chars = ckpt["vocab_chars"]  # the tiny tokenizer must match the checkpoint's embedding
    if args.model_name == "tiny":
        for p in args.eval_sampled_sets + args.eval_greedy_sets:
            if ckpt is None:
                vocab_chars += "".join(sorted({c for r in read_rows(p) for c in json.dumps(r, ensure_ascii=False)}))

    exp_name = args.exp_name if args.era else args.exp_name + "_noera"  # ERA
    data_name = "eval_" + os.path.basename(args.model_name) if args.eval_only else os.path.basename(args.dataset)
    run_name = f"{data_name}__{exp_name}__{args.seed}__{int(time.time())}"
    run_dir = os.path.join(args.runs_dir, run_name)
    if args.resume and not args.eval_only:
        run_dir = os.path.dirname(os.path.abspath(args.resume))  # continue logging in the same run
    writer = None
    if is_main:
        writer = SummaryWriter(run_dir)
        table = "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items())
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)

    random.seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    torch.manual_seed(args.seed + rank)  # different samples on every rank
    torch.use_deterministic_algorithms(args.torch_deterministic, warn_only=use_cuda)
    data_rng = np.random.default_rng(args.seed)  # same prompt order on every rank

    model, tokenizer = make_model(args, vocab_chars)
    model.to(device)
    if use_cuda and args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ref_model = None
    if args.beta > 0:
        ref_model, _ = make_model(args, vocab_chars)
        ref_model.to(device).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    global_step = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if not args.eval_only:
            optimizer.load_state_dict(ckpt["optimizer"])
            global_step = ckpt["global_step"]
            data_rng.bit_generator.state = ckpt["data_rng"]
            rng = ckpt["rng"][rank] if rank < len(ckpt["rng"]) else None
            if rng is not None:
                random.setstate(rng["python"])
                np.random.set_state(rng["numpy"])
                torch.set_rng_state(rng["torch"])
                if use_cuda and rng.get("cuda") is not None:
                    torch.cuda.set_rng_state(rng["cuda"], device)
    raw_model = model
    if distributed:
        model = DDP(model, device_ids=[local_rank] if use_cuda else None)

    if args.eval_only:
        results = evaluate(raw_model, tokenizer, args, device, rank, world_size)
        if is_main:
            for k, v in results.items():
                print(f"{k}: {v:.4f}")
                writer.add_scalar(k, v, global_step)
            writer.close()
        if distributed:
            dist.destroy_process_group()
        return results

    llm = None
    if args.use_vllm:
        from vllm import LLM, SamplingParams

        llm = LLM(model=args.model_name, gpu_memory_utilization=0.3, dtype="bfloat16")

    def save_checkpoint(gather=True):
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(device) if use_cuda else None}
        rngs = [rng]
        if distributed and gather:
            rngs = [None] * world_size
            dist.all_gather_object(rngs, rng)
        if is_main:
            path = os.path.join(run_dir, "checkpoint.pt")
            torch.save({"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                        "global_step": global_step, "data_rng": data_rng.bit_generator.state, "rng": rngs,
                        "args": asdict(args), "vocab_chars": vocab_chars if args.model_name == "tiny" else None},
                       path + ".tmp")
            os.replace(path + ".tmp", path)

    prompts_per_rank = args.batch_size // args.num_generations // world_size
    n_gen = args.num_generations
    progress = tqdm(total=args.total_steps, initial=global_step, disable=not is_main, desc="grpo_era")
    metrics = {}

    def trained_logprobs(logits, s, e):
        """Log-probs of responses s:e under the trained policy, and their advantages; with ERA, the policy whose
        logits (and advantages) era_llm_transform rescaled from the response entropies."""
        adv = advantages[s:e]
        if args.era:  # ERA
            logits, adv = era_llm_transform(logits, resp_entropy[s:e], adv, args.omega_low,  # ERA
                                            args.omega_high, args.era_k, args.era_scale_advantages)  # ERA
        return token_logprobs(logits, response[s:e], args.topk_logprobs), adv

    try:
        while global_step < args.total_steps:
            t0 = time.time()
            step_before = global_step
            # ROLLOUT: the same prompt batch on every rank, each rank samples its own slice
            chosen = data_rng.integers(0, len(problems), size=prompts_per_rank * world_size)
            chosen = chosen[rank * prompts_per_rank: (rank + 1) * prompts_per_rank]
            prompts = [problems[i] if args.dataset == "parity" else format_prompt(problems[i], tokenizer, args)
                       for i in chosen]
            if llm is not None:
                sp = SamplingParams(n=n_gen, temperature=args.temperature, max_tokens=max_new_tokens)
                outs = llm.generate(prompts, sp, use_tqdm=False)
                texts = [o.text for r in outs for o in r.outputs]
                ends = [tokenizer.eos_token if o.finish_reason == "stop" else "" for r in outs for o in r.outputs]
                enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                resp = tokenizer([t + e for t, e in zip(texts, ends)], return_tensors="pt", padding=True,
                                 padding_side="right", add_special_tokens=False).to(device)
                prompt_ids = enc["input_ids"].repeat_interleave(n_gen, 0)
                prompt_mask = enc["attention_mask"].repeat_interleave(n_gen, 0)
                response, response_mask = resp["input_ids"], resp["attention_mask"].bool()
            else:
                prompt_ids, prompt_mask, response, response_mask = generate(
                    raw_model, tokenizer, prompts, n_gen, max_new_tokens, device, args, args.temperature)
                texts = tokenizer.batch_decode(response.masked_fill(~response_mask, tokenizer.pad_token_id),
                                               skip_special_tokens=True)
            correct = torch.tensor([bool(reward_fn(t, answers[i])) for t, i in
                                    zip(texts, np.repeat(chosen, n_gen))], device=device)
            rewards = correct.float() * 2 - 1 if args.reward_type == "pm1" else correct.float()
            advantages = group_advantages(rewards, n_gen, args.scale_rewards)
            if args.scale_rewards == "batch" and distributed:  # std over the global batch, not the rank's
                all_rewards = [torch.zeros_like(rewards) for _ in range(world_size)]
                dist.all_gather(all_rewards, rewards)
                centred = rewards - rewards.view(-1, n_gen).mean(1).repeat_interleave(n_gen)
                advantages = centred / (torch.cat(all_rewards).std() + 1e-6)
            zero_var = rewards.view(-1, n_gen).std(1) == 0
            keep = torch.ones_like(rewards, dtype=torch.bool)
            if args.filter_zero_variance:
                keep = ~zero_var.repeat_interleave(n_gen)
            loss_mask = response_mask & keep.unsqueeze(1)
            num_tokens = loss_mask.sum().float()
            if distributed:
                dist.all_reduce(num_tokens)
            num_tokens = num_tokens.clamp(min=1)
            ok = correct.tolist()
            distinct = [len({texts[j] for j in range(g * n_gen, (g + 1) * n_gen) if ok[j]})  # distinct correct answers
                        for g in range(len(chosen))]
            t_rollout = time.time() - t0

            # TRAINING: token-mean clipped-ratio loss; ERA transforms the logits in every training forward pass
            B = response.shape[0]
            mb_size = B // args.num_minibatches
            micro = [(s, min(s + args.micro_batch_size, B)) for s in range(0, B, args.micro_batch_size)]
            resp_entropy = torch.zeros(B, device=device)  # top-20 % entropy of the unmodified logits
            old_logp = torch.zeros(response.shape, device=device)
            ent_sum = torch.zeros((), device=device)
            ref_logp = None
            if args.num_minibatches > 1 or ref_model is not None:  # old log-probs: needed when the policy moves
                ref_logp = torch.zeros(response.shape, device=device)
                with torch.no_grad(), autocast(device, args):
                    for s, e in micro:
                        mb = (prompt_ids[s:e], prompt_mask[s:e], response[s:e], response_mask[s:e])
                        logits = response_logits(raw_model, *mb, args.temperature)
                        ent = token_entropy(logits)
                        resp_entropy[s:e] = top_entropy_mean(ent, response_mask[s:e], args.era_top_frac)
                        ent_sum += (ent * response_mask[s:e]).sum()
                        old_logp[s:e] = trained_logprobs(logits, s, e)[0]
                        if ref_model is not None:
                            ref_logits = response_logits(ref_model, *mb, args.temperature)
                            ref_logp[s:e] = token_logprobs(ref_logits, response[s:e], args.topk_logprobs)
            stats = torch.zeros(3, device=device)  # loss sum, clipped tokens, kl sum
            for mb_start in range(0, B, mb_size):
                mb_micro = [(s, e) for s, e in micro if mb_start <= s < mb_start + mb_size]
                mb_tokens = loss_mask[mb_start: mb_start + mb_size].sum().float()
                if distributed:
                    dist.all_reduce(mb_tokens)
                mb_tokens = mb_tokens.clamp(min=1)
                for i, (s, e) in enumerate(mb_micro):
                    sync = not distributed or i == len(mb_micro) - 1
                    ctx = model.no_sync() if not sync else contextlib.nullcontext()
                    with ctx, autocast(device, args):
                        logits = response_logits(model, prompt_ids[s:e], prompt_mask[s:e], response[s:e],
                                                 response_mask[s:e], args.temperature)
                        if args.num_minibatches == 1 and ref_model is None:  # single pass: entropy from here
                            with torch.no_grad():
                                ent = token_entropy(logits.detach())
                                resp_entropy[s:e] = top_entropy_mean(ent, response_mask[s:e], args.era_top_frac)
                                ent_sum += (ent * response_mask[s:e]).sum()
                        logp, adv = trained_logprobs(logits, s, e)
                        old = old_logp[s:e] if args.num_minibatches > 1 or ref_model is not None else logp.detach()
                        ratio = torch.exp(logp - old)
                        a = adv.unsqueeze(1)
                        pg = torch.maximum(-a * ratio, -a * ratio.clamp(1 - args.clip_low, 1 + args.clip_high))
                        m = loss_mask[s:e].float()
                        token_loss = pg
                        if ref_model is not None:
                            d = ref_logp[s:e] - logp
                            kl = torch.exp(d) - d - 1  # k3 estimator of KL(π || π_ref)
                            token_loss = pg + args.beta * kl
                            stats[2] += (kl.detach() * m).sum()
                        # token-mean over the global minibatch; DDP averages gradients, hence * world_size
                        loss = (token_loss * m).sum() / mb_tokens * world_size
                        loss.backward()
                    stats[0] += (pg.detach() * m).sum()
                    r = ratio.detach()
                    clipped = ((r > 1 + args.clip_high) & (a > 0)) | ((r < 1 - args.clip_low) & (a < 0))
                    stats[1] += (clipped * m).sum()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                global_step += 1
                progress.update(1)
                if args.save_every and global_step % args.save_every == 0:
                    save_checkpoint()
                if global_step >= args.total_steps:
                    break
            step_time = time.time() - t0

            if global_step // args.log_every > step_before // args.log_every or global_step >= args.total_steps:
                valid = response_mask.float()
                local = torch.stack([
                    stats[0], stats[1], stats[2], ent_sum, valid.sum(), rewards.sum(), (rewards ** 2).sum(),
                    zero_var.float().sum(), torch.tensor(float(len(chosen)), device=device),
                    resp_entropy.sum(), torch.tensor(float(B), device=device),
                    torch.tensor(float(sum(distinct)), device=device), correct.float().sum(),
                    ((advantages > 0) & (resp_entropy < args.omega_low)).float().sum(),  # ERA: responses sharpened
                    ((advantages > 0) & (resp_entropy > args.omega_high)).float().sum(),  # ERA: responses flattened
                ])
                if distributed:
                    dist.all_reduce(local)
                (loss_sum, clipped, kl_sum, ent_total, tokens, r_sum, r2_sum, zv, groups, top_ent, n_resp,
                 distinct_sum, n_correct, sharpened, flattened) = local.tolist()  # ERA
                r_mean = r_sum / n_resp
                metrics = {
                    "losses/policy_loss": loss_sum / max(tokens, 1),
                    "losses/clipfrac": clipped / max(tokens, 1),
                    "losses/grad_norm": grad_norm.item(),
                    "charts/reward_mean": r_mean,
                    "charts/reward_std": math.sqrt(max(r2_sum / n_resp - r_mean ** 2, 0.0)),
                    "charts/accuracy": n_correct / n_resp,
                    "charts/frac_zero_std_groups": zv / groups,
                    "charts/token_entropy": ent_total / max(tokens, 1),
                    "charts/top20_entropy": top_ent / n_resp,
                    "charts/distinct_correct_per_group": distinct_sum / groups,
                    "charts/response_length": tokens / n_resp,
                    "charts/tokens_per_sec": tokens / step_time,
                    "charts/rollout_time_frac": t_rollout / step_time,
                    "charts/update_time": step_time - t_rollout,
                }
                if ref_model is not None:
                    metrics["losses/kl"] = kl_sum / max(tokens, 1)
                if args.era:  # ERA
                    metrics["era/frac_sharpened"] = sharpened / n_resp  # ERA
                    metrics["era/frac_flattened"] = flattened / n_resp  # ERA
                if is_main:
                    for k, v in metrics.items():
                        writer.add_scalar(k, v, global_step)
                    progress.set_postfix(reward=f"{r_mean:.3f}", ent=f"{metrics['charts/token_entropy']:.3f}")
            has_eval = bool(args.eval_sampled_sets or args.eval_greedy_sets)
            if args.eval_every and global_step // args.eval_every > step_before // args.eval_every and has_eval:
                for k, v in evaluate(raw_model, tokenizer, args, device, rank, world_size).items():
                    if is_main:
                        writer.add_scalar(k, v, global_step)
            if llm is not None:  # push the new weights into the vLLM engine (V0-engine API of vLLM <= 0.10)
                vllm_model = llm.llm_engine.model_executor.driver_worker.model_runner.model
                vllm_model.load_weights(raw_model.state_dict().items())
    except KeyboardInterrupt:
        if is_main:
            print(f"interrupted at step {global_step}: saving {run_dir}/checkpoint.pt")
        save_checkpoint(gather=False)
        if is_main:
            writer.close()
        return metrics
    except Exception:
        save_checkpoint(gather=False)  # nothing computed is lost
        raise
    save_checkpoint()
    progress.close()
    if args.eval_sampled_sets or args.eval_greedy_sets:
        results = evaluate(raw_model, tokenizer, args, device, rank, world_size)
        metrics.update(results)
        if is_main:
            for k, v in results.items():
                print(f"{k}: {v:.4f}")
                writer.add_scalar(k, v, global_step)
    if is_main:
        writer.close()
    if distributed:
        dist.destroy_process_group()
    return metrics


if __name__ == "__main__":
    main(tyro.cli(Args))
