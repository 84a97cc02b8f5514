"""The probes against known answers: quadratics, dense Hessians, constructed gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from batchscale.models import build_model
from batchscale.probes import (
    EigenResult,
    _box_ascent,
    _lanczos,
    competition_ratio,
    epsilon_sharpness,
    filter_normalized_direction,
    gradient_competition,
    gradient_noise_scale,
    hvp,
    interpolate,
    loss_at,
    member_params,
    noise_scale_parts,
    per_example_gradients,
    slice_1d,
    slice_2d,
    top_hessian_eigenvalue,
)

from conftest import random_arrays

# torch's first forward-mode derivative scripts its jvp decompositions with the deprecated
# torch.jit.script: a warning from inside torch, not from the probes.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

MODELS = [{"name": "mlp", "hidden": [5]}, {"name": "cnn1d", "channels": 2}]
FEATURES, CLASSES = 12, 3


def tiny_model(model_params: dict, seed: int = 0, dtype: torch.dtype = torch.float32):
    """(meta base, params, buffers) for one freshly initialised model, as the engine holds it."""
    torch.manual_seed(seed)
    module = build_model(model_params, FEATURES, CLASSES)
    params = {k: v.detach().to(dtype) for k, v in module.named_parameters()}
    buffers = {k: v.detach() for k, v in module.named_buffers()}
    return module.to("meta"), params, buffers


def tiny_data(n: int = 16, dtype: torch.dtype = torch.float32, seed: int = 0):
    arrays = random_arrays(n_train=n, features=FEATURES, classes=CLASSES, seed=seed)
    return torch.from_numpy(arrays["x_train"]).to(dtype), torch.from_numpy(arrays["y_train"])


def quadratic_hvp(eigenvalues: list[float], seed: int = 0):
    """H v for H = Q diag(eigenvalues) Q^T with a random orthogonal Q (float64)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(
        torch.randn(len(eigenvalues), len(eigenvalues), generator=gen, dtype=torch.float64)
    )
    matrix = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    like = {"w": torch.zeros(len(eigenvalues), dtype=torch.float64)}
    return (lambda v: {"w": matrix @ v["w"]}), like


def flat(params: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.flatten() for p in params.values()])


# --- loss and curvature -------------------------------------------------------------------------


def test_loss_at_is_the_modules_mean_cross_entropy():
    torch.manual_seed(0)
    module = build_model(MODELS[0], FEATURES, CLASSES)
    x, y = tiny_data()
    params = {k: v.detach() for k, v in module.named_parameters()}
    expected = F.cross_entropy(module(x), y).item()
    assert loss_at(module.to("meta"), params, {}, x, y) == pytest.approx(expected, rel=1e-6)


def test_lanczos_finds_the_top_eigenvalue_of_a_quadratic():
    hvp_fn, like = quadratic_hvp([5.0, 2.0, 1.0, 0.5, 0.25, 0.1])
    result = _lanczos(hvp_fn, like, iters=100, tol=1e-8, generator=1)
    assert result.converged and result.iterations <= 6  # exact once the basis spans the space
    assert result.value == pytest.approx(5.0, rel=1e-10)


def test_lanczos_returns_the_largest_magnitude_even_when_negative():
    hvp_fn, like = quadratic_hvp([-6.0, 5.0, 1.0, 0.5])
    result = _lanczos(hvp_fn, like, iters=500, tol=1e-10)
    assert result.converged
    assert result.value == pytest.approx(-6.0, rel=1e-10)


def test_lanczos_converges_where_power_iteration_would_crawl():
    # A gap of 0.2%: power iteration needs thousands of products to separate 5.0 from 4.99.
    hvp_fn, like = quadratic_hvp(list(torch.linspace(0.0, 4.99, 200).tolist()) + [5.0])
    result = _lanczos(hvp_fn, like, iters=200, tol=1e-6, generator=3)
    assert result.converged and result.iterations < 100
    assert result.value == pytest.approx(5.0, rel=1e-6)


def test_lanczos_reports_when_it_runs_out_of_iterations():
    hvp_fn, like = quadratic_hvp([5.0, 4.99, 3.0, 2.0, 1.0])
    result = _lanczos(hvp_fn, like, iters=2, tol=1e-12)
    assert result == EigenResult(result.value, 2, False)
    assert result.value < 5.0  # a Ritz value never exceeds the top eigenvalue


def test_lanczos_is_deterministic_given_the_seed():
    hvp_fn, like = quadratic_hvp([3.0, 2.9, 1.0, 0.5])
    first = _lanczos(hvp_fn, like, iters=2, generator=7)
    assert first == _lanczos(hvp_fn, like, iters=2, generator=torch.Generator().manual_seed(7))
    assert first != _lanczos(hvp_fn, like, iters=2, generator=8)


def test_lanczos_of_the_zero_operator_is_zero():
    like = {"w": torch.zeros(3)}
    result = _lanczos(lambda v: {"w": 0 * v["w"]}, like)
    assert result == EigenResult(0.0, 1, True)


def test_lanczos_of_a_diverged_member_is_nan_and_not_converged():
    like = {"w": torch.zeros(3)}
    for bad in (math.nan, math.inf):
        result = _lanczos(lambda v, bad=bad: {"w": v["w"] * bad}, like)
        assert math.isnan(result.value) and result.iterations == 1 and not result.converged


def test_lanczos_works_on_a_dict_of_several_tensors():
    hvp_fn, like = quadratic_hvp([4.0, 3.0, 1.0, 0.5, 0.2, 0.1])

    def split_hvp(v):  # the same operator, its vector split in two named parts of other shapes
        return {"a": (out := hvp_fn({"w": torch.cat([v["a"].flatten(), v["b"]])})["w"])[:4].view(2, 2),
                "b": out[4:]}  # fmt: skip

    like = {"a": torch.zeros(2, 2, dtype=torch.float64), "b": torch.zeros(2, dtype=torch.float64)}
    result = _lanczos(split_hvp, like, iters=50, tol=1e-10)
    assert result.converged and result.value == pytest.approx(4.0, rel=1e-10)


@pytest.mark.parametrize("model_params", MODELS, ids=lambda m: m["name"])
def test_hvp_matches_torch_autograd(model_params):
    base, params, buffers = tiny_model(model_params, dtype=torch.float64)
    x, y = tiny_data(dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    vector = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in params.items()}
    names = list(params)

    def loss(*tensors):
        return F.cross_entropy(functional_call(base, dict(zip(names, tensors, strict=True)), (x,)), y)

    _, expected = torch.autograd.functional.hvp(loss, tuple(params.values()), tuple(vector.values()))
    got = hvp(base, params, buffers, x, y, vector)
    for name, want in zip(names, expected, strict=True):
        torch.testing.assert_close(got[name], want, rtol=1e-9, atol=1e-12)


def test_top_hessian_eigenvalue_matches_the_dense_hessian():
    base, params, buffers = tiny_model(MODELS[0], dtype=torch.float64)
    x, y = tiny_data(dtype=torch.float64)
    names, shapes = list(params), [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]

    def loss_of_flat(w):
        parts = {n: t.view(s) for n, t, s in zip(names, w.split(sizes), shapes, strict=True)}
        return F.cross_entropy(functional_call(base, parts, (x,)), y)

    eigenvalues = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of_flat, flat(params)))
    expected = eigenvalues[eigenvalues.abs().argmax()].item()
    result = top_hessian_eigenvalue(base, params, buffers, x, y, iters=2000, tol=1e-12)
    assert result.converged
    assert result.value == pytest.approx(expected, rel=1e-6)


# --- Keskar's epsilon-sharpness -----------------------------------------------------------------


def test_box_ascent_reaches_the_vertex_maximum_of_a_convex_quadratic():
    # 0.5 * sum a_i d_i^2 with a_i > 0 peaks at every vertex of the box: 0.5 * sum a_i box_i^2.
    a = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
    params = {"w": torch.zeros(3, dtype=torch.float64)}
    box = {"w": torch.tensor([0.2, 0.1, 0.4], dtype=torch.float64)}
    best, delta = _box_ascent(
        lambda p: 0.5 * (a * p["w"] ** 2).sum(), params, box, steps=10, generator=torch.Generator()
    )
    assert best == pytest.approx(0.5 * (a * box["w"] ** 2).sum().item(), rel=1e-12)
    assert torch.equal(delta["w"].abs(), box["w"])


def test_box_ascent_stays_inside_the_box_and_reports_the_loss_it_found():
    base, params, buffers = tiny_model(MODELS[1])
    x, y = tiny_data()

    def loss(p):
        return F.cross_entropy(functional_call(base, (p, buffers), (x,)), y)

    box = {k: 0.05 * (v.abs() + 1) for k, v in params.items()}
    best, delta = _box_ascent(loss, params, box, steps=5, generator=torch.Generator().manual_seed(0))
    for name in params:
        assert bool((delta[name].abs() <= box[name]).all())
    shifted = {k: params[k] + delta[k] for k in params}
    assert loss_at(base, shifted, buffers, x, y) == pytest.approx(best, rel=1e-6)
    assert best > loss_at(base, params, buffers, x, y)


@pytest.mark.parametrize("model_params", MODELS, ids=lambda m: m["name"])
def test_epsilon_sharpness_is_nonnegative_grows_with_epsilon_and_vanishes_at_zero(model_params):
    base, params, buffers = tiny_model(model_params)
    x, y = tiny_data()
    values = [epsilon_sharpness(base, params, buffers, x, y, epsilon=e) for e in (1e-3, 1e-2, 1e-1)]
    assert values[0] > 0
    assert values == sorted(values) and values[0] < values[1] < values[2]
    assert abs(epsilon_sharpness(base, params, buffers, x, y, epsilon=1e-9)) < 1e-4
    again = epsilon_sharpness(base, params, buffers, x, y, epsilon=1e-2)
    assert again == values[1]  # same default seed, same answer


# --- gradient statistics ------------------------------------------------------------------------


def test_per_example_gradients_match_one_backward_pass_per_example():
    torch.manual_seed(0)
    module = build_model(MODELS[1], FEATURES, CLASSES)
    x, y = tiny_data(n=5)
    params = {k: v.detach() for k, v in module.named_parameters()}
    rows = []
    for i in range(len(x)):
        module.zero_grad()
        F.cross_entropy(module(x[i : i + 1]), y[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.flatten() for p in module.parameters()]))
    got = per_example_gradients(module.to("meta"), params, {}, x, y)
    torch.testing.assert_close(got, torch.stack(rows), rtol=1e-5, atol=1e-6)


def test_competition_ratio_on_constructed_gradients():
    eye = torch.eye(4) * 3.0  # 4 orthogonal rows of equal norm
    assert competition_ratio(eye) == pytest.approx(1 / math.sqrt(4), rel=1e-12)
    assert competition_ratio(torch.ones(5, 3) * 2.0) == pytest.approx(1.0, rel=1e-12)
    assert competition_ratio(torch.tensor([[1.0, 2.0], [-1.0, -2.0]])) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("model_params", MODELS, ids=lambda m: m["name"])
def test_gradient_competition_is_one_for_identical_examples(model_params):
    base, params, buffers = tiny_model(model_params)
    x, y = tiny_data(n=1)
    value = gradient_competition(base, params, buffers, x.repeat(8, 1), y.repeat(8))
    assert value == pytest.approx(1.0, rel=1e-6)


def linear_orthogonal_case(batch: int):
    """A bias-free linear classifier at zero weights with one-hot inputs.

    Softmax is uniform, so example i's gradient is (p - onehot(y_i)) outer e_i: rows live in
    disjoint columns (orthogonal) and all have norm sqrt(1/2) with two classes.
    """
    base = nn.Linear(batch, 2, bias=False).to("meta")
    params = {"weight": torch.zeros(2, batch, dtype=torch.float64)}
    x = torch.eye(batch, dtype=torch.float64)
    y = torch.arange(batch) % 2
    return base, params, x, y


def test_gradient_competition_is_one_over_sqrt_b_for_orthogonal_gradients():
    base, params, x, y = linear_orthogonal_case(batch=6)
    assert gradient_competition(base, params, {}, x, y) == pytest.approx(1 / math.sqrt(6), rel=1e-12)


def test_noise_scale_parts_on_constructed_gradients():
    # Rows m +- a e_1, m +- b e_2: sample mean m, squared deviations 2a^2 + 2b^2 in all.
    m, a, b = torch.tensor([3.0, -1.0, 2.0]), 0.5, 1.5
    e1, e2 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    rows = torch.stack([m + a * e1, m - a * e1, m + b * e2, m - b * e2])
    trace_sigma = (2 * a**2 + 2 * b**2) / 3
    grad_sq = (m**2).sum().item() - trace_sigma / 4
    parts = noise_scale_parts(rows)
    assert parts.trace_sigma == pytest.approx(trace_sigma, rel=1e-12)
    assert parts.grad_sq == pytest.approx(grad_sq, rel=1e-12)
    assert parts.b_simple == pytest.approx(trace_sigma / grad_sq, rel=1e-12)


def test_noise_scale_estimators_are_unbiased():
    # Gradients G + noise with known covariance: the averages over many small batches converge
    # to tr(Sigma) and |G|^2, while the naive |mean g|^2 overshoots |G|^2 by tr(Sigma)/B.
    gen = torch.Generator().manual_seed(0)
    true_g = torch.tensor([0.5, -0.3, 0.2, 0.1], dtype=torch.float64)
    std = torch.tensor([1.0, 0.5, 2.0, 0.3], dtype=torch.float64)
    batches = true_g + std * torch.randn(3000, 8, 4, generator=gen, dtype=torch.float64)
    parts = [noise_scale_parts(batch) for batch in batches]
    for values, truth in (
        ([p.trace_sigma for p in parts], (std**2).sum().item()),
        ([p.grad_sq for p in parts], (true_g**2).sum().item()),
    ):
        standard_error = np.std(values) / math.sqrt(len(values))
        assert abs(np.mean(values) - truth) < 4 * standard_error
    naive = batches.mean(1).pow(2).sum(1).mean().item()
    assert naive - (true_g**2).sum().item() > 0.5  # tr(Sigma)/B = 5.34/8: the bias corrected


def test_noise_scale_is_nan_when_noise_hides_the_gradient_and_needs_two_examples():
    assert math.isnan(noise_scale_parts(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])).b_simple)
    with pytest.raises(ValueError, match="at least 2"):
        noise_scale_parts(torch.ones(1, 3))


def test_gradient_noise_scale_uses_the_models_per_example_gradients():
    base, params, buffers = tiny_model(MODELS[0], dtype=torch.float64)
    # Near-identical examples of one class: a clear mean gradient, so B_simple is finite.
    x, _ = tiny_data(n=12, dtype=torch.float64)
    x = x[:1] + 0.3 * x
    y = torch.zeros(12, dtype=torch.long)
    expected = noise_scale_parts(per_example_gradients(base, params, buffers, x, y)).b_simple
    assert gradient_noise_scale(base, params, buffers, x, y) == expected
    assert 0 < expected < math.inf


# --- loss-landscape pictures --------------------------------------------------------------------


def test_interpolate_hits_both_endpoints_and_the_midpoint():
    base, params_a, buffers = tiny_model(MODELS[0], seed=0)
    _, params_b, _ = tiny_model(MODELS[0], seed=1)
    x, y = tiny_data()
    losses = interpolate(base, params_a, params_b, buffers, x, y, [0.0, 1.0, 0.5, -0.5, 1.5])
    assert losses[0] == loss_at(base, params_a, buffers, x, y)
    assert losses[1] == pytest.approx(loss_at(base, params_b, buffers, x, y), rel=1e-6)
    middle = {k: 0.5 * (params_a[k] + params_b[k]) for k in params_a}
    assert losses[2] == pytest.approx(loss_at(base, middle, buffers, x, y), rel=1e-6)
    assert len(losses) == 5 and all(math.isfinite(v) for v in losses)


@pytest.mark.parametrize("model_params", MODELS, ids=lambda m: m["name"])
def test_filter_normalized_direction_matches_filter_norms_and_zeroes_biases(model_params):
    _, params, _ = tiny_model(model_params)
    direction = filter_normalized_direction(params, 5)
    assert list(direction) == list(params)
    for name, p in params.items():
        d = direction[name]
        assert d.shape == p.shape and d.dtype == p.dtype
        if p.dim() <= 1:
            assert torch.equal(d, torch.zeros_like(p))
        else:
            torch.testing.assert_close(d.flatten(1).norm(dim=1), p.flatten(1).norm(dim=1))


def test_filter_normalized_direction_depends_only_on_seed_and_architecture():
    _, params, _ = tiny_model(MODELS[1], seed=0)
    _, other_run, _ = tiny_model(MODELS[1], seed=1)
    first = filter_normalized_direction(params, 5)
    same = filter_normalized_direction(params, torch.Generator().manual_seed(5))
    different = filter_normalized_direction(params, 6)
    for name in params:
        assert torch.equal(first[name], same[name])
    assert not torch.equal(first["head.weight"], different["head.weight"])
    # Another run of the same architecture: the same Gaussian, only the filter lengths differ.
    theirs = filter_normalized_direction(other_run, 5)
    for name, p in params.items():
        if p.dim() > 1:
            unit = first[name].flatten(1) / first[name].flatten(1).norm(dim=1, keepdim=True)
            their_unit = theirs[name].flatten(1) / theirs[name].flatten(1).norm(dim=1, keepdim=True)
            torch.testing.assert_close(unit, their_unit)


def test_slices_agree_with_loss_at():
    base, params, buffers = tiny_model(MODELS[1])
    x, y = tiny_data()
    d1 = filter_normalized_direction(params, 1)
    d2 = filter_normalized_direction(params, 2)
    center = loss_at(base, params, buffers, x, y)
    line = slice_1d(base, params, buffers, x, y, d1, [-1.0, 0.0, 0.5])
    assert line[1] == center
    moved = {k: params[k] + 0.5 * d1[k] for k in params}
    assert line[2] == pytest.approx(loss_at(base, moved, buffers, x, y), rel=1e-6)
    grid = slice_2d(base, params, buffers, x, y, d1, d2, [-1.0, 0.0, 0.5], [0.0, 0.25])
    assert grid.shape == (3, 2) and grid.dtype == np.float64
    assert grid[1, 0] == center
    np.testing.assert_allclose(grid[:, 0], line, rtol=1e-6)
    corner = {k: params[k] + 0.5 * d1[k] + 0.25 * d2[k] for k in params}
    assert grid[2, 1] == pytest.approx(loss_at(base, corner, buffers, x, y), rel=1e-6)


def test_member_params_picks_one_member_of_a_stacked_ensemble():
    stacked = {"w": torch.arange(12.0).view(3, 2, 2), "b": torch.arange(6.0).view(3, 2)}
    member = member_params(stacked, 1)
    assert torch.equal(member["w"], stacked["w"][1]) and torch.equal(member["b"], stacked["b"][1])


def test_training_and_probing_the_default_kind_of_model_never_import_torch_dynamo(tmp_path):
    """torch.func's first `grad` call imports torch._dynamo: about 2 s in every training and
    probe job. A model with a packed form gets its per-example gradients, Hessian-vector
    products and ascent steps from plain autograd, so a fresh process never imports it."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import io, sys, torch
        from batchscale import engine, probes
        from batchscale.data import Dataset
        from batchscale.progress import EpochProgress

        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(80, 12, generator=g), torch.randint(0, 3, (80,), generator=g)
        data = Dataset(x[:64], y[:64], x[64:], y[64:], num_classes=3)
        spec = engine.TrainSpec(batch_size=16, seeds=[0, 1], lrs=[0.01, 0.01], epochs=2, momentum=0.9)
        ensemble = engine.Ensemble({"name": "cnn1d", "channels": 2}, data, spec, torch.device("cpu"))
        state = engine.train(ensemble, progress=EpochProgress(2, stream=io.StringIO(), interactive=False))
        params, x, y = probes.member_params(state.params, 0), data.x_train, data.y_train
        probes.top_hessian_eigenvalue(ensemble.eval_base, params, {}, x, y, iters=5)
        probes.epsilon_sharpness(ensemble.eval_base, params, {}, x, y, steps=3)
        probes.gradient_noise_scale(ensemble.eval_base, params, {}, x[:8], y[:8])
        print("torch._dynamo" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
