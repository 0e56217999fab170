import pytest
import torch

from tests.eval.layouts import make_ade20k, make_imagefolder, make_voc
from tests.helpers import TINY_CLIP, TINY_DINO, TINY_STUDENT


@pytest.fixture(scope="session")
def imagefolder_dir(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("imagefolder"))


@pytest.fixture(scope="session")
def ade_dir(tmp_path_factory):
    return make_ade20k(tmp_path_factory.mktemp("ade20k"))


@pytest.fixture(scope="session")
def voc_dir(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("voc"))


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """An exported (untrained) tiny student with adaptors for the tiny CLIP and DINOv2 teachers, recorded in its
    provenance as `radio export` records them."""
    import teachers
    from radio.export import save_model
    from radio.model import ModelConfig, RADIOModel, StudentConfig, TeacherHead

    heads = []
    for spec in (TINY_CLIP, TINY_DINO):
        t = teachers.build(spec)
        heads.append(TeacherHead(spec["name"], t.summary_dim or None, t.feature_dim, t.patch_size))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = RADIOModel(ModelConfig(student=StudentConfig(**TINY_STUDENT), teachers=heads))
    return save_model(model, tmp_path_factory.mktemp("export") / "student",
                      provenance={"teacher_specs": [TINY_CLIP, TINY_DINO]})
