"""Shared test helpers: tiny teacher configs, tiny recipes, synthetic shards."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import yaml

from radio.model.radio_model import ModelConfig, RADIOModel
from radio.normalize import NORMALIZERS, Normalizer

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
# SigLIP through open_clip's timm trunk: the same classes as ViT-SO400M-14-SigLIP-384 (CustomTextCLIP, TimmModel,
# a timm VisionTransformer with MAP pooling and no class token); timm's test_vit3 is the small trunk.
TINY_SIGLIP = {
    "name": "siglip", "model": "ViT-B-16-SigLIP", "pretrained": False, "seed": 3,
    "arch": {"embed_dim": 96, "vision_cfg": {"image_size": 64, "timm_model_name": "test_vit3"},
             "text_cfg": {"width": 32, "heads": 2, "layers": 1, "context_length": 16, "vocab_size": 1000}},
}
# SAM's ImageEncoderViT on a 64 px canvas (windowed + global attention, relative positions, neck).
TINY_SAM = {
    "name": "sam", "model": "vit_b", "pretrained": False, "seed": 5,
    "arch": {"embed_dim": 32, "depth": 2, "num_heads": 2, "global_attn_indexes": [1], "img_size": 64,
             "patch_size": 8, "window_size": 4, "out_chans": 32},
}
_HF_TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
            "patch_size": 8}
# transformers vision towers: DINOv2 (interpolates on its own), SigLIP (fixed size unless asked), SigLIP2 NaFlex.
TINY_HF = {"name": "hf", "pretrained": False, "seed": 4,
           "arch": {"model_type": "dinov2", "image_size": 32, **_HF_TINY}}
TINY_HF_ARCHS = {
    "dinov2": {"model_type": "dinov2", "image_size": 32, **_HF_TINY},
    "dinov2_with_registers": {"model_type": "dinov2_with_registers", "image_size": 32, "num_register_tokens": 4,
                              **_HF_TINY},
    "siglip_vision_model": {"model_type": "siglip_vision_model", "image_size": 32, **_HF_TINY},
    "clip_vision_model": {"model_type": "clip_vision_model", "image_size": 32, **_HF_TINY},
    "siglip2_vision_model": {"model_type": "siglip2_vision_model", "num_patches": 16, **_HF_TINY},
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
            "callbacks": [{"class_path": "radio.train.callbacks.RadioCheckpoint",
                           "init_args": {"every_n_train_steps": steps, "keep_last": 2}}],
        },
        "model": {
            "student": dict(TINY_STUDENT),
            "teachers": [copy.deepcopy(TINY_CLIP), copy.deepcopy(TINY_DINO)],
            "optimizer": {"lr": 2e-3, "warmup_steps": 3},
        },
        "data": {"shards": train, "val_shards": val, "resolution": 64, "batch_size": 16, "num_workers": 0, **data},
    }
    return recipe


def write_recipe(recipe: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


class SignedAffineNormalizer(Normalizer):
    """A test normalizer with non-trivial statistics and a derived non-persistent constant (like PHI-S's
    Hadamard matrix): forward y = signs * (x - shift) / scale, inverse x = signs * y * scale + shift."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.register_buffer("shift", torch.linspace(-1.0, 1.0, dim))
        self.register_buffer("scale", 1.0 + torch.arange(dim, dtype=torch.float32) / dim)
        self.register_buffer("signs", torch.pow(-1.0, torch.arange(dim, dtype=torch.float32)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.signs * (x - self.shift) / self.scale

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self.signs * y * self.scale + self.shift


TEST_NORMALIZER = "test_signed_affine"
if TEST_NORMALIZER not in NORMALIZERS:
    NORMALIZERS.register(TEST_NORMALIZER, SignedAffineNormalizer)


def export_recipe(train: str, val: str | None, root: Path, steps: int = 4) -> dict[str, Any]:
    """tiny_recipe with the test normalizer on the CLIP teacher (so the inverse normalizer is observable)."""
    recipe = tiny_recipe(train, val, root, steps=steps)
    recipe["model"]["teachers"][0]["normalizer"] = TEST_NORMALIZER
    return recipe


NAMES = ["clip", "dino_v2"]


def reference_model(ckpt) -> RADIOModel:
    """The trained student, read straight from the Lightning checkpoint (independent of radio.export)."""
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = RADIOModel(ModelConfig.from_dict(raw["radio_model_config"]))
    model.load_state_dict({k[len("model."):]: v for k, v in raw["state_dict"].items() if k.startswith("model.")})
    return model.eval()


def assert_same_outputs(a: RADIOModel, b, x: torch.Tensor, adaptors=NAMES) -> None:
    """Bit-identical backbone outputs (NLC and NCHW) and adaptor outputs of two students."""
    with torch.no_grad():
        for fmt in ("NLC", "NCHW"):
            oa, ob = a(x, feature_fmt=fmt), b(x, feature_fmt=fmt)
            assert torch.equal(oa.summary, ob.summary) and torch.equal(oa.features, ob.features)
        if adaptors:
            ra, rb = a(x, adaptors=adaptors), b(x, adaptors=adaptors)
            for n in adaptors:
                assert torch.equal(ra[n].features, rb[n].features)
                assert (ra[n].summary is None) == (rb[n].summary is None)
                if ra[n].summary is not None:
                    assert torch.equal(ra[n].summary, rb[n].summary)


def fit_tiny(synth_dir: Path, root: Path, steps: int):
    """(recipe path, LightningCLI) of a `radio fit` of tiny_recipe on the synth data, validated on its val split."""
    from radio.cli.fit import run_fit

    recipe = write_recipe(tiny_recipe(str(synth_dir / "train"), str(synth_dir / "val"), root, steps=steps),
                          root / "recipe.yaml")
    return recipe, run_fit(["--config", str(recipe)])


def tiny_student(seed: int = 0, normalizer: str = "phis") -> RADIOModel:
    """A random 1-block student with two heads (one with a summary and a PHI-S normalizer: float32, float64 and
    bool tensors), small enough to export and load in milliseconds."""
    from radio.model.radio_model import TeacherHead
    from radio.model.vit import StudentConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = StudentConfig(arch="custom", embed_dim=16, depth=1, num_heads=2, patch_size=8, max_resolution=32,
                                register_multiple=2)
        model = RADIOModel(ModelConfig(student, [TeacherHead("a", 8, 12, normalizer=normalizer),
                                                 TeacherHead("b", None, 8)]))
        for norm in model.normalizers.values():  # fitted statistics, so the normalizer is not the identity
            if norm.needs_statistics:
                norm.update(torch.randn(64, norm.dim) * 2 + 1)
                norm.freeze()
    return model.eval()
