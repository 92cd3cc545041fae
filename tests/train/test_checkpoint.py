"""Checkpoint files: optimizer states (8-bit nested ones too) round-trip through
safetensors + JSON, RNG states restore, incomplete checkpoints do not count, the last k
are kept, and a checkpoint of another world size is refused for a missing rank."""

from __future__ import annotations

import random

import bitsandbytes as bnb
import numpy as np
import pytest
import torch

from kohaku.train import checkpoint as ckpt


def optimizer_state(kind: str) -> tuple[torch.optim.Optimizer, dict]:
    p = torch.nn.Parameter(torch.randn(128, 128))
    opt = (bnb.optim.Lion8bit if kind == "lion8bit" else torch.optim.AdamW)([p], lr=1e-3)
    p.grad = torch.randn(128, 128)
    opt.step()
    return opt, opt.state_dict()


@pytest.mark.parametrize("kind", ["lion8bit", "adamw"])
def test_optimizer_state_round_trip(kind):
    _, state = optimizer_state(kind)
    tensors, plain = ckpt.optimizer_split(state)
    assert all(torch.is_tensor(t) for t in tensors.values())
    back = ckpt.optimizer_join(tensors, plain)
    assert back["param_groups"] == state["param_groups"]
    flat = lambda s: ckpt.optimizer_split(s)[0]  # noqa: E731
    assert all(torch.equal(flat(back)[k], v) for k, v in flat(state).items())
    opt, _ = optimizer_state(kind)
    opt.load_state_dict(back)  # the optimizer takes it back


def save(root, step: int, rank_count: int = 1) -> None:
    state = ckpt.TrainState({"w": torch.ones(2)}, optimizer_state("adamw")[1], {"last_epoch": step},
                            None, ckpt.Position(step, 0, step))  # fmt: skip
    for rank in range(rank_count):
        ckpt.save(root, state, rank, rank_count, lambda: None)


def test_latest_ignores_incomplete_and_prune_keeps_the_last(tmp_path):
    for step in (1, 2, 3, 4):
        save(tmp_path, step)
    (tmp_path / "step-000005").mkdir()  # killed while writing: no meta.json
    assert ckpt.latest(tmp_path).name == "step-000004"
    ckpt.prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000003", "step-000004",
                                                          "step-000005"]  # fmt: skip
    loaded = ckpt.load(ckpt.latest(tmp_path), rank=0)
    assert loaded.position == ckpt.Position(4, 0, 4) and loaded.scheduler == {"last_epoch": 4}


def test_rng_states_restore(tmp_path):
    save(tmp_path, 1)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    for _ in range(5):
        torch.rand(3), np.random.rand(3), random.random()
    ckpt.load(tmp_path / "step-000001", rank=0)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def test_another_world_size_is_refused(tmp_path):
    save(tmp_path, 1, rank_count=1)
    with pytest.raises(ValueError, match="same world size"):
        ckpt.load(tmp_path / "step-000001", rank=1)
