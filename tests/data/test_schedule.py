import pytest
import torch

from radio.data.datamodule import ShardDataModule
from radio.data.schedule import PartitionConfig, Schedule, StageConfig, schedule_errors

THREE_STAGES = [
    {"steps": 3, "partitions": [{"resolution": 32, "batch_size": 4}]},
    {"steps": 2, "partitions": [{"resolution": 48, "batch_size": 3}]},
    {"partitions": [{"resolution": 48, "batch_size": 2}, {"resolution": 64, "batch_size": 3, "teachers": ["clip"],
                                                           "weight": 0.5}]},
]


def test_stage_boundaries_and_resolutions():
    s = Schedule(THREE_STAGES)
    assert [s.stage_index(i) for i in range(8)] == [0, 0, 0, 1, 1, 2, 2, 2]
    assert s.stage_index(10**6) == 2 and s.resolutions() == [32, 48, 64]
    assert s.final.partitions[1] == PartitionConfig(64, 3, ["clip"], 0.5)
    single = Schedule.single(96, 8)
    assert single.stage_index(0) == single.stage_index(999) == 0 and single.resolutions() == [96]


def test_schedule_errors_name_the_field():
    bad = [{"partitions": [{"resolution": 50, "batch_size": 0}]},
           {"steps": 0, "partitions": [{"resolution": 64, "batch_size": 2, "teachers": ["sam"]}]},
           {"partitions": []}]
    errors = "\n".join(schedule_errors(bad, patch=16, max_resolution=512, teacher_names=["clip", "dino_v2"]))
    assert "data.stages[0].steps: every stage but the last needs an integer steps >= 1" in errors
    assert "data.stages[0].partitions[0].resolution: 50 is not a multiple of the student's patch size 16 " \
           "(nearest valid: 48 or 64)" in errors
    assert "data.stages[0].partitions[0].batch_size: must be an integer >= 1, got 0" in errors
    assert "data.stages[1].partitions[0].teachers: 'sam' is not a teacher of this recipe" in errors
    assert "data.stages[2].partitions: at least one partition is needed" in errors
    assert "exceeds model.student.max_resolution 512" in "\n".join(
        schedule_errors([{"partitions": [{"resolution": 1024, "batch_size": 1}]}], 16, 512))
    with pytest.raises(ValueError, match=r"data.stages\[0\].partitions\[0\]: unknown key\(s\) \['res'\]"):
        Schedule([{"partitions": [{"res": 64}]}])


@pytest.mark.parametrize("workers", [0, 2])
def test_each_step_has_one_batch_per_partition_of_its_stage(synth_dir, workers):
    stages = [StageConfig([PartitionConfig(**p) for p in s["partitions"]], s.get("steps")) for s in THREE_STAGES]
    dm = ShardDataModule(str(synth_dir / "train"), stages=stages, num_workers=workers)
    loader = dm.train_dataloader()
    seen = []
    for i, batch in zip(range(8), loader):
        assert batch.step == i  # in-order round robin across workers keeps the global step
        stage = Schedule(THREE_STAGES).stages[batch.stage]
        assert batch.stage == Schedule(THREE_STAGES).stage_index(i)
        assert len(batch.partitions) == len(stage.partitions)
        for part, cfg in zip(batch.partitions, stage.partitions):
            assert part.image.shape == (cfg.batch_size, 3, cfg.resolution, cfg.resolution)
            assert part.image.dtype == torch.float32 and 0 <= part.image.min() <= part.image.max() <= 1
            assert part.resolution == cfg.resolution and part.teachers == cfg.teachers
            assert part.weight == cfg.weight and len(part.key) == cfg.batch_size
        seen.append(tuple(p.resolution for p in batch.partitions))
    assert seen == [(32,)] * 3 + [(48,)] * 2 + [(48, 64)] * 3
    # the two partitions of one step hold different images
    last = batch.partitions
    assert not set(last[0].key) & set(last[1].key)


def test_single_partition_form_and_mixing_is_an_error(synth_dir):
    dm = ShardDataModule(str(synth_dir / "train"), resolution=48, batch_size=5, num_workers=0)
    assert dm.resolution == 48 and dm.val_resolution == 48 and dm.schedule.resolutions() == [48]
    batch = next(iter(dm.train_dataloader()))
    assert batch.partitions[0].image.shape == (5, 3, 48, 48) and batch.partitions[0].teachers is None
    with pytest.raises(ValueError, match="either data.resolution/data.batch_size .* or data.stages"):
        ShardDataModule(str(synth_dir / "train"), resolution=48, stages=[StageConfig([PartitionConfig(32, 2)])])


def test_resume_starts_at_the_trainers_step(synth_dir):
    dm = ShardDataModule(str(synth_dir / "train"), stages=Schedule(THREE_STAGES).stages, num_workers=0)

    class FakeTrainer:
        global_step = 4

    dm.trainer = FakeTrainer()
    batch = next(iter(dm.train_dataloader()))
    assert batch.step == 4 and batch.stage == 1


def test_sample_order_is_repeatable(synth_dir):
    def keys(seed):
        dm = ShardDataModule(str(synth_dir / "train"), resolution=32, batch_size=8, num_workers=0, seed=seed)
        return [k for _, b in zip(range(3), dm.train_dataloader()) for k in b.partitions[0].key]

    first = keys(0)
    assert first == keys(0) and first != keys(1)
