"""Property tests for era_core.py.

Each hypothesis example draws a configuration (sizes, target, input scale, dtype) and a seed, then checks a
whole random batch at once, so every property below covers well over 10 000 random cases in the default
suite (examples x rows, stated per test). `ERA_CORE_EXAMPLES=2000 pytest tests/test_era_core.py` runs a
larger sweep.
"""
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scipy.stats import truncnorm

from era_core import (HALF_LOG_2PI_E, TRUNCATION_BOUND, check_gaussian_target, check_softmax_floor,
                      era_llm_transform, gaussian_entropy_floor, raise_gaussian_entropy, softmax_entropy_floor,
                      top_entropy_mean, truncated_normal_entropy, truncated_normal_entropy_bound,
                      truncated_normal_log_prob, truncated_normal_rsample, truncated_normal_rsample_log_prob)

EXAMPLES = int(os.environ.get("ERA_CORE_EXAMPLES", "200"))
ROWS = 64  # rows per example: EXAMPLES * ROWS = 12 800 cases per property by default
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
TAU_A = math.log(4.0) / 4.0  # ln(tau)/tau for the default tau = 4


def entropy_of(logits):
    p = torch.softmax(logits.double(), dim=-1)
    return -(p * torch.log(p.clamp(min=1e-300))).sum(-1)


def softmax_range(n):
    return 1 + math.log(TAU_A), 1 + math.log(n * TAU_A)


# ---------------------------------------------------------------------------------- gaussian_entropy_floor
@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), dim=st.integers(1, 64), per_dim=st.floats(-10.0, 1.4189),
       scale=st.sampled_from([1e-3, 1.0, 10.0, 1e3]), log_std_max=st.sampled_from([0.0, 0.5, 2.0]))
def test_gaussian_entropy_pinned_or_above(seed, dim, per_dim, scale, log_std_max):
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(ROWS, dim, generator=g, dtype=torch.float64) * scale
    target = per_dim * dim
    log_std = gaussian_entropy_floor(raw, target, log_std_min=-8.0, log_std_max=log_std_max)
    # independent entropy: torch.distributions, not the formula under test
    entropy = torch.distributions.Normal(torch.zeros_like(log_std), log_std.exp()).entropy().sum(-1)
    assert (log_std >= -8.0).all() and (log_std <= log_std_max + 1e-12).all()
    assert (entropy >= target - 1e-9 * max(1.0, abs(target))).all()
    unclamped = (log_std > -8.0).all(-1)
    assert torch.allclose(entropy[unclamped], torch.full_like(entropy[unclamped], target), atol=1e-8, rtol=1e-10)
    if per_dim <= -8.0 + HALF_LOG_2PI_E:  # a budget below D·log σ_min forces the clamp on some dimension
        assert not unclamped.any()


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), dim=st.integers(1, 40), per_dim=st.floats(-3.0, 1.0))
def test_gaussian_matches_paper_equation_float32_and_grads(seed, dim, per_dim):
    g = torch.Generator().manual_seed(seed)
    raw = (torch.randn(ROWS, dim, generator=g) * 5).requires_grad_()
    target = per_dim * dim
    log_std = gaussian_entropy_floor(raw, target)
    # the paper's equation written out in float64: log σ_max + (H0' − D log√(2πe) − D log σ_max)·softmax, max σ_min
    expected = torch.clamp(0.0 + (target - dim * HALF_LOG_2PI_E) * torch.softmax(raw.double(), -1), min=-8.0)
    assert log_std.dtype == torch.float32
    assert torch.allclose(log_std.double(), expected, atol=1e-4)
    (log_std * torch.randn(ROWS, dim, generator=g)).sum().backward()
    assert torch.isfinite(raw.grad).all()


def test_gaussian_state_independent_batched_and_tensor_target():
    dim = 6
    param = torch.randn(dim)
    vec = gaussian_entropy_floor(param, 0.25 * dim)
    assert vec.shape == (dim,)
    assert math.isclose(float(dim * HALF_LOG_2PI_E + vec.sum()), 0.25 * dim, abs_tol=1e-5)
    batch = gaussian_entropy_floor(param.expand(3, 5, dim), 0.25 * dim)
    assert batch.shape == (3, 5, dim) and torch.allclose(batch, vec.expand(3, 5, dim))
    targets = torch.tensor([-1.0, 0.0, 2.0])  # one target per row, e.g. H0 + a learned δ
    per_row = gaussian_entropy_floor(torch.randn(3, dim), targets)
    assert torch.allclose(dim * HALF_LOG_2PI_E + per_row.sum(-1), targets, atol=1e-5)


def test_gaussian_rejects_impossible_target():
    limit = 6 * HALF_LOG_2PI_E
    gaussian_entropy_floor(torch.zeros(6), limit)  # the limit itself is admissible: σ = σ_max everywhere
    with pytest.raises(ValueError, match=r"must be <= D\*\(log sqrt\(2\*pi\*e\) \+ log_std_max\) = 8.514"):
        gaussian_entropy_floor(torch.zeros(6), limit + 0.01)
    with pytest.raises(ValueError, match="log_std_min"):
        gaussian_entropy_floor(torch.zeros(6), 0.0, log_std_min=1.0, log_std_max=0.0)


def test_check_gaussian_target_range_and_non_finite():
    check_gaussian_target(HALF_LOG_2PI_E - 8.0)  # both ends admissible
    check_gaussian_target(HALF_LOG_2PI_E)
    for bad in (HALF_LOG_2PI_E + 1e-9, HALF_LOG_2PI_E - 8.0 - 1e-9, -100.0, math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match=r"^--entropy-per-dim must be in \[-6.5811, 1.4189\]"):
            check_gaussian_target(bad, flag="--entropy-per-dim")
    for low, high in ((0.0, 0.0), (1.0, -1.0), (math.nan, 0.0), (-math.inf, 0.0)):
        with pytest.raises(ValueError, match="log_std_min < log_std_max"):
            check_gaussian_target(0.0, low, high)


# ---------------------------------------------------------------------------------- raise_gaussian_entropy
@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), dim=st.integers(1, 64), per_dim=st.floats(-10.0, 3.0),
       scale=st.sampled_from([1e-2, 1.0, 5.0]), shift=st.floats(-6.0, 3.0), state_dependent=st.booleans())
def test_raise_gaussian_entropy_is_a_floor_and_identity_above(seed, dim, per_dim, scale, shift, state_dependent):
    # EXAMPLES x ROWS cases: the entropy is max(input entropy, target); rows already above are untouched
    g = torch.Generator().manual_seed(seed)
    log_std = torch.randn(ROWS if state_dependent else 1, dim, generator=g, dtype=torch.float64) * scale + shift
    log_std.requires_grad_()
    target = per_dim * dim
    out = raise_gaussian_entropy(log_std, target)
    normal = lambda ls: torch.distributions.Normal(torch.zeros_like(ls), ls.exp()).entropy().sum(-1)  # noqa: E731
    h_in, h_out = normal(log_std.detach()), normal(out.detach())
    assert (h_out >= target - 1e-9 * max(1.0, abs(target))).all()
    assert torch.allclose(h_out, torch.maximum(h_in, torch.full_like(h_in, target)), atol=1e-9, rtol=1e-12)
    above = h_in >= target
    assert torch.equal(out.detach()[above], log_std.detach()[above])  # bit for bit where the floor is slack
    grad, = torch.autograd.grad(out[above].sum(), log_std) if above.any() else (None,)
    if grad is not None:
        assert torch.equal(grad[above], torch.ones_like(grad[above]))


def test_raise_gaussian_entropy_binding_keeps_the_split():
    log_std = torch.tensor([[-3.0, -1.0, -2.0]], requires_grad=True)
    out = raise_gaussian_entropy(log_std, 0.0)
    assert torch.allclose(out - log_std, (out - log_std)[:, :1].expand(1, 3))  # uniform shift
    entropy = (HALF_LOG_2PI_E + out).sum()
    grad, = torch.autograd.grad(entropy, log_std)
    assert torch.allclose(grad, torch.zeros(1, 3), atol=1e-6)  # while binding the entropy cannot be lowered


# ------------------------------------------------------------------------------- truncated normal (SAC-ERA)
def test_truncated_normal_helpers_match_scipy():
    g = torch.Generator().manual_seed(0)
    loc = (torch.rand(200, 3, generator=g, dtype=torch.float64) * 2 - 1) * TRUNCATION_BOUND
    scale = torch.exp(torch.rand(200, 3, generator=g, dtype=torch.float64) * 6 - 5)
    a, b = ((-TRUNCATION_BOUND - loc) / scale).numpy(), ((TRUNCATION_BOUND - loc) / scale).numpy()
    ref = truncnorm(a, b, loc=loc.numpy(), scale=scale.numpy())
    assert torch.allclose(truncated_normal_entropy(loc, scale), torch.from_numpy(ref.entropy().sum(-1)), atol=1e-6)
    x = ref.rvs(random_state=0)  # points where the density lives
    assert torch.allclose(truncated_normal_log_prob(torch.from_numpy(x), loc, scale),
                          torch.from_numpy(ref.logpdf(x).sum(-1)), atol=1e-6)
    torch.manual_seed(0)
    loc1, scale1 = torch.full((200_000,), 0.7, dtype=torch.float64), torch.full((200_000,), 0.4, dtype=torch.float64)
    sample = truncated_normal_rsample(loc1, scale1)
    ref1 = truncnorm((-TRUNCATION_BOUND - 0.7) / 0.4, (TRUNCATION_BOUND - 0.7) / 0.4, loc=0.7, scale=0.4)
    assert sample.abs().max() <= TRUNCATION_BOUND
    assert abs(sample.mean().item() - ref1.mean()) < 3e-3 and abs(sample.std().item() - ref1.std()) < 3e-3


def test_truncated_normal_sampler_is_the_official_inverse_cdf_and_its_log_prob_the_density():
    # the erf form of the sampler is the official Φ form: same u, same x; the joint function returns that sample and
    # truncated_normal_log_prob at it, with the same gradients in loc and scale (float64, so rounding stays below 1e-9)
    g = torch.Generator().manual_seed(1)
    loc = ((torch.rand(500, 4, generator=g, dtype=torch.float64) * 2 - 1) * TRUNCATION_BOUND).requires_grad_()
    scale = torch.exp(torch.rand(500, 4, generator=g, dtype=torch.float64) * 7 - 6).requires_grad_()
    cdf = lambda v: 0.5 * (1 + torch.erf(v / math.sqrt(2)))
    torch.manual_seed(2)
    x = truncated_normal_rsample(loc, scale)
    torch.manual_seed(2)
    u = torch.rand_like(loc).clamp(1e-6, 1 - 1e-6)
    low, high = cdf((-TRUNCATION_BOUND - loc) / scale), cdf((TRUNCATION_BOUND - loc) / scale)
    official = loc + scale * math.sqrt(2) * torch.erfinv(2 * (low + u * (high - low)) - 1)
    official = official.clamp(-TRUNCATION_BOUND, TRUNCATION_BOUND)
    assert torch.allclose(x, official, rtol=0, atol=1e-9)
    torch.manual_seed(2)
    x2, log_prob = truncated_normal_rsample_log_prob(loc, scale)
    assert torch.equal(x2, x)
    reference = truncated_normal_log_prob(x, loc, scale)
    assert torch.allclose(log_prob, reference, rtol=0, atol=1e-8)
    grads = torch.autograd.grad(log_prob.sum() + x2.sum(), (loc, scale))
    reference_grads = torch.autograd.grad(reference.sum() + x.sum(), (loc, scale))
    for got, want in zip(grads, reference_grads):
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), dim=st.integers(1, 61), per_dim=st.floats(-6.5, 1.4189),
       saturation=st.sampled_from([0.0, 5.0, 50.0]))
def test_truncated_normal_keeps_the_documented_bound(seed, dim, per_dim, saturation):
    # EXAMPLES x ROWS policies N(tanh μ, σ²) on [-1, 1], σ from gaussian_entropy_floor, means up to |μ| = 50:
    # the exact entropy never falls below truncated_normal_entropy_bound (a tanh-Gaussian's would)
    g = torch.Generator().manual_seed(seed)
    raw_std = torch.randn(ROWS, dim, generator=g, dtype=torch.float64) * 3
    mean = torch.randn(ROWS, dim, generator=g, dtype=torch.float64) + saturation * torch.sign(
        torch.randn(ROWS, dim, generator=g, dtype=torch.float64))
    log_std = gaussian_entropy_floor(raw_std, per_dim * dim)
    loc = torch.tanh(mean).clamp(-TRUNCATION_BOUND, TRUNCATION_BOUND)
    entropy = truncated_normal_entropy(loc, log_std.exp())
    assert (entropy >= truncated_normal_entropy_bound(per_dim * dim, dim) - 1e-9).all()


def test_truncated_normal_bound_value_and_where_it_is_reached():
    assert truncated_normal_entropy_bound(0.25 * 6, 6) / 6 == pytest.approx(-0.6028, abs=1e-4)
    # reached exactly at the largest target (every σ = σ_max) with every location on the boundary
    dim = 4
    loc, scale = torch.full((dim,), TRUNCATION_BOUND, dtype=torch.float64), torch.ones(dim, dtype=torch.float64)
    bound = truncated_normal_entropy_bound(dim * HALF_LOG_2PI_E, dim)
    assert truncated_normal_entropy(loc, scale).item() == pytest.approx(bound, abs=1e-9)
    assert truncated_normal_entropy(loc * 0.9, scale).item() > bound + 1e-3  # any other location keeps more


# ----------------------------------------------------------------------------------- softmax_entropy_floor
@st.composite
def softmax_case(draw):
    n = draw(st.sampled_from([2, 3, 5, 10, 100, 1000]) | st.integers(2, 300))
    low, high = softmax_range(n)
    min_entropy = draw(st.floats(low, high, exclude_min=True))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e3, 1e4]))
    kind = draw(st.sampled_from(["normal", "onehot", "ties"]))
    return n, min_entropy, scale, kind, draw(st.integers(0, 2**31 - 1))


def make_logits(n, scale, kind, seed, rows=ROWS):
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        z = torch.randn(rows, n, generator=g) * scale
    elif kind == "onehot":  # the worst case: all mass on one class
        z = torch.full((rows, n), -scale)
        z[torch.arange(rows), torch.randint(n, (rows,), generator=g)] = scale
    else:  # few distinct values: ties must stay ties
        z = torch.randint(-2, 3, (rows, n), generator=g).float() * scale
    return z.clamp(-1e4, 1e4)


@PROPERTY
@given(case=softmax_case())
def test_softmax_entropy_floor_float32(case):
    n, min_entropy, scale, kind, seed = case
    z = make_logits(n, scale, kind, seed)
    out = softmax_entropy_floor(z, min_entropy)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (entropy_of(out) >= min_entropy - 1e-5).all()


@PROPERTY
@given(case=softmax_case(), dtype=st.sampled_from([torch.bfloat16, torch.float16]))
def test_softmax_entropy_floor_low_precision(case, dtype):
    """bfloat16 / float16 inputs and outputs: the floor holds within 0.01 nats."""
    n, min_entropy, scale, kind, seed = case
    z = make_logits(n, scale, kind, seed).to(dtype)
    out = softmax_entropy_floor(z, min_entropy)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (entropy_of(out) >= min_entropy - 1e-2).all()


@PROPERTY
@given(case=softmax_case())
def test_softmax_keeps_ranking_and_has_finite_grads(case):
    n, min_entropy, scale, kind, seed = case
    z = make_logits(n, scale, kind, seed).requires_grad_()
    out = softmax_entropy_floor(z, min_entropy)
    # sorted by the input logits, the outputs never decrease: no pair is ever reversed
    order = z.detach().argsort(-1)
    ranked = out.detach().gather(-1, order)
    assert (ranked.diff(dim=-1) >= -1e-5).all()
    ties = z.detach().gather(-1, order).diff(dim=-1) == 0
    assert (ranked.diff(dim=-1)[ties].abs() <= 1e-5).all()
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_softmax_top1_unchanged_on_realistic_logits():
    z = torch.randn(4096, 10, generator=torch.Generator().manual_seed(0)) * 4
    out = softmax_entropy_floor(z, 0.6)
    assert torch.equal(out.argmax(-1), z.argmax(-1))
    # top-5 as a set, on rows whose 5th and 6th probabilities float32 can tell apart (≥ 1e-5 apart)
    p = torch.softmax(z.double(), -1).sort(-1, descending=True).values
    clear = (p[:, 4] - p[:, 5]) > 1e-5
    assert clear.float().mean() > 0.9
    assert torch.equal(out.topk(5).indices.sort().values[clear], z.topk(5).indices.sort().values[clear])


def test_softmax_inverse_is_exact_lambert_w():
    scipy_special = pytest.importorskip("scipy.special")
    z = torch.randn(256, 50, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 10
    n, min_entropy = 50, 1.5
    out = softmax_entropy_floor(z, min_entropy)
    c = math.exp(min_entropy - 1)
    y = TAU_A + (c - n * TAU_A) / (n - 1) * (1 - torch.softmax(z, -1))
    expected = torch.from_numpy(scipy_special.lambertw(-y.numpy(), -1).real)
    assert torch.allclose(out, expected, atol=1e-10)


def test_softmax_worst_case_entropy_documented():
    for n, min_entropy, documented in [(10, 0.6, 0.970), (1000, 0.6, 1.115)]:
        onehot = torch.full((1, n), -1e4)
        onehot[0, 0] = 1e4
        assert abs(entropy_of(softmax_entropy_floor(onehot, min_entropy)).item() - documented) < 1e-3


def test_softmax_broadcasts_over_leading_dims():
    z = torch.randn(3, 7, 12, generator=torch.Generator().manual_seed(2)) * 20
    out = softmax_entropy_floor(z, 1.0)
    assert out.shape == z.shape
    assert torch.allclose(out, softmax_entropy_floor(z.reshape(21, 12), 1.0).reshape(3, 7, 12))


def test_softmax_errors_name_the_range():
    with pytest.raises(ValueError, match=r"min_entropy must be in \(-0.0597, 2.2429\] nats for 10 classes"):
        softmax_entropy_floor(torch.zeros(2, 10), 2.3)
    with pytest.raises(ValueError, match="must be in"):
        softmax_entropy_floor(torch.zeros(2, 10), 1 + math.log(TAU_A))
    with pytest.raises(ValueError, match="at least 2 classes"):
        softmax_entropy_floor(torch.zeros(2, 1), 0.5)
    with pytest.raises(ValueError, match="tau must be a finite number > e"):
        softmax_entropy_floor(torch.zeros(2, 10), 0.5, tau=2.0)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match=r"^--min-entropy must be in"):
            check_softmax_floor(bad, 10, flag="--min-entropy")
    check_softmax_floor(2.2429, 10)  # the upper end is admissible


# ---------------------------------------------------------------------------------------- top_entropy_mean
def top_entropy_mean_loop(token_entropy, mask, frac):
    out = []
    for row, valid in zip(token_entropy.tolist(), mask.tolist()):
        values = sorted((e for e, m in zip(row, valid) if m), reverse=True)
        if not values:
            out.append(0.0)
            continue
        count = max(1, math.floor(frac * len(values)))
        out.append(sum(values[:count]) / count)
    return torch.tensor(out, dtype=torch.float64)


@settings(max_examples=max(20, EXAMPLES // 10), deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**31 - 1), length=st.integers(1, 80), frac=st.sampled_from([0.2, 0.1, 0.29, 0.5, 1.0]),
       padding=st.sampled_from(["right", "left", "random"]))
def test_top_entropy_mean_matches_loop(seed, length, frac, padding):
    rows = 640  # 20+ examples x 640 rows > 10 000 cases
    g = torch.Generator().manual_seed(seed)
    entropy = torch.rand(rows, length, generator=g, dtype=torch.float64) * 5
    valid_len = torch.randint(0, length + 1, (rows,), generator=g)
    positions = torch.arange(length)
    if padding == "right":
        mask = positions < valid_len[:, None]
    elif padding == "left":
        mask = positions >= (length - valid_len)[:, None]
    else:
        mask = torch.rand(rows, length, generator=g) < 0.6
    got = top_entropy_mean(entropy, mask, frac)
    assert got.shape == (rows,)
    assert torch.allclose(got, top_entropy_mean_loop(entropy, mask, frac), atol=1e-12)


def test_top_entropy_mean_small_example():
    entropy = torch.tensor([[1.0, 5.0, 3.0, 9.0, 2.0, 0.0, 7.0, 4.0, 6.0, 8.0],
                            [1.0, 2.0, 3.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0]])
    mask = torch.tensor([[1] * 10, [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]])
    # row 0: L = 10 -> top 2 of {9, 8} -> 8.5; row 1: L = 3 -> max(1, floor(0.6)) = 1 -> 3.0 (padding ignored)
    assert top_entropy_mean(entropy, mask).tolist() == [8.5, 3.0]
    with pytest.raises(ValueError, match="frac"):
        top_entropy_mean(entropy, mask, frac=0.0)


# --------------------------------------------------------------------------------------- era_llm_transform
@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), per_token=st.booleans(), scale_adv=st.booleans(),
       k=st.sampled_from([2.0, 1.5, 4.0]))
def test_era_llm_transform_cases(seed, per_token, scale_adv, k):
    g = torch.Generator().manual_seed(seed)
    batch, length, vocab, low, high = ROWS, 5, 7, 0.45, 3.0
    logits = torch.randn(batch, length, vocab, generator=g)
    entropy = torch.rand(batch, generator=g) * 4  # straddles both thresholds
    adv = torch.randn((batch, length) if per_token else (batch,), generator=g)
    adv[torch.rand(adv.shape, generator=g) < 0.1] = 0.0  # A = 0 is "not positive"
    new_logits, new_adv = era_llm_transform(logits, entropy, adv, low, high, k, scale_advantages=scale_adv)
    token_adv = adv if per_token else adv[:, None].expand(batch, length)
    token_h = entropy[:, None].expand(batch, length)
    sharpen = (token_adv > 0) & (token_h < low)
    flatten = (token_adv > 0) & (token_h > high)
    keep = ~(sharpen | flatten)
    assert torch.allclose(new_logits[sharpen], logits[sharpen] * k)
    assert torch.allclose(new_logits[flatten], logits[flatten] / k)
    assert torch.equal(new_logits[keep], logits[keep])
    token_new_adv = new_adv if per_token else new_adv[:, None].expand(batch, length)
    if scale_adv:
        assert torch.allclose(token_new_adv[sharpen], token_adv[sharpen] / k)
        assert torch.allclose(token_new_adv[flatten], token_adv[flatten] * k)
        assert torch.equal(token_new_adv[keep], token_adv[keep])
    else:
        assert torch.equal(new_adv, adv)


def test_era_llm_transform_bfloat16_and_errors():
    logits = torch.randn(2, 3, 4).bfloat16()
    out, adv = era_llm_transform(logits, torch.tensor([0.1, 5.0]), torch.tensor([1.0, 1.0]), 0.45, 3.0, 2.0)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[0], logits[0] * 2) and torch.equal(out[1], logits[1] / 2)
    assert adv.tolist() == [0.5, 2.0]
    with pytest.raises(ValueError, match="omega_low"):
        era_llm_transform(logits, torch.zeros(2), torch.zeros(2), 3.0, 0.45, 2.0)
    with pytest.raises(ValueError, match="k must be > 1"):
        era_llm_transform(logits, torch.zeros(2), torch.zeros(2), 0.45, 3.0, 1.0)
