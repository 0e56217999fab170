"""Cost of the exact epoch order: the shard header scan, and random-access batches vs webdataset streaming.

Generated shards (radio data synth), then, side by side in one process:
  1. `ShardIndex.build` (one pass over the tar headers): time per sample, cold cache and from the scan cache;
  2. training batches per second, one loader process (num_workers 0), of
     a. radio's epoch order (StepStream: random access by index, per-sample seeded crops), and
     b. the streaming pipeline it replaced (webdataset: resampled shards -> tar -> shuffle buffer -> decode ->
        the same crops), alternating rounds.

    PYTHONPATH=$PWD python benchmarks/data_order.py [--count 4000] [--size 128] [--batch 32] [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from radio.data.batch import PartitionBatcher, StepStream
from radio.data.index import ShardIndex
from radio.data.order import DataOrder
from radio.data.schedule import Schedule
from radio.data.shards import decode_sample
from radio.data.synth import write_synth


def streaming_batches(urls: list[str], schedule: Schedule, batches: int):
    import webdataset as wds

    tf = PartitionBatcher(schedule, 0.35).transforms[schedule.resolutions()[0]]
    bs = schedule.stages[0].partitions[0].batch_size
    pipe = wds.DataPipeline(wds.ResampledShards(urls, seed=0, deterministic=True), wds.tarfile_to_samples(),
                            wds.detshuffle(1000, initial=100, seed=0), wds.map(decode_sample))
    it = iter(pipe)
    for _ in range(batches):
        torch.stack([tf(next(it).image) for _ in range(bs)])


def epoch_batches(stream: StepStream, start: int, batches: int):
    for s in range(start, start + batches):
        stream.batch(s)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=4000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        write_synth(tmp, a.count, val_count=1, size=a.size, shard_size=1000, progress=False)
        urls = sorted(str(p) for p in (Path(tmp) / "train").glob("*.tar"))
        members = sum(1 for _ in __import__("tarfile").open(urls[0]))
        t0 = time.perf_counter()
        index = ShardIndex.build(urls, cache_dir=f"{tmp}/cache", progress=False)
        scan = time.perf_counter() - t0
        t0 = time.perf_counter()
        ShardIndex.build(urls, cache_dir=f"{tmp}/cache", progress=False)
        cached = time.perf_counter() - t0
        n = len(index)
        print(f"{n} samples in {len(urls)} shards, {members / index.counts()[0]:.0f} tar members per sample; "
              f"image {a.size} px")
        print(f"scan: {scan:.3f} s = {scan / n * 1e6:.1f} us/sample; from the scan cache: {cached * 1e3:.1f} ms")
        schedule = Schedule.single(a.size, a.batch)
        stream = StepStream(index, DataOrder(n, schedule, seed=0), PartitionBatcher(schedule, 0.35))
        epoch_t, stream_t = [], []
        for r in range(a.rounds):
            t0 = time.perf_counter()
            epoch_batches(stream, r * a.batches, a.batches)
            epoch_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            streaming_batches(urls, schedule, a.batches)
            stream_t.append(time.perf_counter() - t0)
        e, s = statistics.median(epoch_t), statistics.median(stream_t)
        print(f"batches of {a.batch}, median of {a.rounds} rounds of {a.batches}: epoch order "
              f"{e / a.batches * 1e3:.1f} ms/batch, webdataset streaming {s / a.batches * 1e3:.1f} ms/batch, "
              f"ratio {e / s:.2f}")


if __name__ == "__main__":
    main()
