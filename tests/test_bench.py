"""The benchmark's arithmetic floor and its table, on a tiny problem."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from batchscale import bench
from batchscale.data import Dataset

from conftest import random_arrays


def tiny() -> Dataset:
    arrays = {k: torch.from_numpy(v) for k, v in random_arrays(n_train=64, features=12).items()}
    return Dataset(**arrays, num_classes=3)


def test_flops_of_a_linear_model_are_counted_exactly():
    data = tiny()
    # MLP 12 -> 3 with no hidden layer is impossible (hidden needs >= 1), so use 12 -> 4 -> 3:
    # forward 2*B*(12*4 + 4*3) FLOPs, backward twice that (grads of inputs and weights),
    # except the first layer's input gradient, which autograd skips: 2*B*12*4 fewer.
    model = {"name": "mlp", "hidden": [4]}
    batch = 16
    forward = 2 * batch * (12 * 4 + 4 * 3)
    backward = 2 * forward - 2 * batch * 12 * 4
    per_epoch = (forward + backward) * len(data.x_train) / batch
    assert bench.flops_per_epoch(model, data, batch) == per_epoch


def test_the_floor_is_the_fastest_multiply_not_a_median_moved_by_other_load(monkeypatch):
    # Of a fast, a slow and a middling multiply, the rate is the fast one's.
    monkeypatch.setattr(bench, "epoch_seconds", lambda *_args: [0.004, 0.001, 0.002])
    assert bench.matmul_flops_per_second(torch.device("cpu")) == 2 * bench.MATMUL_SIZE**3 / 0.001


def test_the_bench_keeps_the_faster_of_the_rates_timed_before_and_after_the_variants(monkeypatch):
    data, model = tiny(), {"name": "mlp", "hidden": [8]}
    for before, after in ((1e9, 2e9), (2e9, 1e9)):
        rates = iter([before, after])
        monkeypatch.setattr(bench, "matmul_flops_per_second", lambda _device, rates=rates: next(rates))
        table = bench.benchmark([model], data, [16], members=2, repeats=1, lr=0.01, momentum=0.9,
                                device=torch.device("cpu"))  # fmt: skip
        expected = 1000 * bench.flops_per_epoch(model, data, 16) / 2e9
        assert table["flop_floor_ms"].tolist() == pytest.approx([expected] * len(table))


def test_benchmark_table_has_every_variant_with_ratios_against_the_naive_loop():
    table = bench.benchmark(
        models=[{"name": "mlp", "hidden": [8]}],
        data=tiny(),
        batch_sizes=[16],
        members=3,
        repeats=1,
        lr=0.01,
        momentum=0.9,
        device=torch.device("cpu"),
    )
    assert list(table["members"]) == [1, 1, 3, 3, 3]
    assert list(table["ensemble"]) == ["", "loop", "packed", "vmap", "loop"]
    assert table["speedup_vs_naive"].iloc[0] == 1.0
    naive = table["ms_per_model_epoch"].iloc[0]
    assert (table["speedup_vs_naive"] == naive / table["ms_per_model_epoch"]).all()
    # auto packs a small MLP: exactly that row is starred.
    assert list(table["auto_choice"]) == [False, False, True, False, False]
    printed = bench.format_table(table)
    assert "engine, 3 members, packed *" in printed and "engine, 3 members, vmap *" not in printed


def test_thread_layouts_time_the_same_work_both_ways():
    from batchscale import engine, thread_layout
    from batchscale.report_html import layouts_sentence

    specs = [engine.TrainSpec(b, [0, 1], [0.05, 0.05], 1, 0.9) for b in (16, 32)]
    table = thread_layout.compare_layouts({"name": "mlp", "hidden": [8]}, tiny(), specs, threads=2, epochs=2)
    assert list(table["layout"]) == ["2 jobs x 1 thread", "1 job x 2 threads"] * 2
    assert list(table["batch_size"]) == [16, 16, 32, 32]
    assert (table["seconds"] > 0).all()
    assert (table.iloc[[1, 3]]["speedup_vs_one_job"] == 1.0).all()
    # 2 jobs x 2 epochs x 2 members of model-epochs in each layout
    assert (table["ms_per_model_epoch"] == 1000 * table["seconds"] / 8).all()
    sentence = layouts_sentence(table)
    assert "at batch size 16" in sentence and "2 jobs x 1 thread" in sentence
    assert "Not measured" in layouts_sentence(table.iloc[0:0])


def test_the_report_reads_the_bench_against_the_speed_goal():
    from batchscale.report_html import bench_sentence

    def row(variant, members, ensemble, auto, speedup, batch_size=32, device="cpu"):
        return {"model": "cnn1d", "batch_size": batch_size, "variant": variant, "members": members,
                "ensemble": ensemble, "auto_choice": auto, "device": device,
                "speedup_vs_naive": speedup}  # fmt: skip

    table = pd.DataFrame(
        [
            row("naive", 1, "", False, 1.0),
            row("engine, 8 members, packed", 8, "packed", True, 4.2),
            row("engine, 8 members, vmap", 8, "vmap", False, 2.0),
            row("engine, 8 members, loop", 8, "loop", True, 9.9, batch_size=256),  # not the smallest batch
        ]
    )
    sentence = bench_sentence(table)
    assert "cnn1d: 4.20x (packed, 8 members)" in sentence and "at least 3x, met" in sentence
    table.loc[1, "speedup_vs_naive"] = 2.5
    assert "not met" in bench_sentence(table)
    table["device"] = "cuda:0"
    assert "a GPU: at least 100x, not met" in bench_sentence(table)


def test_the_bench_times_a_users_model_and_adam_on_the_strategies_that_can_train_it(tmp_path):
    """A custom model with BatchNorm and Dropout has no packed form and cannot be vmapped with
    its own masks per member: the bench times the loop only, with Adam in both the naive loop
    and the engine."""
    path = tmp_path / "mine.py"
    path.write_text(
        "from torch import nn\n"
        "def make(in_features, num_classes):\n"
        "    return nn.Sequential(nn.Linear(in_features, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2),\n"
        "                         nn.Linear(8, num_classes))\n"
    )
    adam = {"optimizer": "adam", "momentum": 0.9, "nesterov": False, "betas": (0.9, 0.999), "eps": 1e-8,
            "weight_decay": 0.0}  # fmt: skip
    table = bench.benchmark(
        models=[{"name": "custom", "factory": f"{path}:make", "kwargs": {}}], data=tiny(), batch_sizes=[16],
        members=3, repeats=1, lr=0.001, momentum=0.9, device=torch.device("cpu"), optimizer=adam,
    )  # fmt: skip
    assert list(table["variant"]) == [
        "naive loop (DataLoader, torch.optim.Adam)", "engine, 1 member", "engine, 3 members, loop",
    ]  # fmt: skip
    assert list(table["auto_choice"]) == [False, False, True]
