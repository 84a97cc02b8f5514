"""How the members compute gradients and logits: the choice `auto` makes (the maths of each
strategy, member by member against torch.optim, is in test_engine.py)."""

from __future__ import annotations

import torch

from batchscale import strategies
from batchscale.models import build_model
from batchscale.strategies import resolve_strategy

from conftest import MODELS


def test_auto_strategy_packs_members_unless_their_activations_outgrow_a_cpu_cache(monkeypatch):
    threads = torch.get_num_threads()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    example = torch.zeros(12)
    cnn, mlp = build_model(MODELS[1], 12, 3), build_model(MODELS[0], 12, 3)
    # cnn1d with 4 channels on 12 inputs: its widest layer holds 4 x 5 values per example.
    assert strategies.widest_activation(cnn, example) == 20
    per_example = 8 * 20 * 4  # members x values x bytes
    monkeypatch.setattr(strategies, "PACKED_CACHE_BYTES", 64 * per_example)
    assert resolve_strategy("auto", cnn, 8, 64, cpu, example, threads=1) == "packed"
    assert resolve_strategy("auto", cnn, 8, 65, cpu, example, threads=1) == "loop"
    # Two threads compute on two cores' caches: the packed layer may be twice as large.
    assert resolve_strategy("auto", cnn, 8, 128, cpu, example, threads=2) == "packed"
    assert resolve_strategy("auto", cnn, 8, 129, cpu, example, threads=2) == "loop"
    torch.set_num_threads(1)  # by default the rule reads torch's own thread count
    try:
        assert resolve_strategy("auto", cnn, 8, 65, cpu, example) == "loop"
    finally:
        torch.set_num_threads(threads)
    assert resolve_strategy("auto", cnn, 8, 4096, cuda, example) == "packed"  # no such cache limit on a GPU
    assert resolve_strategy("auto", mlp, 1, 32, cpu, example) == "loop"  # one member: nothing to batch
    assert resolve_strategy("vmap", cnn, 8, 4096, cpu, example) == "vmap"  # an explicit choice stands


def test_the_three_strategies_compute_the_same_gradients_and_logits():
    from torch.func import stack_module_state

    members, batch = 3, 5
    for model_params in MODELS:
        models = []
        for seed in range(members):
            torch.manual_seed(seed)
            models.append(build_model(model_params, 12, 3))
        params, buffers = stack_module_state(models)
        params = {k: v.detach() for k, v in params.items()}
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
        (ref_grads, ref_losses), ref_logits = results["loop"]
        for name, ((grads, losses), logits) in results.items():
            assert strategies.make_strategy(name, base, members).name == name
            torch.testing.assert_close(losses, ref_losses, msg=f"{name} losses")
            torch.testing.assert_close(logits, ref_logits, msg=f"{name} logits")
            for key in ref_grads:
                torch.testing.assert_close(grads[key], ref_grads[key], msg=f"{name} gradient of {key}")
