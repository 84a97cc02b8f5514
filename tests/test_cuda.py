"""The CUDA path: skipped where there is no GPU (CI), run on a GPU machine.

Every way of training the members together must give on the GPU what it gives on the CPU
(to float rounding: cuDNN and oneDNN sum in different orders), `auto` must pack there, and
the bench must time the GPU and record its peak memory.
"""

from __future__ import annotations

import pytest
import torch

from batchscale import bench
from batchscale.engine import Ensemble, TrainSpec, resolve_device, train

from conftest import MODELS, silent, tiny_dataset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.mark.parametrize("strategy", ["packed", "vmap", "loop"])
@pytest.mark.parametrize("model_params", [*MODELS, {"name": "cnn2d", "channels": 3}], ids=lambda m: m["name"])
def test_every_strategy_trains_on_cuda_as_on_the_cpu(model_params, strategy):
    data = tiny_dataset(features=16)
    spec = TrainSpec(batch_size=24, seeds=[3, 7], lrs=[0.05, 0.02], epochs=3, momentum=0.9, strategy=strategy)
    on_cpu = train(Ensemble(model_params, data, spec, torch.device("cpu")), progress=silent())
    on_gpu = train(Ensemble(model_params, data, spec, torch.device("cuda")), progress=silent())
    for name, tensor in on_cpu.params.items():
        torch.testing.assert_close(on_gpu.params[name].cpu(), tensor, rtol=1e-4, atol=1e-5)


def test_auto_means_cuda_and_packed_members_there():
    assert resolve_device("auto").type == "cuda"
    data = tiny_dataset()
    spec = TrainSpec(batch_size=4096, seeds=[0, 1], lrs=[0.05] * 2, epochs=1, momentum=0.9)
    assert Ensemble(MODELS[1], data, spec, torch.device("cuda")).strategy == "packed"


def test_the_bench_times_the_gpu():
    table = bench.benchmark(
        models=[MODELS[1]], data=tiny_dataset().to(torch.device("cuda")), batch_sizes=[16], members=4,
        repeats=2, lr=0.01, momentum=0.9, device=torch.device("cuda"),
    )  # fmt: skip
    assert set(table["device"]) == {"cuda"} and (table["ms_per_model_epoch"] > 0).all()
