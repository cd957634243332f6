"""Peak memory of a grpo_era.py training step at Qwen's 151,936-token vocabulary, before and after the lean log-probs.

On CPU, a random Qwen2 with Qwen2.5's vocabulary and two small layers (hidden 64) is saved as a Hugging Face
directory and trained for one step by the script's command line, once with short responses and once with long ones.
The peak resident memory of each run (the process's ru_maxrss) grows with the response tokens; the growth per token,
divided by one float32 row of logits (151,936 x 4 bytes), is the number of float32 copies of the [tokens, vocab]
logits alive at the peak. The "before" script is `git show d5f2915:grpo_era.py` (run from a temporary folder with
the era_core.py of that commit). Then the script's --dry-run prints the memory plan of the README's GPU commands for
Qwen2.5-Math-1.5B (one 48 GB GPU) and -7B (8 x 80 GB), from their configurations (no weights are downloaded).

    OMP_NUM_THREADS=1 python benchmarks/bench_grpo_memory.py
"""
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Tuple

import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 151936
QWEN = {  # Qwen2.5-Math-1.5B and -7B (their config.json on the hub)
    "1.5B": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=4096),
    "7B": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False, max_position_embeddings=4096),
}
GPU_COMMANDS = {  # (world size, flags): the README's commands
    "1.5B": (1, ["--recipe", "official", "--batch-size", "256", "--max-prompt-length", "1024", "--max-new-tokens",
                 "3000", "--micro-batch-size", "4", "--generation-batch-size", "64"]),
    "7B": (8, ["--recipe", "official", "--micro-batch-size", "1", "--generation-batch-size", "64"]),
}


@dataclass
class BenchArgs:
    responses: int = 4
    """responses per step (one prompt x 4, one micro-batch)"""
    lengths: Tuple[int, int] = (16, 256)
    """the short and the long response length (tokens)"""
    before: str = "d5f2915"
    """the commit of the "before" script"""
    out_dir: str = ""
    """where the model and the runs go (default: a temporary folder)"""


def write_model(path, config):
    """A random Qwen2 (or only its config) and a 13-character tokenizer, as a Hugging Face directory."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    from transformers.utils.logging import disable_progress_bar

    disable_progress_bar()

    vocab = {c: i for i, c in enumerate(["<eos>", "<unk>", *"0123456789="])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Split("", "isolated"), decoders.Fuse()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>",
                            unk_token="<unk>").save_pretrained(path)
    cfg = Qwen2Config(**config, eos_token_id=0, pad_token_id=0, bos_token_id=None)
    if config["hidden_size"] > 64:
        return cfg.save_pretrained(path)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(path)


def peak_gb(script, model, runs, length, bench):
    """Peak resident memory (GB) of one training step of `script` on the parity prompts."""
    cmd = [sys.executable, script, "--model-name", model, "--dataset", "parity", "--no-cuda", "--total-steps", "1",
           "--batch-size", str(bench.responses), "--num-generations", str(bench.responses), "--micro-batch-size",
           str(bench.responses), "--max-new-tokens", str(length), "--save-every", "0", "--runs-dir", runs]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=os.path.dirname(script))
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr.read()[-3000:]}")
    return usage.ru_maxrss / 2 ** 20


if __name__ == "__main__":
    bench = tyro.cli(BenchArgs)
    out = bench.out_dir or tempfile.mkdtemp(prefix="bench_grpo_memory_")
    model = os.path.join(out, "qwen_vocab_model")
    write_model(model, dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    old = os.path.join(out, "before")
    os.makedirs(old, exist_ok=True)
    for name in ("grpo_era.py", "era_core.py"):
        with open(os.path.join(old, name), "w") as f:
            f.write(subprocess.check_output(["git", "-C", ROOT, "show", f"{bench.before}:{name}"], text=True))
    row = bench.responses * VOCAB * 4 / 2 ** 30  # GB of one float32 logit row per response token, times responses
    print(f"one training step, CPU, {bench.responses} responses in one micro-batch, random Qwen2 with vocabulary "
          f"{VOCAB} (2 layers, hidden 64); peak resident memory at response lengths {bench.lengths}:")
    for label, script in (("before", os.path.join(old, "grpo_era.py")), ("after", os.path.join(ROOT, "grpo_era.py"))):
        short, long = (peak_gb(script, model, os.path.join(out, f"{label}_{n}"), n, bench) for n in bench.lengths)
        copies = (long - short) / ((bench.lengths[1] - bench.lengths[0]) * row)
        print(f"  {label:6s} ({bench.before if label == 'before' else 'now'}): {short:.2f} GB -> {long:.2f} GB, "
              f"float32 [tokens, vocab] logit copies at peak: {copies:.2f}")

    print("\nmemory plan of the README's GPU commands (grpo_era.py --dry-run, GB per GPU):")
    for size, (world, flags) in GPU_COMMANDS.items():
        path = os.path.join(out, f"qwen2.5-math-{size}")
        write_model(path, QWEN[size])
        env = dict(os.environ, WORLD_SIZE=str(world), CUDA_VISIBLE_DEVICES="")
        plan = subprocess.run([sys.executable, os.path.join(ROOT, "grpo_era.py"), "--model-name", path, "--dry-run",
                               *flags], capture_output=True, text=True, env=env)
        print(f"  Qwen2.5-Math-{size} on {world} GPU(s), {' '.join(flags)}:\n    {plan.stdout.strip() or plan.stderr}")
