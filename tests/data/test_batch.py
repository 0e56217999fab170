"""Typed batches (radio.data.batch): Lightning moves them to the device and the DataLoader pins them, every tensor
inside (cached targets included), the rest kept as it is."""
import torch
from lightning import LightningModule
from lightning_utilities.core.apply_func import apply_to_collection

from radio.cache.views import CachedTargets
from radio.data.batch import Partition, TrainBatch

FAULT = {"kind": "SampleError", "shard": "0.tar", "key": "k9", "message": "bad"}


def _batch() -> TrainBatch:
    cached = {"clip": CachedTargets(torch.rand(2, 8), [torch.rand(8, 2, 2), torch.rand(8, 3, 2)],
                                    torch.tensor([True, False]))}
    cached_part = Partition(torch.rand(2, 3, 32, 32), ["clip"], 0.5, 32, torch.tensor([1, 2]), ["k0", "k1"], cached,
                            torch.zeros(2, 6, dtype=torch.long))
    return TrainBatch([cached_part, Partition(torch.rand(0, 3, 48, 48))], stage=1, step=7, reads=3, faults=[FAULT])


def _tensors(batch: TrainBatch) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    apply_to_collection(batch, torch.Tensor, found.append)
    return found


def _plain(batch: TrainBatch):
    return ([(p.teachers, p.weight, p.resolution, p.key, sorted(p.cached)) for p in batch.partitions],
            batch.stage, batch.step, batch.reads, batch.faults)


def test_lightning_moves_every_tensor_of_a_training_batch():
    batch = _batch()
    assert len(_tensors(batch)) == 8 and batch.partitions[1].resolution == 48  # r from the image by default
    moved = LightningModule().transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert type(moved) is TrainBatch and all(type(p) is Partition for p in moved.partitions)
    assert type(moved.partitions[0].cached["clip"]) is CachedTargets
    assert len(_tensors(moved)) == 8 and all(t.device.type == "meta" for t in _tensors(moved))
    assert [t.shape for t in _tensors(moved)] == [t.shape for t in _tensors(batch)]
    assert _plain(moved) == _plain(batch)
    assert all(t.device.type == "cpu" for t in _tensors(batch))  # the loader's batch is left as it was


def test_the_dataloader_pins_every_tensor_of_a_training_batch(monkeypatch):
    """The DataLoader calls `pin_memory()` on a batch that has one (pinning itself needs a GPU: stood in for)."""
    pinned = []

    def pin(t, *_):
        out = t.clone()
        pinned.append(out)
        return out

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    batch = _batch()
    out = torch.utils.data._utils.pin_memory.pin_memory(batch)
    assert type(out) is TrainBatch and _plain(out) == _plain(batch)
    assert [id(t) for t in _tensors(out)] == [id(t) for t in pinned] and len(pinned) == 8
    assert all(torch.equal(a, b) for a, b in zip(_tensors(out), _tensors(batch)))
