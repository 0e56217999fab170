"""A local transformers model directory that ships its own code (`auto_map`), whose import leaves a marker file:
what a malicious model directory named by an untrusted spec would run (here it only writes the marker).

The model is a tiny DINOv2 under its own model_type, so that only `trust_remote_code` can load it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.helpers import TINY_HF

MODEL_TYPE = "radio_test_remote_dinov2"

CONFIG_CODE = '''import pathlib

from transformers import Dinov2Config

pathlib.Path({marker!r}).write_text("the model's own code ran")


class RemoteConfig(Dinov2Config):
    model_type = {model_type!r}
'''

MODEL_CODE = '''from transformers import Dinov2Model

from .configuration_remote import RemoteConfig


class RemoteModel(Dinov2Model):
    config_class = RemoteConfig
'''


def write_remote_model(directory: Path, marker: Path) -> Path:
    """A model directory whose config names its own code (configuration_remote.py, modeling_remote.py); importing
    that code creates `marker`."""
    directory.mkdir(parents=True)
    arch = {k: v for k, v in TINY_HF["arch"].items() if k != "model_type"}
    config = {"model_type": MODEL_TYPE, **arch,
              "auto_map": {"AutoConfig": "configuration_remote.RemoteConfig",
                           "AutoModel": "modeling_remote.RemoteModel"}}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "configuration_remote.py").write_text(CONFIG_CODE.format(marker=str(marker), model_type=MODEL_TYPE))
    (directory / "modeling_remote.py").write_text(MODEL_CODE)
    return directory


def remote_spec(directory: Path, trust: bool = True) -> dict:
    """An hf teacher spec (random weights) for the model in `directory`, asking for its code when `trust`."""
    return {"name": "hf", "model": str(directory), "pretrained": False, "seed": 4,
            "options": {"trust_remote_code": trust}}


def isolate_hf_modules(monkeypatch, tmp_path: Path) -> None:
    """transformers copies a model's own code into its modules cache and imports it from there as the package
    `transformers_modules`: a cache in tmp_path, first on sys.path, with that package imported afresh."""
    import transformers.dynamic_module_utils as dmu

    cache = tmp_path / "hf_modules"
    cache.mkdir()
    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(cache))
    monkeypatch.syspath_prepend(str(cache))
    for name in [n for n in sys.modules if n.split(".")[0] == "transformers_modules"]:
        monkeypatch.delitem(sys.modules, name)
