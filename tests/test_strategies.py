"""How the members compute gradients and logits: the choice `auto` makes (the maths of each
strategy, member by member against torch.optim, is in test_engine.py)."""

from __future__ import annotations

import torch

from batchscale import strategies
from batchscale.models import build_model
from batchscale.strategies import resolve_strategy

from conftest import MODELS


def seeded_members(model_params: dict, members: int) -> tuple[list[torch.nn.Module], dict, dict]:
    """One model per seed 0..members-1, and their parameters (detached) and buffers stacked."""
    from torch.func import stack_module_state

    models = []
    for seed in range(members):
        torch.manual_seed(seed)
        models.append(build_model(model_params, 12, 3))
    params, buffers = stack_module_state(models)
    return models, {k: v.detach() for k, v in params.items()}, buffers


def test_auto_strategy_packs_as_many_members_at_a_time_as_a_cpu_cache_holds(monkeypatch):
    threads = torch.get_num_threads()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    example = torch.zeros(12)
    cnn, mlp = build_model(MODELS[1], 12, 3), build_model(MODELS[0], 12, 3)
    # cnn1d with 4 channels on 12 inputs: its widest layer holds 4 x 5 values per example.
    assert strategies.widest_activation(cnn, example) == 20
    per_example = 8 * 20 * 4  # members x values x bytes
    monkeypatch.setattr(strategies, "PACKED_CACHE_BYTES", 64 * per_example)
    group = lambda batch, threads=1: strategies.packed_group(cnn, 8, batch, cpu, example, threads)  # noqa: E731
    # All 8 members' layer fits at 64 examples; at 65 six do, and 8 go in two groups of 4; at
    # 8 x 64 examples one member's layer fills the cache, and above it not one fits.
    assert (group(64), group(65), group(128), group(8 * 64), group(8 * 64 + 1)) == (8, 4, 4, 1, 1)
    assert group(150) == 3  # three fit: 3 + 3 + 2, nearly equal groups
    assert resolve_strategy("auto", cnn, 8, 64, cpu, example, threads=1) == "packed"
    assert resolve_strategy("auto", cnn, 8, 65, cpu, example, threads=1) == "packed"  # in groups
    assert resolve_strategy("auto", cnn, 8, 4 * 64 + 1, cpu, example, threads=1) == "loop"  # not two fit
    # Two threads compute on two cores' caches: the packed layer may be twice as large.
    assert (group(128, threads=2), group(129, threads=2)) == (8, 4)
    assert resolve_strategy("auto", cnn, 8, 4 * 64 + 1, cpu, example, threads=2) == "packed"
    torch.set_num_threads(1)  # by default the rule reads torch's own thread count
    try:
        assert strategies.packed_group(cnn, 8, 65, cpu, example) == 4
    finally:
        torch.set_num_threads(threads)
    assert strategies.packed_group(cnn, 8, 4096, cuda, example) == 8
    # Where not all fit, a member whose layer is large enough for ops of its own loops.
    monkeypatch.setattr(strategies, "LOOP_MEMBER_BYTES", 100 * 20 * 4)
    assert (group(99), group(100), group(64)) == (4, 1, 8)
    assert resolve_strategy("auto", cnn, 8, 100, cpu, example, threads=1) == "loop"
    assert strategies.describe("packed", 4, 8) == "packed in groups of 4"
    assert strategies.describe("packed", 8, 8) == "packed" and strategies.describe("loop", 1, 8) == "loop"
    assert resolve_strategy("auto", cnn, 8, 4096, cuda, example) == "packed"  # no such cache limit on a GPU
    assert resolve_strategy("auto", mlp, 1, 32, cpu, example) == "loop"  # one member: nothing to batch
    assert resolve_strategy("vmap", cnn, 8, 4096, cpu, example) == "vmap"  # an explicit choice stands


def test_the_strategies_compute_the_same_gradients_and_logits():
    members, batch = 3, 5
    for model_params in MODELS:
        models, params, buffers = seeded_members(model_params, members)
        base = models[0].to("meta")
        x = torch.randn(members, batch, 12, generator=torch.Generator().manual_seed(1))
        y = torch.randint(0, 3, (members, batch), generator=torch.Generator().manual_seed(2))
        results = {
            name: (
                strategies.make_strategy(name, base, members).gradients(params, buffers, x, y),
                strategies.make_strategy(name, base, members).logits(params, buffers, x[0]),
            )
            for name in strategies.STRATEGIES
        }
        # Packed two members at a time: a group of 2 and a group of 1.
        grouped = strategies.make_strategy("packed", base, members, group=2)
        results["packed in groups"] = (
            grouped.gradients(params, buffers, x, y), grouped.logits(params, buffers, x[0])
        )
        assert all(strategies.make_strategy(n, base, members).name == n for n in strategies.STRATEGIES)
        (ref_grads, ref_losses), ref_logits = results["loop"]
        for name, ((grads, losses), logits) in results.items():
            torch.testing.assert_close(losses, ref_losses, msg=f"{name} losses")
            torch.testing.assert_close(logits, ref_logits, msg=f"{name} logits")
            for key in ref_grads:
                torch.testing.assert_close(grads[key], ref_grads[key], msg=f"{name} gradient of {key}")


def test_example_gradients_are_each_members_backward_pass_on_each_example_alone():
    members, examples = 2, 3
    for model_params in MODELS:
        models, params, _ = seeded_members(model_params, members)
        x = torch.randn(members, examples, 12, generator=torch.Generator().manual_seed(1))
        y = torch.randint(0, 3, (members, examples), generator=torch.Generator().manual_seed(2))
        got = strategies.example_gradients(models[0].to("meta"), params, {}, x, y)
        for m in range(members):
            for i in range(examples):
                model = build_model(model_params, 12, 3)
                model.load_state_dict({k: v[m] for k, v in params.items()})
                torch.nn.functional.cross_entropy(model(x[m, i : i + 1]), y[m, i : i + 1]).backward()
                for name, parameter in model.named_parameters():
                    torch.testing.assert_close(got[name][m, i], parameter.grad, msg=f"{name} [{m}, {i}]")
