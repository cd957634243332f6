"""Tests for grpo_era.py: the tiny random Qwen2 on the parity task (and a few math rows) on CPU.

The run skeleton (bad input, signals, resume, two processes) is driven through the command line as a user does;
one reference run serves all of those tests. The math helpers and short behaviour checks run in this process.
"""
import itertools
import json
import math
import signal
import subprocess
import sys

import pytest
import torch

from conftest import (ROOT, assert_bad_input, assert_same_scalars, only_run_dir, run_script, scalars, script_env,
                      without_timing)

import grpo_era  # noqa: E402
from grpo_era import Args  # noqa: E402

MATH_EVAL = ROOT.parent / "shared" / "data" / "math_eval"
# the reference run: 6 steps of 2 prompts x 4 responses, one prompt per generate call (as with 2 processes), saved
# every step (policy_<step>/ and checkpoint.pt)
REFERENCE = ["--no-cuda", "--total-steps", "6", "--batch-size", "8", "--num-generations", "4", "--learning-rate", "3e-3",
             "--generation-batch-size", "4", "--save-every", "1"]
GRPO_TAGS = {"losses/policy_loss", "losses/clipfrac", "losses/grad_norm", "charts/reward_mean", "charts/reward_std",
             "charts/frac_zero_std_groups", "charts/token_entropy", "charts/response_length", "charts/accuracy",
             "charts/distinct_correct_per_group", "perf/tokens_per_sec", "perf/rollout_time_frac", "perf/update_time"}
ERA_TAGS = {"era/frac_sharpened", "era/frac_flattened", "charts/top20_entropy"}
DAPO_PROMPT = ("Solve the following math problem step by step. The last line of your response should be of the form "
               "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{}\n\n"
               "Remember to put your answer on its own line after \"Answer:\".")


def tiny(tmp_path, **kw):
    """Args of a tiny in-process run (2 prompts x 4 responses per step)."""
    return Args(**{**dict(cuda=False, runs_dir=str(tmp_path / "runs"), total_steps=2, batch_size=8, num_generations=4,
                          learning_rate=3e-3, save_every=0), **kw})


def run_logged(tmp_path, **kw):
    grpo_era.main(tiny(tmp_path, **kw))
    return scalars(only_run_dir(tmp_path / "runs"))


def first(logged, tag):
    return logged[tag][0][1]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def dapo_rows(n=4):
    return [{"prompt": [{"role": "user", "content": DAPO_PROMPT.format(f"What is {i} + {i}?")}],
             "reward_model": {"ground_truth": str(2 * i)}} for i in range(n)]


def boxed_rows(n=4):
    return [{"problem": f"What is {i} + {i}?", "answer": 2 * i} for i in range(n)]


# ---------------------------------------------------------------- the run skeleton, through the command line
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted reference run: its run directory (checkpoint.pt, policy_6/, tensorboard scalars)."""
    runs = tmp_path_factory.mktemp("reference")
    proc = run_script("grpo_era.py", *REFERENCE, "--runs-dir", runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return only_run_dir(runs)


@pytest.mark.parametrize("flags,flag", [
    (["--learning-rate", "nan"], "--learning-rate"),
    (["--recipe", "fast"], "--recipe"),
    (["--resume", "{missing}"], "--resume"),
    (["--resume", "{empty}"], "--resume"),
    (["--resume", "{truncated}"], "--resume"),
    (["--resume", "{foreign}"], "--resume"),
    (["--resume", "{checkpoint}", "--learning-rate", "1e-3"], "--learning-rate"),
])
def test_bad_input_one_line_exit_2(flags, flag, reference, tmp_path):
    ckpt = reference / "checkpoint.pt"
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "truncated.pt").write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    torch.save({"script": "sac_era.py", "args": {}}, tmp_path / "foreign.pt")
    paths = dict(missing=tmp_path / "nope.pt", empty=tmp_path / "empty.pt", truncated=tmp_path / "truncated.pt",
                 foreign=tmp_path / "foreign.pt", checkpoint=ckpt)
    flags = [f.format(**paths) for f in flags] + ([] if "--resume" in flags else ["--runs-dir", tmp_path / "runs"])
    line = assert_bad_input("grpo_era.py", "--no-cuda", *flags, flag=flag,
                            protect=[ckpt, reference / "policy_6" / "model.safetensors"])
    assert (line.startswith(f"error: {flag}") or "invalid choice" in line) and not (tmp_path / "runs").exists()


def test_more_bad_input_in_process(tmp_path, capsys):
    """The same one-line refusal for the flags tyro cannot check, without a subprocess each."""
    (tmp_path / "garbage.jsonl").write_text("{not json\n")
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet")
    for kw in (dict(batch_size=0), dict(num_minibatches=0), dict(log_every=0), dict(max_new_tokens=0),
               dict(save_every=-1), dict(num_generations=1), dict(omega_low=3.5), dict(era_k=1.0),
               dict(temperature=math.inf), dict(clip_low=1.5), dict(eval_only=True), dict(dataset=str(tmp_path / "no.jsonl")),
               dict(dataset=str(tmp_path / "garbage.jsonl")), dict(dataset=str(tmp_path / "garbage.parquet"))):
        with pytest.raises(SystemExit) as e:
            grpo_era.main(tiny(tmp_path, **kw))
        err = capsys.readouterr().err.strip().splitlines()
        flag = "--" + next(iter(kw)).replace("_", "-")
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: {flag}"), (kw, err)
    assert not (tmp_path / "runs").exists()


# grpo_era.py run as a user runs it, except that right after its first checkpoint it sends itself a signal: a step
# takes ~35 ms here, so a signal from the test process on a timer would land at any step
SIGNAL_AFTER_FIRST_SAVE = """
import os, signal, grpo_era
save = grpo_era.save_checkpoint
def save_then_signal(*args, **kwargs):
    save(*args, **kwargs)
    grpo_era.save_checkpoint = save
    os.kill(os.getpid(), signal.{})
grpo_era.save_checkpoint = save_then_signal
grpo_era.main(grpo_era.parse_args())
"""


def test_sigterm_then_sigint_save_and_resume_alone_is_exact(reference, tmp_path, monkeypatch, one_thread):
    """SIGTERM right after the checkpoint of step 1 (the step's stop check has passed): step 2 runs, is saved, exit 143;
    `--resume PATH` alone continues, and a SIGINT right after its first checkpoint (step 3): exit 130 with the
    checkpoint of step 4; `--resume PATH` alone finishes (here in this process, on one thread as the subprocesses).
    Every scalar equals the reference run's."""
    def run(sig, *flags):
        proc = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_FIRST_SAVE.format(sig.name), *map(str, flags)],
                              capture_output=True, text=True, timeout=600, cwd=ROOT, env=script_env())
        assert proc.returncode == 128 + sig, proc.stderr[-3000:]
        return proc.stderr

    err = run(signal.SIGTERM, *REFERENCE, "--runs-dir", tmp_path / "cut")
    run_dir = only_run_dir(tmp_path / "cut")
    ckpt = run_dir / "checkpoint.pt"
    assert f"--resume {ckpt}" in err
    assert torch.load(ckpt, weights_only=False)["global_step"] == 2
    run(signal.SIGINT, "--resume", ckpt)
    assert torch.load(ckpt, weights_only=False)["global_step"] == 4
    monkeypatch.setattr(sys, "argv", ["grpo_era.py", "--resume", str(ckpt)])
    grpo_era.main(grpo_era.parse_args())
    assert_same_scalars(scalars(reference), scalars(run_dir))
    assert sorted(p.name for p in run_dir.glob("policy_*")) == ["policy_6"]


def test_fsdp_two_processes_match_one_and_save_a_loadable_policy(reference, tmp_path):
    """`torchrun --nproc-per-node 2` (FSDP2, gloo on CPU) logs what one process logs, within float tolerance: the
    rollouts are seeded per generate call, so both sample the same responses."""
    flags = [*REFERENCE[:-1], "0"]  # saved at the end only
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(ROOT / "grpo_era.py"), *flags, "--runs-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT, env=script_env())
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = without_timing(scalars(reference)), without_timing(scalars(only_run_dir(tmp_path)))
    assert sorted(a) == sorted(b) and {t for t in GRPO_TAGS | ERA_TAGS if not t.startswith("perf/")} <= set(a)
    for tag in a:
        assert [s for s, _ in a[tag]] == [s for s, _ in b[tag]] == [1, 2, 3, 4, 5, 6]
        assert [v for _, v in a[tag]] == pytest.approx([v for _, v in b[tag]], rel=1e-4, abs=1e-6), tag
    run_dir = only_run_dir(tmp_path)
    assert len(torch.load(run_dir / "checkpoint.pt", weights_only=False)["rng"]) == 2  # every rank's RNG states
    from transformers import AutoModelForCausalLM
    two_model = AutoModelForCausalLM.from_pretrained(run_dir / "policy_6")
    one_model = AutoModelForCausalLM.from_pretrained(reference / "policy_6")
    for (name, p), q in zip(two_model.named_parameters(), one_model.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name  # Adam amplifies reduction-order noise in ~0 gradients


def test_hf_outputs_and_eval_only(reference, tmp_path, monkeypatch):
    """The saved policy loads with plain transformers; --eval-only --model-name DIR evaluates it (avg@n, pass@k,
    greedy accuracy) with a grader that marks every third sample correct."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    policy = reference / "policy_6"
    model, tok = AutoModelForCausalLM.from_pretrained(policy), AutoTokenizer.from_pretrained(policy)
    assert tok.decode(tok("7=")["input_ids"]) == "7=" and model.config.vocab_size == 13
    sets = tuple(write_rows(tmp_path / f"{name}.jsonl", boxed_rows(3)) for name in ("a", "b"))
    kw = dict(eval_only=True, model_name=str(policy), eval_sampled_sets=sets[:1], eval_greedy_sets=sets[1:],
              eval_num_samples=4, eval_max_new_tokens=3)
    calls = []
    monkeypatch.setattr(grpo_era, "math_reward", lambda text, answer, fmt: len(calls.append(0) or calls) % 3 == 1)
    res = grpo_era.main(tiny(tmp_path / "eval", **kw))
    counts = [sum((j * 4 + i) % 3 == 0 for i in range(4)) for j in range(3)]
    assert res["eval/a/avg@4"] == pytest.approx(sum(counts) / 12)
    for k in (1, 2, 4):
        assert res[f"eval/a/pass@{k}"] == pytest.approx(sum(grpo_era.pass_at_k(4, c, k) for c in counts) / 3)
    assert res["eval/b/greedy_acc"] == pytest.approx(sum((12 + j) % 3 == 0 for j in range(3)) / 3)
    assert "eval/a/avg@4" in scalars(only_run_dir(tmp_path / "eval" / "runs"))


# ---------------------------------------------------------------- behaviour, in this process
def test_both_variants_log_their_tags_and_share_the_first_rollout(tmp_path):
    era = run_logged(tmp_path / "era", total_steps=3, omega_low=2.6, omega_high=5.0)  # every winner sharpened
    base = run_logged(tmp_path / "base", total_steps=3, era=False)
    assert GRPO_TAGS | ERA_TAGS <= set(era) and GRPO_TAGS <= set(base) and not ERA_TAGS & set(base)
    assert "noera" in only_run_dir(tmp_path / "base" / "runs").name
    for tag in ("charts/reward_mean", "charts/token_entropy", "charts/distinct_correct_per_group"):
        assert first(era, tag) == first(base, tag)  # ERA never touches sampling nor the logged entropy
    assert first(era, "era/frac_sharpened") > 0 and first(era, "era/frac_flattened") == 0
    assert era["charts/token_entropy"][1:] != base["charts/token_entropy"][1:]  # but it changes the updates
    assert 2.3 < first(era, "charts/token_entropy") <= math.log(13)  # near-uniform random init over 13 tokens
    for (_, acc), (_, mean), (_, std) in zip(era["charts/accuracy"], era["charts/reward_mean"], era["charts/reward_std"]):
        assert mean == pytest.approx(2 * acc - 1) and std == pytest.approx(2 * math.sqrt(acc * (1 - acc)))  # ±1 rewards


def test_ratio_is_one_on_policy_and_moves_after_a_minibatch(tmp_path):
    """Old log-probs are scored with ERA too: with clip 0/0 a single minibatch clips nothing (ratio exactly 1);
    with two minibatches the second one's ratio has moved. With ω_low above every entropy exactly the A > 0
    responses are sharpened, and the official rule (int(A) >= 1) sharpens only some of them."""
    kw = dict(omega_low=10.0, omega_high=20.0, clip_low=0.0, clip_high=0.0, learning_rate=1e-2, total_steps=2,
              batch_size=16, seed=2)  # seed 2: both minibatches hold a group whose rewards differ
    one = run_logged(tmp_path / "one", **kw)
    assert first(one, "losses/clipfrac") == 0.0
    two = run_logged(tmp_path / "two", num_minibatches=2, **kw)
    assert first(two, "losses/clipfrac") > 0
    assert first(one, "era/frac_sharpened") == first(one, "charts/accuracy")  # the winners of groups that differ
    kw.update(seed=1, total_steps=1)  # seed 1: a group with one winner (A = 1.5) and one with more (A < 1)
    paper, official = run_logged(tmp_path / "paper", **kw), run_logged(tmp_path / "official", era_adv_rule="official", **kw)
    assert 0 < first(official, "era/frac_sharpened") < first(paper, "era/frac_sharpened")


def test_topk_logprobs_with_minibatches_keep_finite_gradients(tmp_path):
    """With --topk-logprobs a token sampled outside the top k has log-prob -1e4; once a minibatch step moves it into the
    top k its ratio would be e^10000. The clamped log-ratio and the dual clip keep the loss and gradients finite (this
    run crashed with NaN probabilities before them); the dual clip bounds each negative-advantage token's loss."""
    logged = run_logged(tmp_path, topk_logprobs=2, num_minibatches=4, total_steps=8, batch_size=16, learning_rate=3e-2,
                        log_every=1)
    assert all(math.isfinite(v) for tag in ("losses/grad_norm", "losses/policy_loss") for _, v in logged[tag])
    assert len(logged["losses/grad_norm"]) == 2 and max(v for _, v in logged["losses/clipfrac"]) > 0


def test_dynamic_sampling_keeps_drawing_until_groups_differ(tmp_path):
    logged = run_logged(tmp_path, dynamic_sampling=True, total_steps=3)
    rounds = [v for _, v in logged["charts/sampling_rounds"]]
    zero = [v for _, v in logged["charts/frac_zero_std_groups"]]
    assert all(r >= 2 for r, z in zip(rounds, zero) if z > 0) and all(r >= 1 for r in rounds)


def test_micro_batches_stay_inside_minibatches_and_the_token_budget():
    prompts = [[5] * n for n in (3, 1, 2, 3, 1, 1, 2, 2)]
    responses = [[6] * n for n in (1, 4, 2, 2, 1, 3, 1, 2)]
    batch = grpo_era.pad_batch(grpo_era.load_tokenizer_and_config("tiny", [])[0], prompts, responses, "cpu")
    args = Args(micro_batch_size=3, max_tokens_per_micro_batch=10)
    for start, end in ((0, 4), (4, 8)):
        micro = grpo_era.micro_batches(batch, start, end, args)
        assert micro[0][0] == start and micro[-1][1] == end and all(a[1] == b[0] for a, b in zip(micro, micro[1:]))
        for s, e in micro:  # each padded to its own longest prompt and response
            padded = (e - s) * (max(map(len, prompts[s:e])) + max(map(len, responses[s:e])))
            assert e - s <= 3 and (e - s == 1 or padded <= 10)


def test_lean_logprobs_and_entropies_match_the_full_softmax(monkeypatch):
    monkeypatch.setattr(grpo_era, "LOGIT_CHUNK", 3)
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(10, 8, requires_grad=True)
    tokens, inv_temp = torch.randint(0, 50, (10,)), torch.rand(10) + 0.5
    full = (head(hidden) * inv_temp[:, None]).log_softmax(-1)
    lean = grpo_era.token_logprobs(head, hidden, tokens, inv_temp, 0)
    assert torch.allclose(lean, full.gather(-1, tokens[:, None]).squeeze(-1), atol=1e-6)
    (g_full,), (g_lean,) = (torch.autograd.grad(x.sum(), hidden) for x in (full.gather(-1, tokens[:, None]), lean))
    assert torch.allclose(g_full, g_lean, atol=1e-6)
    assert torch.allclose(grpo_era.token_entropy(head, hidden, inv_temp), -(full.exp() * full).sum(-1), atol=1e-5)
    top = grpo_era.token_logprobs(head, hidden, tokens, inv_temp, 5)  # official top-k renormalisation
    inside = full.gather(-1, tokens[:, None]).squeeze(-1) >= full.topk(5, -1).values[:, -1]
    assert torch.all(top[~inside] == -1e4) and torch.all(top[inside] >= lean[inside] - 1e-6)


def test_training_logprobs_match_the_sampler():
    """The training pass (left-padded prompts, explicit position ids) scores each sampled token exactly as
    generate() sampled it, so GRPO is on-policy; a slice of rows is padded only to its own longest prompt."""
    tok, config = grpo_era.load_tokenizer_and_config("tiny", [{"t": "abcdefgh =?0123456789"}])
    model = grpo_era.make_model("tiny", config, Args(seed=3), torch.device("cpu"))
    enc = tok(["abc 12=?", "h=", "dead beef 7=?"], return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    out = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], do_sample=True, temperature=1.0,
                         top_k=0, top_p=1.0, max_new_tokens=6, num_return_sequences=2, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    sampler = torch.stack(out.logits, 1).log_softmax(-1)
    responses = [r[: r.index(0) + 1] if 0 in r else r for r in out.sequences[:, enc["input_ids"].shape[1]:].tolist()]
    prompts = [[t for t, m in zip(i, a) if m] for i, a in zip(enc["input_ids"].repeat_interleave(2, 0).tolist(),
                                                              enc["attention_mask"].repeat_interleave(2, 0).tolist())]
    batch = grpo_era.pad_batch(tok, prompts, responses, "cpu")
    widths = []
    model.model.embed_tokens.register_forward_hook(lambda module, inputs, output: widths.append(inputs[0].shape[1]))
    with torch.no_grad():
        hidden, tokens = grpo_era.response_states(model, batch, 0, len(prompts))
        lp = grpo_era.token_logprobs(model.lm_head, hidden, tokens, torch.ones(len(tokens)), 0)
        grpo_era.response_states(model, batch, 2, 4)  # the two responses to "h="
    ref = sampler[:, : batch[2].shape[1]].gather(-1, batch[2].unsqueeze(-1)).squeeze(-1)[batch[3]]
    assert len(lp) > 10 and torch.allclose(lp, ref, atol=1e-5)
    assert widths == [batch[0].shape[1] + batch[2].shape[1], 2 + max(len(r) for r in responses[2:4])]


def test_graders_and_answer_formats():
    r = grpo_era.math_reward
    assert r("so the answer is \\boxed{27}", 27.0) and r("\\boxed{27.0}", "27")  # AMC stores 27.0
    assert r("\\boxed{\\frac{1}{2}}", "0.5") and r("first \\boxed{3} then \\boxed{70}", "70")  # the LAST box
    assert not r("first \\boxed{70} then \\boxed{3}", "70") and not r("the answer is 70", "70")
    assert r("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3,\\frac{\\pi}{2})") and r("\\fbox{204}", "204")
    assert not r("\\boxed{71}", "70") and not r("\\boxed{", "70") and grpo_era.last_boxed("a \\boxed{x^{2}} b") == "x^{2}"
    assert grpo_era.last_boxed("no box {here}") is None
    assert r("so\nAnswer: 34", "34", "dapo") and r("Answer: $\\frac{1}{2}$", "0.5", "dapo")
    assert r("Answer: 3\nwait\nAnswer: 70", "70", "dapo") and not r("\\boxed{70}", "70", "dapo")
    assert not r("Answer: 70" + " pad" * 100, "70", "dapo")  # DAPO reads only the last 300 characters
    p = grpo_era.parity_reward
    assert p("24", 6) and p("13", 7) and p("88xyz", 0) and not p("23", 4) and not p("2", 4) and not p("=4", 4)


def test_pass_at_k_and_group_advantages():
    for n, c, k in itertools.product(range(1, 7), range(7), range(1, 7)):
        if c <= n and k <= n:
            subsets = list(itertools.combinations([1] * c + [0] * (n - c), k))
            assert grpo_era.pass_at_k(n, c, k) == pytest.approx(sum(map(any, subsets)) / len(subsets), abs=1e-12)
    r = torch.tensor([1.0, -1, -1, -1, 1, 1, 1, 1])
    assert grpo_era.group_advantages(r, 4)[:4].tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5], abs=1e-5)
    assert grpo_era.group_advantages(r, 4)[4:].abs().max() == 0  # zero-variance group


def test_answer_format_is_checked_against_the_prompts(tmp_path, capsys):
    dapo = write_rows(tmp_path / "dapo.jsonl", dapo_rows())
    boxed = write_rows(tmp_path / "boxed.jsonl", boxed_rows())
    for dataset, fmt, extra in ((dapo, "boxed", dict(answer_field="reward_model.ground_truth")), (boxed, "dapo", {})):
        with pytest.raises(SystemExit) as e:
            grpo_era.main(tiny(tmp_path, dataset=dataset, answer_format=fmt, prompt_suffix="", **extra))
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: --answer-format {fmt}: 4 of 4")
    with pytest.raises(SystemExit):
        grpo_era.main(tiny(tmp_path, dataset=dapo))  # the answer field is missing: named
    assert "--answer-field 'answer' is not a field" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # eval sets are checked at start too
        grpo_era.main(tiny(tmp_path, eval_sampled_sets=(boxed,), prompt_suffix=""))
    assert "error: --answer-format boxed: 4 of 4" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_official_recipe_offline_on_dapo_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["grpo_era.py", "--recipe", "official", "--batch-size", "8"])
    args = grpo_era.parse_args()
    assert (args.batch_size, args.num_generations, args.topk_logprobs, args.max_new_tokens) == (8, 8, 20, 8192)
    assert args.dynamic_sampling and not args.era_scale_advantages and args.answer_format == "dapo"
    assert (args.clip_low, args.clip_high, args.learning_rate) == (1.0, 1.0, 1e-6)
    dataset = write_rows(tmp_path / "dapo.jsonl", dapo_rows())
    seen = []  # a grader that alternates: only the row whose answer is 0 gets groups with rewards that differ
    monkeypatch.setattr(grpo_era, "dapo_answer", lambda text: seen.append(text) or str(len(seen) % 2))
    grpo_era.main(Args(**{**grpo_era.RECIPES["official"], **dict(
        cuda=False, runs_dir=str(tmp_path / "runs"), save_every=0, learning_rate=3e-3, dataset=dataset,
        max_new_tokens=4, num_generations=4, batch_size=8, total_steps=1)}))
    logged = scalars(only_run_dir(tmp_path / "runs"))
    assert first(logged, "charts/sampling_rounds") >= 1 and len(seen) == 8 * first(logged, "charts/sampling_rounds")
    assert first(logged, "losses/grad_norm") > 0  # the kept groups carry a signal


@pytest.mark.skipif(not MATH_EVAL.is_dir(), reason="../shared/data/math_eval is absent")
def test_eval_only_reads_the_real_math_sets(tmp_path):
    sets = tuple(str(MATH_EVAL / f) for f in ("aime25.jsonl", "amc23.jsonl"))
    res = grpo_era.main(tiny(tmp_path, eval_only=True, eval_sampled_sets=sets, eval_limit=2, eval_num_samples=2,
                             eval_max_new_tokens=3, eval_greedy_sets=(str(MATH_EVAL / "math500.jsonl"),)))
    assert set(res) == {f"eval/{n}/{m}" for n in ("aime25", "amc23") for m in ("avg@2", "pass@1", "pass@2")} | {
        "eval/math500/greedy_acc"} and all(0 <= v <= 1 for v in res.values())


def test_memory_plan_and_dry_run(tmp_path, capsys):
    from transformers import Qwen2Config
    cfg = Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                      num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False)
    args = Args(batch_size=2048, micro_batch_size=1, generation_batch_size=64, max_prompt_length=2048, max_new_tokens=8192)
    one, params = grpo_era.memory_plan(cfg, args, 1)
    eight, _ = grpo_era.memory_plan(cfg, args, 8)
    assert 7.5e9 < params < 7.7e9 and sum(one.values()) > 120 and sum(eight.values()) < 80
    plan = grpo_era.main(tiny(tmp_path, dry_run=True))
    assert "memory plan per GPU" in capsys.readouterr().out and plan and not (tmp_path / "runs").exists()
