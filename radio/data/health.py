"""Bad data: what was skipped, where, and whether a run should go on.

Bad shards and samples never stop a run by themselves: a truncated or corrupt tar, a sample without an image, an
image that does not decode, a per-sample check that fails (e.g. a cached feature array of the wrong shape) is
skipped and recorded as a `Fault` naming its kind, shard and key. Faults found inside loader workers travel to
the main process in the batch they were found for (`TrainBatch.faults`), so counts are exact whatever the
number of workers. `DataHealth` keeps the distinct faults (kind, shard, key) of a run; the training module keeps the
global read and bad-read counts (summed over ranks) and stops the run with `BadDataError` only when the bad
fraction passes `data.max_bad_fraction`.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

MAX_KEPT = 100_000  # distinct faults remembered (a run with more stops on the bad-fraction threshold first)


class BadDataError(RuntimeError):
    """Too much of the data is bad to go on (or nothing is left); the message says how much, where and why."""


class Fault(NamedTuple):
    """One bad item. kind: e.g. "TruncatedShard", "CorruptShard", "MissingImage", "SampleError"; shard: the
    shard's path; key: the sample key ("" for a whole-shard fault); message: what went wrong."""

    kind: str
    shard: str
    key: str
    message: str

    @property
    def ident(self) -> tuple[str, str, str]:
        return self.kind, self.shard, self.key

    def describe(self) -> str:
        where = f"shard={self.shard}" + (f" key={self.key}" if self.key else "")
        return f"{self.kind} {where}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return dict(self._asdict())


def fault_from(exn: BaseException, kind: str | None = None) -> Fault:
    """A Fault from an exception carrying `radio_url` / `radio_key` (radio.data.shards.SampleError) or not."""
    return Fault(kind or type(exn).__name__, str(getattr(exn, "radio_url", "") or ""),
                 str(getattr(exn, "radio_key", "") or ""), str(exn))


@dataclass
class DataHealth:
    """The distinct faults of a run, with counts by kind (plain types only: it lives in checkpoints).

    `record` returns the faults not seen before, so each is logged once however often an epoch revisits it.
    """

    faults: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def record(self, faults: Iterable[Fault | dict[str, str]]) -> list[Fault]:
        new = []
        for f in faults:
            f = f if isinstance(f, Fault) else Fault(**f)
            if f.ident in self.faults or len(self.faults) >= MAX_KEPT:
                continue
            self.faults[f.ident] = f.message
            new.append(f)
        return new

    def log_new(self, faults: Iterable[Fault | dict[str, str]]) -> list[Fault]:
        new = self.record(faults)
        for f in new:
            log.warning("skipped bad data: %s", f.describe())
        return new

    def merge(self, other: DataHealth) -> DataHealth:
        self.record(other.all())
        return self

    def all(self) -> list[Fault]:
        return [Fault(k, s, key, m) for (k, s, key), m in self.faults.items()]

    def by_kind(self) -> dict[str, int]:
        return dict(sorted(Counter(k for k, _, _ in self.faults).items()))

    @property
    def total(self) -> int:
        return len(self.faults)

    def summary(self, limit: int = 5) -> str:
        """e.g. '3 distinct bad items (SampleError: 2, TruncatedShard: 1); first: ...'."""
        if not self.faults:
            return "no bad data"
        kinds = ", ".join(f"{k}: {n}" for k, n in self.by_kind().items())
        first = "; ".join(f.describe() for f in self.all()[:limit])
        return f"{self.total} distinct bad item(s) ({kinds}); first: {first}"

    def state_dict(self) -> dict[str, Any]:
        return {"faults": [list(k) + [m] for k, m in self.faults.items()]}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> DataHealth:
        h = cls()
        for kind, shard, key, message in (state or {}).get("faults", []):
            h.faults[(kind, shard, key)] = message
        return h


def gather_health(local: DataHealth | None) -> DataHealth:
    """The distinct faults of every rank merged into a new DataHealth (`local`: this rank's, or None for
    none). Under torch.distributed a collective: every rank calls it."""
    import torch.distributed as dist

    state = local.state_dict() if local is not None else {}
    states: list[dict[str, Any] | None] = [state]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        states = [None] * dist.get_world_size()
        dist.all_gather_object(states, state)
    merged = DataHealth()
    for s in states:
        merged.merge(DataHealth.from_state(s))
    return merged


def check_bad_fraction(reads: int, bad: int, max_fraction: float, min_reads: int, health: DataHealth) -> None:
    """Raise BadDataError when at least `min_reads` samples were read and more than `max_fraction` were bad."""
    if reads < max(1, min_reads) or bad <= max_fraction * reads:
        return
    raise BadDataError(f"{bad} of {reads} samples read were bad ({bad / reads:.1%}), more than "
                       f"data.max_bad_fraction = {max_fraction:g}; {health.summary()}. Fix or remove the named "
                       "shards, or raise data.max_bad_fraction")
