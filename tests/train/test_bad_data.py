"""Bad data through `radio fit`: injected faults are skipped, counted exactly, logged with shard and key; too many
stop the run with a clear message."""
import io
import json
import logging
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radio.cli.fit import run_fit
from radio.cli.main import main
from radio.data.datamodule import ShardDataModule
from radio.data.health import BadDataError
from radio.data.order import DataOrder
from tests.helpers import tiny_recipe, write_recipe
from tests.train.runs import load_checkpoint

STEPS, BATCH = 10, 16


def _rewrite(src: Path, dst: Path, change) -> None:
    """Copy a tar member by member; change(name, data) -> [(name, data), ...] (empty: drop the member)."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin:
            for name, data in change(m.name, tin.extractfile(m).read()):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tout.addfile(info, io.BytesIO(data))


def _jpeg(png: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def faulty(synth_dir, tmp_path_factory):
    """Two shards with three faults: a truncated JPEG and a garbage image member in shard 0, shard 1 cut in half."""
    out = tmp_path_factory.mktemp("faulty")
    src0, src1 = sorted((synth_dir / "train").glob("*.tar"))
    truncated_key, garbage_key = "train-00000005", "train-00000042"
    rng = np.random.default_rng(0)

    def change(name, data):
        key = name.split(".", 1)[0]
        if key == truncated_key and name.endswith(".png") and not name.endswith(".seg.png"):
            jpg = _jpeg(data)
            return [(f"{key}.jpg", jpg[: len(jpg) // 2])]
        if key == garbage_key and name.endswith(".png") and not name.endswith(".seg.png"):
            return [(name, rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())]
        return [(name, data)]

    _rewrite(src0, out / "000000.tar", change)
    data = src1.read_bytes()
    (out / "000001.tar").write_bytes(data[: len(data) // 2])
    expected = {("SampleError", str(out / "000000.tar"), truncated_key),
                ("SampleError", str(out / "000000.tar"), garbage_key),
                ("TruncatedShard", str(out / "000001.tar"), "")}
    return out, expected


def test_injected_faults_are_skipped_and_counted_exactly(faulty, tmp_path, caplog):
    shards, expected = faulty
    recipe = tiny_recipe(str(shards), None, tmp_path, steps=STEPS, num_workers=2, max_bad_fraction=0.2,
                         min_reads_for_bad_fraction=16)
    with caplog.at_level(logging.WARNING, logger="radio.data"):
        cli = run_fit(["--config", str(write_recipe(recipe, tmp_path / "r.yaml"))])
    assert cli.trainer.global_step == STEPS  # trained to the end
    report = json.loads((Path(cli.trainer.log_dir) / "health.json").read_text())
    found = {(f["kind"], f["shard"], f["key"]) for f in report["faults"]}
    assert found == expected and report["distinct_faults"] == 3
    assert report["faults_by_kind"] == {"SampleError": 2, "TruncatedShard": 1}
    # bad reads: how often the epoch order put one of the two bad samples into these steps
    dm = cli.datamodule
    order = DataOrder(len(dm.index), dm.schedule, dm.seed)
    _, ids = order.samples(np.arange(STEPS * BATCH))
    keys = [dm.index.read(i)["__key__"] for i in ids]
    assert report["samples_read"] == STEPS * BATCH
    assert report["bad_reads"] == sum(k in {e[2] for e in expected} for k in keys) >= 2
    logged = [r.getMessage() for r in caplog.records if "skipped bad data" in r.getMessage()]
    assert len(logged) == 3  # each fault once, naming shard and key
    for kind, shard, key in expected:
        assert sum(kind in m and f"shard={shard}" in m and (not key or f"key={key}" in m) for m in logged) == 1


def test_too_much_bad_data_stops_with_a_clear_message(synth_dir, tmp_path, capsys):
    src = sorted((synth_dir / "train").glob("*.tar"))[0]
    bad = tmp_path / "bad"
    bad.mkdir()

    def change(name, data):  # every third image is garbage
        idx = int(name.split(".", 1)[0].rsplit("-", 1)[1])
        if name.endswith(".png") and not name.endswith(".seg.png") and idx % 3 == 0:
            return [(name, b"not an image")]
        return [(name, data)]

    _rewrite(src, bad / "000000.tar", change)
    recipe = tiny_recipe(str(bad), None, tmp_path, steps=STEPS, max_bad_fraction=0.1, min_reads_for_bad_fraction=32)
    assert main(["fit", "--config", str(write_recipe(recipe, tmp_path / "r.yaml"))]) == 1
    err = capsys.readouterr().err
    assert "more than data.max_bad_fraction = 0.1" in err and "SampleError" in err
    assert f"shard={bad / '000000.tar'} key=train-000000" in err
    report = json.loads(next(tmp_path.rglob("health.json")).read_text())
    assert report["bad_reads"] / report["samples_read"] > 0.1 and report["samples_read"] >= 32
    # the run saved where it stopped (after the step that crossed the threshold) and says why it stopped
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert f"checkpoint saved to {ckpt}" in err and "more than data.max_bad_fraction" in report["stopped"]
    saved = load_checkpoint(ckpt)
    assert saved["global_step"] == report["steps"] == report["samples_read"] // 16
    assert saved["radio_guard"]["reads"] == report["samples_read"]


def test_a_shard_set_without_usable_samples_is_an_error(tmp_path):
    (tmp_path / "000000.tar").write_bytes(b"\0" * 100)
    dm = ShardDataModule(str(tmp_path), resolution=32, batch_size=4, num_workers=0)
    with pytest.raises(BadDataError, match="hold no usable sample"):
        dm.setup("fit")


def test_sample_without_image_is_found_by_the_scan(synth_dir, tmp_path):
    src = sorted((synth_dir / "train").glob("*.tar"))[0]
    drop = "train-00000003"
    _rewrite(src, tmp_path / "000000.tar",
             lambda n, d: [] if n.startswith(drop) and n.endswith(".png") and not n.endswith(".seg.png") else [(n, d)])
    shutil.copy(sorted((synth_dir / "train").glob("*.tar"))[1], tmp_path / "000001.tar")
    dm = ShardDataModule(str(tmp_path), resolution=32, batch_size=4, num_workers=0)
    dm.setup("fit")
    assert len(dm.index) == 159
    assert [(f.kind, f.key) for f in dm.health.all()] == [("MissingImage", drop)]


def test_a_label_that_is_not_an_integer_is_bad_data_named_by_shard_and_key(synth_dir, tmp_path):
    src = sorted((synth_dir / "train").glob("*.tar"))[0]
    bad = "train-00000007"

    def relabel(name, data):
        if name == f"{bad}.json":
            meta = json.loads(data)
            meta["label"] = "cat"
            data = json.dumps(meta).encode()
        return [(name, data)]

    _rewrite(src, tmp_path / "000000.tar", relabel)
    dm = ShardDataModule(str(tmp_path), resolution=32, batch_size=8, num_workers=0)
    dm.setup("fit")
    batches = [dm.on_before_batch_transfer(b, 0) for _, b in zip(range(10), dm.train_dataloader())]  # 1 epoch
    faults = [f for b in batches for f in b.faults]
    assert [(f["kind"], f["shard"], f["key"]) for f in faults] == [("SampleError", str(tmp_path / "000000.tar"), bad)]
    assert "'label' must be an integer" in faults[0]["message"] and "'cat'" in faults[0]["message"]
    trained = [k for b in batches for p in b.partitions for k in p.key]
    assert len(trained) == len(set(trained)) == 79 and bad not in trained
