"""Tests for grpo_era.py: tiny random Qwen2 + the parity task on CPU (a few seconds each)."""
import glob
import itertools
import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import grpo_era  # noqa: E402
from grpo_era import Args  # noqa: E402

MATH_EVAL = os.path.join(ROOT, "..", "shared", "data", "math_eval")


def tiny_args(tmp_path, **kw):
    base = dict(cuda=False, runs_dir=str(tmp_path / "runs"), total_steps=2, batch_size=16, num_generations=4,
                learning_rate=3e-3, save_every=0)
    base.update(kw)
    return Args(**base)


def scalars(run_dir):
    acc = EventAccumulator(run_dir)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def only_run(tmp_path):
    dirs = glob.glob(str(tmp_path / "runs" / "*"))
    assert len(dirs) == 1, dirs
    return dirs[0]


GRPO_TAGS = {"losses/policy_loss", "losses/clipfrac", "losses/grad_norm", "charts/reward_mean", "charts/reward_std",
             "charts/frac_zero_std_groups", "charts/token_entropy", "charts/top20_entropy", "charts/response_length",
             "charts/tokens_per_sec", "charts/distinct_correct_per_group", "charts/accuracy"}
ERA_TAGS = {"era/frac_sharpened", "era/frac_flattened"}


def test_smoke_both_variants_tags_finite_and_sampling_untouched(tmp_path):
    first = {}
    for era in (True, False):
        # omega_low above the init entropy (~2.5), so ERA sharpens every winner from the first update on
        grpo_era.main(tiny_args(tmp_path / str(era), era=era, total_steps=3, omega_low=2.6, omega_high=5.0))
        run = only_run(tmp_path / str(era))
        assert ("noera" in os.path.basename(run)) == (not era)
        s = scalars(run)
        assert GRPO_TAGS <= set(s)
        assert (ERA_TAGS <= set(s)) == era
        assert "losses/kl" not in s  # no KL by default
        for tag in GRPO_TAGS:
            assert [st for st, _ in s[tag]] == [1, 2, 3]
            assert all(math.isfinite(v) for _, v in s[tag])
        first[era] = {t: s[t][0][1] for t in ("charts/reward_mean", "charts/token_entropy", "charts/top20_entropy")}
        later = {t: s[t][1][1] for t in ("losses/policy_loss", "charts/token_entropy")}
        first[era]["later"] = later
        ckpt = torch.load(os.path.join(run, "checkpoint.pt"), weights_only=False)
        assert ckpt["global_step"] == 3 and ckpt["vocab_chars"] == grpo_era.PARITY_CHARS
    # same seed: the first rollout is identical for both variants (ERA never touches sampling) and so are the
    # logged entropies (computed from the unmodified logits); the updates differ
    later = first[True].pop("later"), first[False].pop("later")
    assert first[True] == first[False]
    assert 2.3 < first[True]["charts/token_entropy"] <= math.log(13)  # near-uniform random init, 13 tokens
    assert later[0]["charts/token_entropy"] != later[1]["charts/token_entropy"]


def test_grader_answer_forms():
    r = grpo_era.math_reward
    assert r("so the answer is \\boxed{27}", 27.0)  # AMC stores 27.0
    assert r("\\boxed{27.0}", "27")
    assert r("\\boxed{\\frac{1}{2}}", "0.5") and r("\\boxed{\\dfrac12}", "\\frac{1}{2}")
    assert r("first \\boxed{3} then \\boxed{70}", "70")  # the LAST box counts
    assert not r("first \\boxed{70} then \\boxed{3}", "70")
    assert r("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3,\\frac{\\pi}{2})")  # nested braces
    assert r("\\fbox{204}", "204") and r("\\boxed{\\text{204}}", 204)
    assert r("$\\boxed{-2/3}$", "-\\frac{2}{3}")
    assert not r("the answer is 70", "70")  # no box: wrong
    assert not r("\\boxed{71}", "70") and not r("\\boxed{", "70")
    assert grpo_era.last_boxed("a \\boxed{x^{2}} b") == "x^{2}"
    p = grpo_era.parity_reward
    assert p("24", 6) and p("13", 7) and p("88xyz", 0)
    assert not p("23", 4) and not p("2", 4) and not p("=4", 4)


def test_pass_at_k_matches_brute_force():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                subsets = list(itertools.combinations([1] * c + [0] * (n - c), k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert grpo_era.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_group_advantages():
    r = torch.tensor([1.0, -1, -1, -1, 1, 1, 1, 1])
    a = grpo_era.group_advantages(r, 4, "group")
    assert a[:4].tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5], abs=1e-5)  # (r - mean) / std (unbiased)
    assert a[4:].abs().max() == 0  # zero-variance group
    assert grpo_era.group_advantages(r, 4, "none")[:4].tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5])
    assert grpo_era.group_advantages(r, 4, "batch")[0] == pytest.approx(1.5 / r.std().item(), abs=1e-5)


def test_era_fires_on_right_responses():
    """Sharpen low-entropy winners, flatten high-entropy winners, leave losers and in-band responses alone."""
    torch.manual_seed(0)
    V, T = 13, 5
    peaked = torch.full((T, V), -9.0)
    peaked[:, 3] = 9.0  # entropy ~0
    flat = torch.zeros(T, V)  # entropy ln 13 = 2.56
    mid = 2.5 * torch.randn(T, V)
    logits = torch.stack([peaked, flat, mid, peaked, flat])
    tokens = torch.randint(0, V, (5, T))
    mask = torch.ones(5, T, dtype=torch.bool)
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0])
    h = grpo_era.top_entropy_mean(grpo_era.token_entropy(logits), mask, 0.2)
    assert h[0] < 0.45 and 0.45 < h[2] < 2.0 and h[1] > 2.0
    new_logits, new_adv = grpo_era.era_llm_transform(logits, h, adv, 0.45, 2.0, 2.0)
    lp = grpo_era.token_logprobs(new_logits, tokens)
    ref = lambda z: grpo_era.token_logprobs(z, tokens)  # noqa: E731
    assert torch.allclose(lp[0], ref(logits * 2)[0])  # sharpened, A' = A / k
    assert torch.allclose(lp[1], ref(logits / 2)[1])  # flattened (H = 2.56 > 2.0), A' = k A
    assert torch.equal(lp[2:], ref(logits)[2:])  # in band, or A <= 0: unchanged
    assert new_adv.tolist() == [0.5, 2.0, 1.0, -1.0, -1.0]
    _, same_adv = grpo_era.era_llm_transform(logits, h, adv, 0.45, 2.0, 2.0, scale_advantages=False)
    assert torch.equal(same_adv, adv)


def test_training_logprobs_match_the_sampler():
    """The training forward pass (left-padded prompts, explicit position ids) scores each response token
    exactly as generate() sampled it, so GRPO is on-policy."""
    args = Args(cuda=False, seed=3)
    model, tok = grpo_era.make_model(args, "abcdefgh =?0123456789")
    prompts = ["abc 12=?", "h=", "dead beef 7=?"]  # different lengths: left padding matters
    torch.manual_seed(0)
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=6,
                         num_return_sequences=2, output_logits=True, return_dict_in_generate=True,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    sampler = torch.stack(out.logits, 1).log_softmax(-1)
    response = out.sequences[:, enc["input_ids"].shape[1]:]
    is_eos = response == tok.eos_token_id
    mask = (is_eos.long().cumsum(-1) - is_eos.long()) == 0
    with torch.no_grad():
        logits = grpo_era.response_logits(model, enc["input_ids"].repeat_interleave(2, 0),
                                          enc["attention_mask"].repeat_interleave(2, 0), response, mask, 1.0)
    lp = grpo_era.token_logprobs(logits, response)
    ref = sampler.gather(-1, response.unsqueeze(-1)).squeeze(-1)
    assert mask.sum() > 10
    assert torch.allclose(lp[mask], ref[mask], atol=1e-5)
    top = grpo_era.token_logprobs(logits, response, topk=3)  # official top-k renormalisation
    inside = logits.gather(-1, response.unsqueeze(-1)).squeeze(-1) >= logits.topk(3, -1).values[..., -1]
    assert torch.all(top[~inside] == -1e4) and torch.all(top[inside] >= lp[inside])


def test_era_fractions_and_ratio_one_in_training(tmp_path):
    """Inside training: with omega_low above every entropy, exactly the positive-advantage responses are
    sharpened; the old-logprob pass applies ERA too, so the ratio of the first minibatch is exactly 1 (with
    clip 0/0 any deviation would count as clipped); after one update the second minibatch's ratio moves."""
    kw = dict(num_minibatches=2, omega_low=10.0, omega_high=20.0, clip_low=0.0, clip_high=0.0, learning_rate=1e-2)
    grpo_era.main(tiny_args(tmp_path / "a", total_steps=1, **kw))  # stops after the first minibatch
    s = scalars(only_run(tmp_path / "a"))
    acc = s["charts/accuracy"][0][1]
    assert 0 < s["era/frac_sharpened"][0][1] <= acc and s["era/frac_flattened"][0][1] == 0
    assert s["losses/clipfrac"][0][1] == 0.0
    grpo_era.main(tiny_args(tmp_path / "b", total_steps=2, **kw))
    assert scalars(only_run(tmp_path / "b"))["losses/clipfrac"][0][1] > 0


def test_kl_and_filter_and_binary_reward(tmp_path):
    out = grpo_era.main(tiny_args(tmp_path, beta=0.1, filter_zero_variance=True, reward_type="binary",
                                  scale_rewards="batch", total_steps=2))
    assert math.isfinite(out["losses/kl"]) and out["losses/kl"] >= 0
    assert 0 <= out["charts/reward_mean"] <= 1


def test_reward_hook_and_ctrl_c_saves(tmp_path):
    calls = []

    def hook(text, answer):
        calls.append(text)
        if len(calls) > 16 * 2:  # third rollout: simulate Ctrl-C
            raise KeyboardInterrupt
        return text[:1] == "7"

    grpo_era.main(tiny_args(tmp_path, total_steps=10), reward_fn=hook)
    ckpt = torch.load(os.path.join(only_run(tmp_path), "checkpoint.pt"), weights_only=False)
    assert ckpt["global_step"] == 2


def test_exact_resume(tmp_path):
    full = tmp_path / "full"
    grpo_era.main(tiny_args(full, total_steps=4))
    part = tmp_path / "part"
    grpo_era.main(tiny_args(part, total_steps=2))
    run = only_run(part)
    grpo_era.main(tiny_args(part, total_steps=4, resume=os.path.join(run, "checkpoint.pt")))
    assert only_run(part) == run  # logging continues in the same run dir
    a, b = scalars(only_run(full)), scalars(run)
    for tag in ("losses/policy_loss", "charts/reward_mean", "charts/token_entropy", "losses/grad_norm"):
        assert dict(a[tag])[3] == dict(b[tag])[3] and dict(a[tag])[4] == dict(b[tag])[4], tag


def test_bad_flags(tmp_path):
    with pytest.raises(ValueError, match="--batch-size 10 must be divisible by --num-generations 4"):
        grpo_era.main(tiny_args(tmp_path, batch_size=10))
    with pytest.raises(ValueError, match="--omega-low"):
        grpo_era.main(tiny_args(tmp_path, omega_low=3.0, omega_high=3.0))
    with pytest.raises(ValueError, match="--era-k must be > 1"):
        grpo_era.main(tiny_args(tmp_path, era_k=1.0))
    grpo_era.check_args(tiny_args(tmp_path, era=False, era_k=1.0), 1)  # ERA flags are ignored with --no-era
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"query": "1+1?", "answer": "2"}) + "\n")
    with pytest.raises(ValueError, match="--prompt-field.*query"):
        grpo_era.main(tiny_args(tmp_path, dataset=str(data)))
    with pytest.raises(ValueError, match="--prompt-field 'problem' is not a field"):
        grpo_era.main(tiny_args(tmp_path, dataset=str(data), prompt_field="problem"))
    with pytest.raises(ValueError, match="--answer-field"):
        grpo_era.main(tiny_args(tmp_path, dataset=str(data), prompt_field="query", answer_field="solution"))
    # the command line says it too, before any model is built
    r = subprocess.run([sys.executable, os.path.join(ROOT, "grpo_era.py"), "--no-cuda", "--era-k", "0.5",
                        "--runs-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--era-k must be > 1" in r.stderr
    assert not glob.glob(str(tmp_path / "parity*"))


def test_math_jsonl_training_step(tmp_path):
    """A JSONL math set with `question` and numeric answers trains end to end (math-verify grading)."""
    data = tmp_path / "m.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i}+{i}?", "answer": float(2 * i)}) + "\n"
                            for i in range(6)))
    out = grpo_era.main(tiny_args(tmp_path, dataset=str(data), total_steps=1, max_new_tokens=6))
    assert out["charts/reward_mean"] == -1.0 and 0 < out["charts/response_length"] <= 6


@pytest.mark.skipif(not os.path.isdir(MATH_EVAL), reason="../shared/data/math_eval is absent")
def test_eval_only_on_math_eval(tmp_path, monkeypatch):
    grpo_era.main(tiny_args(tmp_path, total_steps=1))
    ckpt = os.path.join(only_run(tmp_path), "checkpoint.pt")
    sets = tuple(os.path.join(MATH_EVAL, f) for f in ("aime25.jsonl", "amc23.jsonl"))
    kw = dict(eval_only=True, resume=ckpt, eval_sampled_sets=sets, eval_limit=3, eval_num_samples=4,
              eval_max_new_tokens=6, eval_batch_size=2, eval_greedy_sets=(os.path.join(MATH_EVAL, "math500.jsonl"),))
    res = grpo_era.main(tiny_args(tmp_path / "ev", **kw))
    keys = {f"eval/{n}/{m}" for n in ("aime25", "amc23") for m in ("avg@4", "pass@1", "pass@2", "pass@4")}
    assert keys | {"eval/math500/greedy_acc"} == set(res)
    assert all(0.0 <= v <= 1.0 for v in res.values())
    assert "eval/amc23/avg@4" in scalars(only_run(tmp_path / "ev"))
    # the aggregation: a grader that marks every third sample correct gives known avg@4 / pass@k per set
    calls = []
    monkeypatch.setattr(grpo_era, "math_reward", lambda text, answer: len(calls.append(0) or calls) % 3 == 1)
    res = grpo_era.main(tiny_args(tmp_path / "ev2", **kw))
    counts = [sum((j * 4 + i) % 3 == 0 for i in range(4)) for j in range(3)]  # aime25: rows 0-2 -> calls 0-11
    assert res["eval/aime25/avg@4"] == pytest.approx(sum(counts) / 12)
    for k in (1, 2, 4):
        assert res[f"eval/aime25/pass@{k}"] == pytest.approx(sum(grpo_era.pass_at_k(4, c, k) for c in counts) / 3)
    assert res["eval/math500/greedy_acc"] == pytest.approx(sum((24 + j) % 3 == 0 for j in range(3)) / 3)


def test_torchrun_two_process_gloo(tmp_path):
    with socket.socket() as sock:  # a free port: other test sessions may run torchrun at the same time
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port,
           os.path.join(ROOT, "grpo_era.py"), "--no-cuda", "--total-steps", "2", "--batch-size", "16",
           "--num-generations", "4", "--learning-rate", "3e-3", "--runs-dir", str(tmp_path / "runs")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    run = only_run(tmp_path)
    s = scalars(run)
    assert GRPO_TAGS | ERA_TAGS <= set(s)
    assert all(math.isfinite(v) for _, v in s["losses/policy_loss"])
    ckpt = torch.load(os.path.join(run, "checkpoint.pt"), weights_only=False)
    assert ckpt["global_step"] == 2 and len(ckpt["rng"]) == 2  # one RNG state per rank
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])  # ranks sample differently
