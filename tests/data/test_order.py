"""The epoch data order: a bijection per epoch, every sample once per epoch over all ranks, the same global batch
for any number of ranks or loader workers, and resumable from a step."""
import numpy as np
import pytest
import torch

from radio.data.datamodule import ShardDataModule
from radio.data.order import DataOrder, permute
from radio.data.schedule import Schedule

STAGES = [{"steps": 3, "partitions": [{"resolution": 32, "batch_size": 4}]},
          {"partitions": [{"resolution": 32, "batch_size": 3}, {"resolution": 48, "batch_size": 2}]}]


@pytest.mark.parametrize("n", [1, 2, 5, 64, 160, 1000, 4097])
def test_each_epoch_is_a_permutation(n):
    for epoch in range(3):
        p = permute(np.arange(n), n, seed=7, epoch=epoch)
        assert sorted(p.tolist()) == list(range(n))
    if n >= 64:
        a, b, c = (permute(np.arange(n), n, s, e) for s, e in ((7, 0), (7, 1), (8, 0)))
        assert (a != b).mean() > 0.9 and (a != c).mean() > 0.9
        assert abs(np.corrcoef(np.arange(n), a)[0, 1]) < 0.2  # no trace of the input order


@pytest.mark.parametrize("world", [1, 3])
def test_every_sample_once_per_epoch_over_all_ranks(world):
    n, steps = 37, 20  # several epochs; steps straddle epoch boundaries
    schedule = Schedule(STAGES)
    orders = [DataOrder(n, schedule, seed=1, world_size=world, rank=r) for r in range(world)]
    positions = np.concatenate([p for s in range(steps) for o in orders for p in o.positions(s)])
    assert sorted(positions.tolist()) == list(range(orders[0].step_start(steps)))  # each position once
    epochs, ids = orders[0].samples(np.arange(3 * n))
    for e in range(3):
        assert sorted(ids[epochs == e].tolist()) == list(range(n))


def test_one_rank_sees_the_global_batch_of_many():
    big = Schedule([{"steps": 3, "partitions": [{"resolution": 32, "batch_size": 8}]},
                    {"partitions": [{"resolution": 32, "batch_size": 6}, {"resolution": 48, "batch_size": 4}]}])
    small = Schedule([{"steps": 3, "partitions": [{"resolution": 32, "batch_size": 4}]},
                      {"partitions": [{"resolution": 32, "batch_size": 3}, {"resolution": 48, "batch_size": 2}]}])
    one = DataOrder(50, big, seed=3)
    two = [DataOrder(50, small, seed=3, world_size=2, rank=r) for r in (0, 1)]
    for s in range(8):
        for j, p in enumerate(one.positions(s)):
            assert p.tolist() == two[0].positions(s)[j].tolist() + two[1].positions(s)[j].tolist()


def test_a_resume_under_another_layout_keeps_its_place():
    small = Schedule([{"partitions": [{"resolution": 32, "batch_size": 4}]}])
    big = Schedule([{"partitions": [{"resolution": 32, "batch_size": 8}]}])
    before = DataOrder(100, small, seed=0, world_size=4, rank=0)  # 16 samples per step
    position = before.step_start(5)
    after = DataOrder(100, big, seed=0, world_size=1).with_offset_for(5, position)
    assert after.step_start(5) == position and after.positions(6)[0][0] == position + 8


def _batches(dm, n):
    return [b for _, b in zip(range(n), dm.train_dataloader())]


def test_batches_do_not_depend_on_workers_and_resume_exactly(synth_dir):
    stages = Schedule(STAGES).stages
    ref = _batches(ShardDataModule(str(synth_dir / "train"), stages=stages, num_workers=0, seed=5), 7)
    two = _batches(ShardDataModule(str(synth_dir / "train"), stages=stages, num_workers=2, seed=5), 7)
    for a, b in zip(ref, two):
        assert a.step == b.step and (a.reads, a.faults) == (b.reads, b.faults)
        assert a.reads == (4 if a.stage == 0 else 5) and not a.faults
        for pa, pb in zip(a.partitions, b.partitions):
            assert pa.key == pb.key and torch.equal(pa.image, pb.image)
    first = ShardDataModule(str(synth_dir / "train"), stages=stages, num_workers=0, seed=5)
    _batches(first, 1)
    first.on_before_batch_transfer(ref[3], 0)  # as if steps 0..3 were used
    state = first.state_dict()
    assert state["next_step"] == 4 and state["next_position"] == 3 * 4 + 5
    resumed = ShardDataModule(str(synth_dir / "train"), stages=stages, num_workers=2, seed=5)
    resumed.load_state_dict(state)
    for a, b in zip(ref[4:], _batches(resumed, 3)):
        assert a.step == b.step
        for pa, pb in zip(a.partitions, b.partitions):
            assert pa.key == pb.key and torch.equal(pa.image, pb.image)
    other = _batches(ShardDataModule(str(synth_dir / "train"), stages=stages, num_workers=0, seed=6), 1)
    assert other[0].partitions[0].key != ref[0].partitions[0].key
