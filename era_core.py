"""ERA (Entropy Regularizing Activation, arXiv 2510.08549): the entropy-floor math, nothing else.

Pure torch, no state. Every script imports from here; everything algorithm-specific (networks, temperature or
delta tuning, losses) stays inline in the scripts. The `check_*` functions own the admissible ranges: a script
validates an ERA flag with one call, passing the flag's name for the message.

    gaussian_entropy_floor    continuous actions: log-stds whose Gaussian entropy is pinned at a target
    raise_gaussian_entropy    continuous actions: log-stds raised just enough to reach a target (a pure floor)
    check_gaussian_target     the admissible targets of gaussian_entropy_floor, as one ValueError
    truncated_normal_*        the bounded policy of SAC-ERA: N(tanh μ, σ²) truncated to [-1, 1]; sampling (alone
                              or with its log-density), log-density, exact entropy and the entropy it is
                              guaranteed to keep
    softmax_entropy_floor     classification: logits whose softmax entropy is >= a floor
    check_softmax_floor       the admissible floors of softmax_entropy_floor, as one ValueError
    top_entropy_mean          LLMs: mean of the top-20 % token entropies of each response
    era_llm_transform         LLMs: the GRPO logit/advantage rule
"""
import math

import torch

HALF_LOG_2PI_E = 0.5 * math.log(2 * math.pi * math.e)  # entropy of N(0, 1) per dimension, in nats


def gaussian_entropy_floor(raw_std, target_entropy, log_std_min=-8.0, log_std_max=0.0):
    """Continuous ERA: turn a raw std head into log-stds with a fixed total Gaussian entropy.

    Over the last dimension (D = action dimension), with H0' = ``target_entropy``:

        log σ_i = max(log σ_max + (H0' − D·log√(2πe) − D·log σ_max) · softmax(raw_std)_i,  log σ_min)

    Guarantee: the diagonal Gaussian N(μ, σ²) has entropy D·log√(2πe) + Σ_i log σ_i, which is exactly H0'
    when no σ_min clamp binds and larger otherwise (the max only raises terms). The network only chooses how
    the fixed log-std budget is split across dimensions. σ ≤ σ_max always holds.

    Works for a batched state-dependent head ``[..., D]`` and for a state-independent parameter ``[D]``.
    ``target_entropy`` is a float or a tensor broadcastable to ``raw_std.shape[:-1]`` (e.g. H0 + a learned δ;
    the caller keeps a tensor target admissible). Admissible float targets: H0' ≤ D·(log√(2πe) + log σ_max);
    anything above would need σ > σ_max and raises ValueError.
    """
    if log_std_min >= log_std_max:
        raise ValueError(f"log_std_min ({log_std_min}) must be < log_std_max ({log_std_max})")
    dim = raw_std.shape[-1]
    max_entropy = dim * (HALF_LOG_2PI_E + log_std_max)
    if not torch.is_tensor(target_entropy) and target_entropy > max_entropy:
        raise ValueError(
            f"target entropy {target_entropy:.4g} is impossible for D={dim} with log_std_max={log_std_max}: "
            f"it must be <= D*(log sqrt(2*pi*e) + log_std_max) = {max_entropy:.4g} "
            f"(<= {HALF_LOG_2PI_E + log_std_max:.4g} per dimension)"
        )
    if torch.is_tensor(target_entropy):
        target_entropy = target_entropy.unsqueeze(-1)
    budget = target_entropy - max_entropy  # <= 0: the total log-std below D*log σ_max
    log_std = log_std_max + budget * torch.softmax(raw_std, dim=-1)
    return log_std.clamp(min=log_std_min)


def check_gaussian_target(entropy_per_dim, log_std_min=-8.0, log_std_max=0.0, flag="entropy_per_dim"):
    """Raise ValueError (naming ``flag``) unless ``gaussian_entropy_floor`` can reach ``entropy_per_dim`` x D.

    Admissible: log√(2πe) + log σ_min ≤ entropy_per_dim ≤ log√(2πe) + log σ_max, with finite bounds
    log σ_min < log σ_max. Below the range the σ_min clamp binds on every dimension and the entropy stays above
    the target (a target nobody reaches); above it σ would exceed σ_max. NaN and ±inf are rejected.
    """
    if not -math.inf < log_std_min < log_std_max < math.inf:
        raise ValueError(f"{flag}: the log-std bounds must be finite with log_std_min < log_std_max, got "
                         f"[{log_std_min}, {log_std_max}]")
    low, high = HALF_LOG_2PI_E + log_std_min, HALF_LOG_2PI_E + log_std_max
    if not low <= entropy_per_dim <= high:
        raise ValueError(f"{flag} must be in [{low:.4f}, {high:.4f}] nats per action dimension (log sqrt(2 pi e) "
                         f"+ [log_std_min, log_std_max] = [{log_std_min}, {log_std_max}]), got {entropy_per_dim}")


def raise_gaussian_entropy(log_std, target_entropy):
    """Floor-only continuous ERA: raise log-stds just enough that the Gaussian entropy is at least the target.

    Over the last dimension (D), with H(σ) = D·log√(2πe) + Σ_j log σ_j and H0' = ``target_entropy``:

        log σ'_i = log σ_i + max(0, (H0' − H(σ)) / D)

    Guarantee: H(σ') = max(H(σ), H0'); the output equals the input (values and gradients) wherever the input's
    entropy is already ≥ H0', so a policy behaves exactly as without ERA until its entropy would fall below the
    target. While the floor binds, the shift is uniform: the policy still chooses how the budget is split.
    Unlike ``gaussian_entropy_floor`` there is no σ_max, so every finite target is admissible. Works for a
    state-independent ``[D]`` parameter and a batched ``[..., D]`` head; ``target_entropy`` is a float.
    """
    dim = log_std.shape[-1]
    shortfall = target_entropy - dim * HALF_LOG_2PI_E - log_std.sum(-1, keepdim=True)
    return log_std + torch.relu(shortfall) / dim


TRUNCATION_BOUND = 1.0 - 1e-6  # the official SAC-ERA policy lives on [-(1 - 1e-6), 1 - 1e-6]


def _normal_cdf(x):
    return 0.5 * (1 + torch.erf(x * math.sqrt(0.5)))


def _truncated_normal_draw(loc, scale, bound):
    """The inverse-CDF draw of truncated_normal_rsample, written with erf: (x, e, erf(β/√2) − erf(α/√2)), where
    x = loc + √2·σ·e, e = erfinv(erf(α/√2) + u·(erf(β/√2) − erf(α/√2))) and the truncated mass Z is half the width."""
    s = scale * math.sqrt(2)
    erf_low, erf_high = torch.erf((-bound - loc) / s), torch.erf((bound - loc) / s)
    width = erf_high - erf_low
    e = torch.erfinv(erf_low + torch.rand_like(loc).clamp(1e-6, 1 - 1e-6) * width)
    return (loc + s * e).clamp(-bound, bound), e, width


def truncated_normal_rsample(loc, scale, bound=TRUNCATION_BOUND):
    """Reparameterised sample of N(loc, scale²) truncated to [−bound, bound], by the inverse CDF.

    x = loc + scale·Φ⁻¹(Φ(α) + u·(Φ(β) − Φ(α))), u ~ U(1e-6, 1 − 1e-6), α, β = (∓bound − loc)/scale, clipped into
    the interval (the official SAC-ERA sampler; computed as loc + √2·σ·erfinv(erf(α/√2) + u·(erf(β/√2) − erf(α/√2))),
    the same function in 16 tensor ops instead of 24). Differentiable in loc and scale. Needs |loc| ≤ bound, scale > 0.
    """
    return _truncated_normal_draw(loc, scale, bound)[0]


def truncated_normal_rsample_log_prob(loc, scale, bound=TRUNCATION_BOUND):
    """(x, log p(x)): truncated_normal_rsample's sample (the same one, for the same RNG state) and its log-density
    summed over the last dim, Σ_i [ −z_i²/2 − log√(2π) − log σ_i − log Z_i ] with the sampler's own z = √2·e and
    Z = Φ(β) − Φ(α) floored at 1e-6: what truncated_normal_log_prob(x, loc, scale) gives (to rounding; the same
    function of loc and scale, so the same gradients), without computing Φ(α), Φ(β) and z a second time.
    """
    x, e, width = _truncated_normal_draw(loc, scale, bound)
    log_prob = -e * e - torch.log(scale * (0.5 * width).clamp(min=1e-6))
    return x, log_prob.sum(-1) - loc.shape[-1] * 0.5 * math.log(2 * math.pi)


def truncated_normal_log_prob(x, loc, scale, bound=TRUNCATION_BOUND):
    """log-density of N(loc, scale²) truncated to [−bound, bound] at x, summed over the last dim.

    log p(x) = Σ_i [ −½z_i² − log√(2π) − log σ_i − log(Φ(β_i) − Φ(α_i)) ],  z = (x − loc)/σ; the mass is floored
    at 1e-6 as in the official code. Valid for x inside the interval.
    """
    z = (x - loc) / scale
    mass = (_normal_cdf((bound - loc) / scale) - _normal_cdf((-bound - loc) / scale)).clamp(min=1e-6)
    return (-0.5 * z * z - 0.5 * math.log(2 * math.pi) - torch.log(scale) - torch.log(mass)).sum(-1)


def truncated_normal_entropy(loc, scale, bound=TRUNCATION_BOUND):
    """Exact entropy (nats, summed over the last dim) of N(loc, scale²) truncated to [−bound, bound].

    H_i = log√(2πe) + log(σ_i·Z_i) + (α_i·φ(α_i) − β_i·φ(β_i)) / (2·Z_i),  Z = Φ(β) − Φ(α) floored at 1e-6.
    """
    alpha, beta = (-bound - loc) / scale, (bound - loc) / scale
    mass = (_normal_cdf(beta) - _normal_cdf(alpha)).clamp(min=1e-6)
    pdf_term = alpha * torch.exp(-0.5 * alpha * alpha) - beta * torch.exp(-0.5 * beta * beta)
    per_dim = HALF_LOG_2PI_E + torch.log(scale * mass) + pdf_term / (2 * mass * math.sqrt(2 * math.pi))
    return per_dim.sum(-1)


def truncated_normal_entropy_bound(target_entropy, dim, log_std_max=0.0, bound=TRUNCATION_BOUND):
    """The entropy the bounded ERA policy is guaranteed to keep, whatever the mean does.

    Policy: N(tanh μ, σ²) truncated to [−bound, bound], σ from ``gaussian_entropy_floor`` with target H0' and
    σ ≤ σ_max, so Σ_i log σ_i ≥ H0' − D·log√(2πe). With f(σ) = the smallest truncated-normal entropy over all
    locations in the interval (reached with the location on the boundary) and c = f(σ_max) − log σ_max:

        H(policy) ≥ H0' − D·log√(2πe) + D·c

    because f(σ) − log σ does not increase with σ (both facts checked numerically on a grid and property-tested
    in tests/test_era_core.py). For σ_max = 1 and bound 1: c = 0.5661, so a target of 0.25 nats/dim keeps at least
    −0.603 nats/dim, even with a saturated mean (a tanh-Gaussian's entropy has no such floor).
    """
    scale_max = torch.tensor(math.exp(log_std_max), dtype=torch.float64)
    edge = torch.tensor(bound, dtype=torch.float64)
    c = truncated_normal_entropy(edge.reshape(1), scale_max.reshape(1), bound).item() - log_std_max
    return target_entropy - dim * HALF_LOG_2PI_E + dim * c


def softmax_entropy_floor(logits, min_entropy, tau=4.0):
    """Discrete ERA: logits z -> z' whose softmax has entropy >= ``min_entropy`` along the last dim.

    With p = softmax(z), n classes, a = ln τ / τ and C = exp(H0 − 1) (paper §"discrete ERA"):

        y_i  = a + (C − n·a)/(n − 1) · (1 − p_i)            (so Σ_i y_i = C and every y_i ∈ (0, a])
        z'_i = h⁻¹(y_i) = W₋₁(−y_i),   h(z) = −z·e^z on z ≤ −1

    Guarantee: with q_i = e^{z'_i} and S = Σ q_i, Σ_i −z'_i q_i = Σ y_i = C, so the entropy of softmax(z')
    is ln S + C/S ≥ 1 + ln C = H0 for every finite input. y is increasing in p_i, so the class ranking is
    never reversed (top-1/top-5 equal those of z, up to ties the softmax itself cannot resolve).

    Inverse: exact, not the official closed-form approximation (−1 − √(2u) − ¾u). Writing z' = −1 − t and
    u = −1 − ln y, the lower Lambert-W branch solves t − ln(1 + t) = u, t ≥ 0; Newton's method from
    t₀ = u + √(2u), which always lies right of the root of this convex increasing function, converges
    monotonically; 4 steps already reach float64 precision for u in [1e-3, 1e3], we take 6. Gradients come from one
    final Newton step on the converged t (implicit differentiation, dt/du = (1 + t)/t), not by unrolling.
    The computation runs in float32 (float64 for float64 input) and the result is cast back to the input
    dtype. Rounding bfloat16/float16 outputs could cost the floor a little; the tests allow 0.01 nats for them
    (the worst case measured was still 0.058 nats above the floor).

    The bound is loose: at worst (one-hot input) the entropy reached is 0.970 for n=10, H0=0.6 and 1.115
    for n=1000, H0=0.6 (softmax_entropy_floor of a one-hot, computed here).

    Admissible range (needs every y_i ≤ a, i.e. a < C ≤ n·a): 1 + ln a < H0 ≤ 1 + ln(n·a); for τ=4 that
    is (−0.0596, ln n − 0.0596]. At the excluded lower end y_i can be 0 (z' = −∞) and the floor is vacuous
    anyway. τ must exceed e so that z' = −ln τ lies on the invertible branch.
    """
    n = logits.shape[-1]
    check_softmax_floor(min_entropy, n, tau)
    a = math.log(tau) / tau
    c = math.exp(min_entropy - 1)
    work_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    p = torch.softmax(logits.to(work_dtype), dim=-1)
    y = (c - a) / (n - 1) + (n * a - c) / (n - 1) * p  # = a + (C − n·a)/(n − 1)·(1 − p), exact for tiny p
    # Near the lower end, y can underflow to 0 (z' = -inf); flooring y only raises Σy, so the bound holds.
    u = -1 - torch.log(y.clamp(min=torch.finfo(work_dtype).tiny))
    with torch.no_grad():
        t = u + torch.sqrt(2 * u)
        for _ in range(6):
            t = t - (t - torch.log1p(t) - u) * (1 + t) / t
    t = t + (u - (t - torch.log1p(t))) * ((1 + t) / t)  # value unchanged at the root; carries d t / d u
    return (-1 - t).to(logits.dtype)


def check_softmax_floor(min_entropy, num_classes, tau=4.0, flag="min_entropy"):
    """Raise ValueError (naming ``flag``) unless ``softmax_entropy_floor`` admits ``min_entropy``.

    Admissible: 1 + ln(ln τ/τ) < H0 ≤ 1 + ln(n·ln τ/τ) for n ≥ 2 classes and τ > e; for τ = 4 that is
    (−0.0596, ln n − 0.0596]. NaN and ±inf are rejected.
    """
    if num_classes < 2:
        raise ValueError(f"{flag}: softmax_entropy_floor needs at least 2 classes, got {num_classes}")
    if not math.e < tau < math.inf:
        raise ValueError(f"{flag}: tau must be a finite number > e = {math.e:.5f}, got {tau}")
    a = math.log(tau) / tau
    low, high = 1 + math.log(a), 1 + math.log(num_classes * a)
    if not low < min_entropy <= high:
        raise ValueError(f"{flag} must be in ({low:.4f}, {high:.4f}] nats for {num_classes} classes with tau={tau} "
                         f"(1 + ln(ln(tau)/tau), 1 + ln(n*ln(tau)/tau)]), got {min_entropy}")


def top_entropy_mean(token_entropy, mask, frac=0.2):
    """Per sequence, the mean entropy of its max(1, floor(frac·L)) highest-entropy valid tokens.

    ``token_entropy``: [B, T]; ``mask``: [B, T], true (or 1) on valid (response) tokens; L = valid count per
    row. Returns [B]. A row with no valid token gives 0. Vectorised: one sort along T, a cumulative sum and
    a gather (no Python loop over rows, no host sync). floor(frac·L) is taken in float64, as Python would.
    """
    if not 0 < frac <= 1:
        raise ValueError(f"frac must be in (0, 1], got {frac}")
    mask = mask.bool()
    length = mask.sum(-1)
    count = torch.clamp((length.double() * frac).floor().long(), min=1)
    ranked = token_entropy.masked_fill(~mask, float("-inf")).sort(dim=-1, descending=True).values
    is_valid = torch.arange(ranked.shape[-1], device=ranked.device) < length.unsqueeze(-1)
    running = ranked.masked_fill(~is_valid, 0).cumsum(-1)
    total = running.gather(-1, (count - 1).unsqueeze(-1)).squeeze(-1)  # count <= L whenever L >= 1
    return torch.where(length > 0, total / count, torch.zeros_like(total))


def era_llm_transform(logits, response_entropy, advantages, omega_low, omega_high, k,
                      scale_advantages=True):
    """LLM ERA for GRPO: rescale the training logits of responses whose entropy left [ω_low, ω_high].

    With H the response entropy (``top_entropy_mean`` of the unmodified logits) and A the advantage:

        z' = k·z,  A' = A/k    if H < ω_low  and A > 0   (sharpen: a low-entropy winner is made sharper in
                                                         the trained policy, so its update sharpens less)
        z' = z/k,  A' = k·A    if H > ω_high and A > 0   (flatten)
        z' = z,    A' = A      otherwise (A ≤ 0, or H inside the band)

    ``logits``: [B, T, V] (or [B, V]); ``response_entropy``: [B]; ``advantages``: [B] (one per response) or
    [B, T] (per token, then the A > 0 test is per token). Advantages are rescaled only when
    ``scale_advantages``. Returns (logits', advantages'). Requires ω_low < ω_high and k > 1.
    """
    if not omega_low < omega_high:
        raise ValueError(f"omega_low ({omega_low}) must be < omega_high ({omega_high})")
    if not k > 1:
        raise ValueError(f"k must be > 1, got {k}")
    entropy = response_entropy
    if advantages.dim() == entropy.dim() + 1:
        entropy = entropy.unsqueeze(-1)
    positive = advantages > 0
    factor = torch.where(positive & (entropy < omega_low), k, 1.0)
    factor = torch.where(positive & (entropy > omega_high), 1.0 / k, factor).to(logits.dtype)
    logits = logits * factor.reshape(factor.shape + (1,) * (logits.dim() - factor.dim()))
    if scale_advantages:
        advantages = advantages / factor.to(advantages.dtype)
    return logits, advantages
