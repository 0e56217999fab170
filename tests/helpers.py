"""Shared test helpers: tiny teacher configs, tiny recipes, synthetic shards."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

TINY_CLIP = {
    "name": "clip", "model": "ViT-B-16", "pretrained": False, "seed": 1,
    "arch": {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32,
                                             "patch_size": 16},
             "text_cfg": {"width": 32, "heads": 2, "layers": 1}},
}
TINY_DINO = {
    "name": "dino_v2", "model": "vit_small_patch14_dinov2", "pretrained": False, "seed": 2,
    "arch": {"embed_dim": 48, "depth": 2, "num_heads": 2, "img_size": 56},
}
TINY_STUDENT = {"arch": "custom", "embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 16,
                "register_multiple": 4, "max_resolution": 256}


def tiny_recipe(train: str, val: str | None, root: Path, steps: int = 30, **data: Any) -> dict[str, Any]:
    """A complete fit recipe (LightningCLI layout) for a seconds-long CPU run at 64 px."""
    recipe = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": steps,
            "val_check_interval": steps, "check_val_every_n_epoch": None, "limit_val_batches": 2,
            "num_sanity_val_steps": 0, "log_every_n_steps": 1, "enable_progress_bar": False,
            "enable_model_summary": False, "default_root_dir": str(root),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(root), "name": "logs"}},
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"save_last": True, "every_n_train_steps": steps}}],
        },
        "model": {
            "student": dict(TINY_STUDENT),
            "teachers": [copy.deepcopy(TINY_CLIP), copy.deepcopy(TINY_DINO)],
            "optimizer": {"lr": 2e-3, "warmup_steps": 3},
        },
        "data": {"shards": train, "val_shards": val, "resolution": 64, "batch_size": 16, "num_workers": 0,
                 "shuffle_buffer": 64, **data},
    }
    return recipe


def write_recipe(recipe: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path
