"""The training data order: which sample every rank gets for every partition of every step.

The order is a pure function of (seed, epoch, position), so a resume reproduces it from the step alone and any
number of loader workers yields the same batches:

- The samples form an endless stream of epochs; epoch e is a pseudo-random permutation of all N samples
  (a keyed Feistel network with cycle walking: no N-sized array is ever held, any position is computed directly).
- Step s takes the next `world_size x sum(batch sizes of its stage's partitions)` positions of the stream:
  partition j gets a block of world_size x b_j positions and rank r the r-th slice of b_j of it.

So within an epoch every sample goes to exactly one (rank, step, partition), and one process with batch size
B x W sees the same global batches as W ranks with batch size B.
"""
from __future__ import annotations

import numpy as np

from radio.data.schedule import Schedule

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_ROUNDS = 6


def _round_keys(seed: int, epoch: int) -> np.ndarray:
    return np.random.SeedSequence([seed, epoch, 0x7AD10]).generate_state(_ROUNDS, dtype=np.uint64)


def _mix(x: np.ndarray, key: np.uint64) -> np.ndarray:
    """A 64-bit mixing function (splitmix64 finaliser) of x ^ key."""
    with np.errstate(over="ignore"):
        z = x ^ key
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def permute(x: np.ndarray, n: int, seed: int, epoch: int) -> np.ndarray:
    """The image of x (ints in [0, n)) under epoch `epoch`'s pseudo-random permutation of [0, n)."""
    x = np.asarray(x, dtype=np.uint64)
    if n <= 1:
        return np.zeros_like(x, dtype=np.int64)
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask, shift = np.uint64((1 << half) - 1), np.uint64(half)
    keys = _round_keys(seed, epoch)

    def feistel(y: np.ndarray) -> np.ndarray:
        left, right = y >> shift, y & mask
        for k in keys:
            left, right = right, left ^ (_mix(right, k) & mask)
        return (left << shift) | right

    y = feistel(x)
    todo = y >= np.uint64(n)
    while todo.any():  # cycle walking: at most a few rounds, since 2^(2 half) < 4n
        y[todo] = feistel(y[todo])
        todo = y >= np.uint64(n)
    return y.astype(np.int64)


def sample_seed(seed: int, epoch: int, sample: int) -> int:
    """Seed of one sample's augmentation in one epoch (independent of rank, worker and batch layout)."""
    return int(np.random.SeedSequence([seed, epoch, sample, 0xA06]).generate_state(1, dtype=np.uint32)[0])


class DataOrder:
    """Positions and samples of every step for one rank (see the module docstring).

    Args:
        num_samples: N, the samples of the index.
        schedule: stages and partitions (per-device batch sizes).
        seed: the data seed.
        world_size, rank: the data-parallel layout.
        offset: stream position of step 0 (a resume under a different layout keeps its place with it).
    """

    def __init__(self, num_samples: int, schedule: Schedule, seed: int = 0, world_size: int = 1, rank: int = 0,
                 offset: int = 0) -> None:
        if num_samples < 1:
            raise ValueError("DataOrder: no samples")
        if not 0 <= rank < world_size:
            raise ValueError(f"DataOrder: rank {rank} outside world size {world_size}")
        self.num_samples, self.schedule, self.seed = num_samples, schedule, seed
        self.world_size, self.rank, self.offset = world_size, rank, offset

    def global_batch(self, stage: int) -> int:
        return self.world_size * sum(p.batch_size for p in self.schedule.stages[stage].partitions)

    def step_start(self, step: int) -> int:
        """Stream position of the first sample of `step` (over all ranks)."""
        pos, left = self.offset, step
        for i, st in enumerate(self.schedule.stages):
            n = left if st.steps is None or i == len(self.schedule.stages) - 1 else min(left, st.steps)
            pos += n * self.global_batch(i)
            left -= n
            if left == 0:
                break
        return pos

    def positions(self, step: int) -> list[np.ndarray]:
        """This rank's stream positions for each partition of `step`: a list of (b_j,) int64 arrays."""
        stage = self.schedule.stages[self.schedule.stage_index(step)]
        pos = self.step_start(step)
        out = []
        for p in stage.partitions:
            first = pos + self.rank * p.batch_size
            out.append(np.arange(first, first + p.batch_size, dtype=np.int64))
            pos += self.world_size * p.batch_size
        return out

    def samples(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(epochs, sample indices) of stream positions."""
        positions = np.asarray(positions, dtype=np.int64)
        epochs = positions // self.num_samples
        ids = np.empty_like(positions)
        for e in np.unique(epochs):
            sel = epochs == e
            ids[sel] = permute(positions[sel] % self.num_samples, self.num_samples, self.seed, int(e))
        return epochs, ids

    def epoch_of(self, step: int) -> float:
        """Epochs completed at the start of `step` (fractional)."""
        return self.step_start(step) / self.num_samples

    def with_offset_for(self, step: int, position: int | None) -> DataOrder:
        """The same order shifted so that `step` starts at stream `position` (None: unchanged)."""
        if position is None:
            return self
        shift = position - DataOrder(self.num_samples, self.schedule, self.seed, self.world_size, self.rank,
                                     0).step_start(step)
        return DataOrder(self.num_samples, self.schedule, self.seed, self.world_size, self.rank, shift)
