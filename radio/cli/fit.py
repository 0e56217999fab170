"""`radio fit`: LightningCLI over DistillModule and ShardDataModule, with recipe validation before compute."""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

from lightning.pytorch.cli import LightningCLI

from radio.data.datamodule import ShardDataModule
from radio.train.module import DistillModule
from radio.train.validate import validate_recipe


class RadioCLI(LightningCLI):
    """LightningCLI whose recipes are validated before any class is instantiated."""

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        validate_recipe(cfg)


def run_fit(argv: Optional[Sequence[str]] = None, subcommand: str = "fit") -> RadioCLI:
    """Run `radio fit` with the given arguments (e.g. ["--config", "recipes/demo.yaml"])."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        return RadioCLI(DistillModule, ShardDataModule, args=[subcommand, *(argv or [])],
                        save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
                        parser_kwargs={"prog": "radio"})
