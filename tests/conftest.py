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


@pytest.fixture(scope="session")
def fit_checkpoint(synth_dir, tmp_path_factory):
    """A real `radio fit` checkpoint of the tiny recipe (64 px, 4 steps, test normalizer on CLIP)."""
    from radio.cli.fit import run_fit
    from tests.helpers import export_recipe, write_recipe

    root = tmp_path_factory.mktemp("fit_export")
    recipe = write_recipe(export_recipe(str(synth_dir / "train"), None, root), root / "recipe.yaml")
    cli = run_fit(["--config", str(recipe)])
    return cli.trainer.checkpoint_callback.last_model_path
