import os

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """Small synthetic dataset: 160 train + 48 val images at 64 px, 2 training shards."""
    from radio.data.synth import write_synth

    out = tmp_path_factory.mktemp("synth")
    write_synth(out, 160, val_count=48, size=64, shard_size=80, progress=False)
    return out
