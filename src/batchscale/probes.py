"""Probes of one trained model: sharpness, gradient statistics and loss-landscape slices.

Every probe measures ONE model -- a single member's parameters `{name: tensor}` with no member
dimension, the weightless `base` module (any device, `meta` included) and its buffers -- on a
fixed data subset `(x, y)`; callers loop over ensemble members and runs (see `member_params`).
The loss is always the mean cross-entropy of `functional_call(base, (params, buffers), (x,))`,
exactly what `engine.Ensemble` trains. All functions are pure: they never modify their inputs.
Randomness comes only from a CPU `torch.Generator` (or an int seed; None means seed 0), so a
probe gives the same answer every time it is called with the same arguments.

What each probe serves (the claims are listed in docs/claims.md):
- C5 (sharp vs flat minima): `top_hessian_eigenvalue`, `epsilon_sharpness` (Keskar et al. 2017).
- C10 (gradients compete inside a batch): `gradient_competition`.
- McCandlish et al. 2018's critical batch size: `gradient_noise_scale`, `noise_scale_parts`.
- C12 (loss-landscape pictures): `interpolate` (Keskar), `filter_normalized_direction`,
  `slice_1d`, `slice_2d` (Li et al. 2018).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from batchscale.strategies import example_gradients

Params = dict[str, torch.Tensor]
LossFn = Callable[[Params], torch.Tensor]
HvpFn = Callable[[Params], Params]
GeneratorLike = torch.Generator | int | None

DEFAULT_SEED = 0
# Keskar's sharpness search starts this far (as a fraction of the box) from the weights:
# at a minimum the gradient is ~0, so a sign-gradient ascent started exactly there could not move.
SHARPNESS_START_FRACTION = 0.1


# --- small helpers on parameter dicts ---------------------------------------------------------


def member_params(stacked: Params, index: int) -> Params:
    """Member `index` of an ensemble's stacked dict `{name: (members, ...)}` (views, not copies)."""
    return {name: tensor[index] for name, tensor in stacked.items()}


def _as_generator(generator: GeneratorLike) -> torch.Generator:
    """A CPU generator: the one given, a fresh one seeded with an int, or seed 0 for None."""
    if isinstance(generator, torch.Generator):
        return generator
    return torch.Generator().manual_seed(DEFAULT_SEED if generator is None else int(generator))


def _randn_like(params: Params, generator: torch.Generator) -> Params:
    # Drawn on the CPU in float32 and in the dict's order, then moved: the same seed gives the
    # same numbers on every device and for every run of the same architecture.
    return {
        name: torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.device, p.dtype)
        for name, p in params.items()
    }


def _axpy(alpha: float, x: Params, y: Params) -> Params:
    """y + alpha * x, a new dict."""
    return {name: y[name] + alpha * x[name] for name in y}


def _one_member(tensors: Params) -> Params:
    """A single model's tensors as an ensemble of one: `{name: (1, ...)}` (views)."""
    return {name: t.unsqueeze(0) for name, t in tensors.items()}


def _flatten_per_example(grads: Params) -> torch.Tensor:
    """`{name: (B, ...)}` -> one (B, P) matrix, P the total number of parameters."""
    return torch.cat([g.flatten(1) for g in grads.values()], dim=1)


# --- the loss -----------------------------------------------------------------------------------


def _loss_fn(base: nn.Module, buffers: Params, x: torch.Tensor, y: torch.Tensor) -> LossFn:
    """params -> mean cross-entropy of the model on (x, y); differentiable by autograd (twice)."""

    def loss(params: Params) -> torch.Tensor:
        return F.cross_entropy(functional_call(base, (params, buffers), (x,)), y)

    return loss


def loss_at(base: nn.Module, params: Params, buffers: Params, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy of the model with `params` on (x, y)."""
    with torch.no_grad():
        return float(_loss_fn(base, buffers, x, y)(params))


# --- curvature (C5) -----------------------------------------------------------------------------


def _leaves(params: Params) -> Params:
    """Detached copies of `params` that autograd differentiates with respect to."""
    return {name: p.detach().requires_grad_() for name, p in params.items()}


def _grad_and_value(loss: LossFn, params: Params) -> tuple[Params, torch.Tensor]:
    """The gradient of `loss` at `params` and the loss there, by plain autograd (torch.func's
    `grad_and_value` gives the same numbers, but its first call imports torch._dynamo: about
    2 s in every probe job; docs/decisions.md)."""
    leaves = _leaves(params)
    with torch.enable_grad():
        value = loss(leaves)
        grads = torch.autograd.grad(value, list(leaves.values()))
    return dict(zip(leaves, grads, strict=True)), value.detach()


def _hvp_fn(loss: LossFn, params: Params) -> HvpFn:
    """v -> H v, H the Hessian of `loss` at `params`, by reverse-over-reverse differentiation.

    The gradient's graph is built once and every product differentiates it again, so a
    Lanczos run pays one forward and backward pass in all instead of one per product (1.5x
    faster than `jvp(grad(loss))` on the default CNN; equal to float rounding).
    """
    leaves = _leaves(params)
    with torch.enable_grad():
        gradient = torch.autograd.grad(loss(leaves), list(leaves.values()), create_graph=True)

    def hvp_at(vector: Params) -> Params:
        products = torch.autograd.grad(
            gradient, list(leaves.values()), [vector[name] for name in leaves], retain_graph=True
        )
        return {name: product.detach() for name, product in zip(leaves, products, strict=True)}

    return hvp_at


def hvp(
    base: nn.Module, params: Params, buffers: Params, x: torch.Tensor, y: torch.Tensor, vector: Params
) -> Params:
    """Hessian of the mean loss on (x, y) w.r.t. `params`, times `vector` (a dict like params).

    Exact up to floating point (no finite differences): the gradient of (gradient . vector).
    """
    return _hvp_fn(_loss_fn(base, buffers, x, y), params)(vector)


@dataclass(frozen=True)
class EigenResult:
    """An eigenvalue estimate from the Lanczos iteration.

    value: the Ritz value of largest magnitude after the last step.
    iterations: Hessian-vector products computed.
    converged: whether its residual |H u - value u| (u the unit Ritz vector) had fallen to
        tol * |value|: some eigenvalue of H then lies within tol * |value| of `value`.
    """

    value: float
    iterations: int
    converged: bool


def _flatten(params: Params) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in params.values()])


def _unflatten(vector: torch.Tensor, like: Params) -> Params:
    sizes = [t.numel() for t in like.values()]
    return {name: part.view_as(t) for (name, t), part in zip(like.items(), vector.split(sizes), strict=True)}


def _lanczos(
    hvp_fn: HvpFn, like: Params, *, iters: int = 100, tol: float = 1e-4, generator: GeneratorLike = None
) -> EigenResult:
    """Eigenvalue of largest MAGNITUDE of the symmetric operator `hvp_fn`, by Lanczos.

    `like` gives the shapes, dtypes and devices of the vectors. Step k adds H q_k to a Krylov
    basis (fully reorthogonalised: one vector of the model's size per step taken, so memory
    grows with the steps to convergence) and takes the
    extreme eigenvalue of the small tridiagonal matrix it builds. It stops when that Ritz
    value's residual bound beta_k |s_k| is at most tol * |value| (converged) or after `iters`
    products. For a positive top eigenvalue its estimate is never below power iteration's after
    as many products from the same start (whose iterate lies in the same Krylov space); how
    many products it takes on the study's CNNs, against power iteration, is in
    docs/decisions.md ("The top Hessian eigenvalue by Lanczos").

    Hand-written rather than scipy's ARPACK (`eigsh`): ARPACK counts restarts, not products,
    so it cannot keep to the `probes.hessian_iters` budget, and works on NumPy float64 arrays
    on the CPU only. A negative eigenvalue larger in magnitude than every positive one is what
    it returns.
    """
    if iters < 1:
        raise ValueError(f"iters must be at least 1, got {iters}")
    q = _flatten(_randn_like(like, _as_generator(generator)))
    q = q / q.norm()
    basis: list[torch.Tensor] = []
    alphas: list[float] = []
    betas: list[float] = []
    value = 0.0
    for k in range(1, iters + 1):
        basis.append(q)
        w = _flatten(hvp_fn(_unflatten(q, like)))
        alphas.append(float(w @ q))
        if not math.isfinite(alphas[-1]):
            # Weights of a diverged member (inf or NaN): there is no eigenvalue to find.
            return EigenResult(math.nan, k, False)
        # Full reorthogonalisation, twice ("twice is enough"): in float32 the basis would
        # otherwise lose orthogonality and produce spurious copies of the top eigenvalue.
        stacked = torch.stack(basis)
        for _ in range(2):
            w = w - stacked.T @ (stacked @ w)
        beta = float(w.norm())
        if not math.isfinite(beta):
            return EigenResult(math.nan, k, False)
        tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
        ritz_values, ritz_vectors = torch.linalg.eigh(tridiagonal)
        top = int(ritz_values.abs().argmax())
        value = float(ritz_values[top])
        residual = beta * abs(float(ritz_vectors[-1, top]))
        # beta == 0: the Krylov space is invariant under H (e.g. H = 0), so value is exact.
        if residual <= tol * abs(value) or beta == 0.0:
            return EigenResult(value, k, True)
        betas.append(beta)
        q = w / beta
    return EigenResult(value, iters, False)


def top_hessian_eigenvalue(
    base: nn.Module,
    params: Params,
    buffers: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    iters: int = 100,
    tol: float = 1e-4,
    generator: GeneratorLike = None,
) -> EigenResult:
    """Hessian eigenvalue of largest magnitude of the mean loss on (x, y), by Lanczos on
    Hessian-vector products (`_lanczos`).

    At a (near-)minimum the Hessian is (nearly) positive semi-definite and this is the top
    eigenvalue, the usual sharpness measure; elsewhere a large negative eigenvalue may win, and
    `value` then comes out negative. Convergence: residual |H u - lambda u| <= tol * |lambda|;
    check `converged` before using `value`. Deterministic given `generator` (start vector).
    """
    hvp_fn = _hvp_fn(_loss_fn(base, buffers, x, y), params)
    return _lanczos(hvp_fn, params, iters=iters, tol=tol, generator=generator)


def _box_ascent(
    loss: LossFn, params: Params, box: Params, steps: int, generator: torch.Generator
) -> tuple[float, Params]:
    """Largest loss found in {params + delta : |delta_i| <= box_i}, and the delta giving it.

    `steps` projected sign-gradient ascent steps of size 2 * box / steps from a small random
    delta, so that a coordinate whose gradient keeps its sign reaches the face of the box within
    half the steps (the maximum of a convex function over a box lies at a vertex). Every iterate
    counts, and so does delta = 0: the result is never below loss(params).
    """

    def shifted(d: Params) -> torch.Tensor:
        return loss({name: params[name] + d[name] for name in params})

    with torch.no_grad():
        best, best_delta = float(loss(params)), {name: torch.zeros_like(p) for name, p in params.items()}
    # The start: a random vertex of the box shrunk to SHARPNESS_START_FRACTION of its size.
    signs = _randn_like(params, generator)
    delta = {name: SHARPNESS_START_FRACTION * box[name] * signs[name].sign() for name in params}
    step = {name: 2.0 * b / steps for name, b in box.items()}
    for _ in range(steps):
        g, value = _grad_and_value(shifted, delta)
        if float(value) > best:
            best, best_delta = float(value), delta
        delta = {
            name: torch.clamp(d + step[name] * g[name].sign(), -box[name], box[name])
            for name, d in delta.items()
        }
    with torch.no_grad():
        value = float(shifted(delta))
    if value > best:
        best, best_delta = value, delta
    return best, best_delta


def epsilon_sharpness(
    base: nn.Module,
    params: Params,
    buffers: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epsilon: float = 1e-3,
    steps: int = 10,
    generator: GeneratorLike = None,
) -> float:
    """Keskar et al. 2017's sharpness, in percent, over the full parameter space.

    100 * (max_{delta in C} L(w + delta) - L(w)) / (1 + L(w)), with the box
    C = {delta : |delta_i| <= epsilon * (|w_i| + 1)}. The maximum is searched by `steps` projected
    sign-gradient ascent steps (Keskar used L-BFGS-B), so the value is a lower bound on the true
    maximum; it is >= 0 by construction. Deterministic given `generator` (the start point).
    """
    loss = _loss_fn(base, buffers, x, y)
    with torch.no_grad():
        base_loss = float(loss(params))
    box = {name: epsilon * (p.detach().abs() + 1.0) for name, p in params.items()}
    best, _ = _box_ascent(loss, params, box, steps, _as_generator(generator))
    return 100.0 * (best - base_loss) / (1.0 + base_loss)


# --- gradient statistics (C10, McCandlish et al.) -----------------------------------------------


def per_example_gradients(
    base: nn.Module, params: Params, buffers: Params, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Gradients of each example's own loss w.r.t. all parameters: a (B, P) matrix.

    Row i is the flattened gradient of cross-entropy(model(x[i]), y[i]), parameters in the
    dict's order. Memory is B * P numbers: pass one batch, not a whole data set.
    """
    # As a one-member ensemble (strategies.example_gradients: one packed pass, no torch.func).
    grads = example_gradients(base, _one_member(params), _one_member(buffers), x.unsqueeze(0), y.unsqueeze(0))
    return _flatten_per_example({name: g[0] for name, g in grads.items()})


def competition_ratio(per_example: torch.Tensor) -> float:
    """|mean of the rows| / mean of the rows' norms, for a (B, P) matrix of gradients.

    1 when all rows are identical, 1/sqrt(B) for B orthogonal rows of equal norm, 0 when they
    cancel exactly; never above 1 (triangle inequality). Computed in float64.
    """
    g = per_example.double()
    return float(g.mean(0).norm() / g.norm(dim=1).mean())


def gradient_competition(
    base: nn.Module, params: Params, buffers: Params, x: torch.Tensor, y: torch.Tensor
) -> float:
    """How much the per-example gradients of the batch (x, y) cancel: `competition_ratio`.

    The norm of the batch gradient over the mean per-example gradient norm (all parameters
    flattened): 1 if every example pulls the same way, 1/sqrt(B) for orthogonal gradients of
    equal norm, smaller still when they oppose each other.
    """
    return competition_ratio(per_example_gradients(base, params, buffers, x, y))


@dataclass(frozen=True)
class NoiseScale:
    """McCandlish et al.'s simple noise scale from one batch, with its two ingredients.

    trace_sigma: unbiased estimate of tr(Sigma), Sigma the per-example gradient covariance.
    grad_sq: unbiased estimate of |G|^2, G the true (expected) gradient.
    b_simple: trace_sigma / grad_sq; NaN when grad_sq <= 0 (noise hides the gradient).
    """

    trace_sigma: float
    grad_sq: float
    b_simple: float


def noise_scale_parts(per_example: torch.Tensor) -> NoiseScale:
    """B_simple = tr(Sigma) / |G|^2 from a (B, P) matrix of per-example gradients (B >= 2).

    tr(Sigma) is estimated by the sum over coordinates of the sample variances (divisor B - 1),
    unbiased for examples drawn independently. The squared norm of the batch mean has
    expectation |G|^2 + tr(Sigma)/B, so |G|^2 is estimated by |mean g|^2 - tr(Sigma)/B, also
    unbiased. The ratio of the two is not: to pool several batches, average `trace_sigma` and
    `grad_sq` over batches and divide the averages (as McCandlish et al. do). Float64.
    """
    batch = per_example.shape[0]
    if batch < 2:
        raise ValueError(f"noise scale needs at least 2 examples, got {batch}")
    g = per_example.double()
    trace_sigma = float(g.var(dim=0, unbiased=True).sum())
    grad_sq = float(g.mean(0).pow(2).sum()) - trace_sigma / batch
    b_simple = trace_sigma / grad_sq if grad_sq > 0 else math.nan
    return NoiseScale(trace_sigma, grad_sq, b_simple)


def gradient_noise_scale(
    base: nn.Module, params: Params, buffers: Params, x: torch.Tensor, y: torch.Tensor
) -> float:
    """McCandlish et al. 2018's simple noise scale B_simple from the batch (x, y).

    See `noise_scale_parts` for the estimators; NaN when the |G|^2 estimate is not positive.
    """
    return noise_scale_parts(per_example_gradients(base, params, buffers, x, y)).b_simple


# --- loss-landscape pictures (C12) ------------------------------------------------------------


def _losses_along(loss: LossFn, points: Iterable[Params]) -> list[float]:
    with torch.no_grad():
        return [float(loss(p)) for p in points]


def interpolate(
    base: nn.Module,
    params_a: Params,
    params_b: Params,
    buffers: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    alphas: Iterable[float],
) -> list[float]:
    """Loss at (1 - alpha) * a + alpha * b for each alpha (Keskar et al.'s 1-D plot).

    alpha = 0 gives a, alpha = 1 gives b; values outside [0, 1] extrapolate past them.
    """
    points = (
        {name: (1.0 - float(a)) * params_a[name] + float(a) * params_b[name] for name in params_a}
        for a in alphas
    )
    return _losses_along(_loss_fn(base, buffers, x, y), points)


def filter_normalized_direction(params: Params, generator: GeneratorLike) -> Params:
    """Li et al. 2018's filter-normalised Gaussian direction around `params`.

    For every tensor with 2 or more dimensions, each filter (the slice along dim 0: one output
    unit of a Linear layer, one output channel of a convolution) of a Gaussian draw is rescaled
    to the norm of the same filter of `params`. Biases and other 1-D tensors get zero (the
    paper's "ignore biases" option). The Gaussian numbers depend only on the seed and on the
    architecture (names, shapes, order), so one seed gives comparable directions for every run.
    Pass an int seed (or a fresh generator) for that: a generator object is advanced by the draw.
    """
    gaussian = _randn_like(params, _as_generator(generator))
    direction = {}
    for name, p in params.items():
        d = gaussian[name]
        if p.dim() <= 1:
            direction[name] = torch.zeros_like(p)
            continue
        view = (-1, *([1] * (p.dim() - 1)))
        p_norms = p.detach().flatten(1).norm(dim=1).view(view)
        d_norms = d.flatten(1).norm(dim=1).view(view)
        direction[name] = d * (p_norms / d_norms)
    return direction


def slice_1d(
    base: nn.Module,
    params: Params,
    buffers: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    direction: Params,
    alphas: Iterable[float],
) -> list[float]:
    """Loss at params + alpha * direction for each alpha (Li et al.'s 1-D plot)."""
    points = (_axpy(float(a), direction, params) for a in alphas)
    return _losses_along(_loss_fn(base, buffers, x, y), points)


def slice_2d(
    base: nn.Module,
    params: Params,
    buffers: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    d1: Params,
    d2: Params,
    alphas: Iterable[float],
    betas: Iterable[float],
) -> np.ndarray:
    """Loss at params + alpha * d1 + beta * d2: a (len(alphas), len(betas)) float64 array.

    Entry [i, j] is for alphas[i], betas[j] (rows follow d1, columns d2).
    """
    alphas, betas = [float(a) for a in alphas], [float(b) for b in betas]
    loss = _loss_fn(base, buffers, x, y)
    grid = np.empty((len(alphas), len(betas)), dtype=np.float64)
    for i, a in enumerate(alphas):
        row = _axpy(a, d1, params)
        grid[i] = _losses_along(loss, (_axpy(b, d2, row) for b in betas))
    return grid
