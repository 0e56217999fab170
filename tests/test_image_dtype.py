"""Integer image tensors: uint8 is read as 0-255 pixels (divided by 255) by teachers and students alike; any other
integer dtype or bool is refused with a clear error, never read as floats up to 255 (radio.types.float_images)."""
import pytest
import torch

import teachers
from radio.model import ModelConfig, RADIOModel, StudentConfig, TeacherHead
from radio.types import float_images
from tests.helpers import TINY_DINO, TINY_STUDENT

REFUSED = [torch.int8, torch.int16, torch.int32, torch.int64, torch.bool]


def _pixels(*shape):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_float_images_converts_uint8_keeps_floats_refuses_the_rest():
    x = _pixels(1, 3, 2, 2)
    y = float_images(x)
    assert y.dtype == torch.float32 and torch.equal(y, x.double().div(255).float())
    assert float(float_images(torch.full((1,), 255, dtype=torch.uint8))) == 1.0
    h = torch.rand(1, 3, 2, 2).half()
    assert float_images(h) is h
    for dtype in REFUSED:
        with pytest.raises(TypeError, match=rf"^who: images must be floating point .* got dtype {dtype}"):
            float_images(x.to(dtype), "who")


def test_a_teacher_reads_uint8_as_pixels_and_refuses_other_integers():
    t = teachers.build(TINY_DINO)
    x = _pixels(2, 3, 56, 56)
    a, b = t(x), t(x.float() / 255)
    assert torch.equal(a.features, b.features) and torch.equal(a.summary, b.summary)
    assert not torch.allclose(t(x.float()).features, a.features)  # what reading 0-255 as floats gave
    for dtype in REFUSED:
        with pytest.raises(TypeError, match=rf"teacher 'dino_v2': images must be .* got dtype {dtype}"):
            t(x.to(dtype))


def test_a_student_reads_uint8_as_pixels_and_refuses_other_integers():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = RADIOModel(ModelConfig(student=StudentConfig(**TINY_STUDENT),
                                       teachers=[TeacherHead("t", 8, 16, 16)])).eval()
    x = _pixels(2, 3, 32, 48)
    ref = x.float() / 255
    with torch.no_grad():
        a, b = model(x), model(ref)
        assert torch.equal(a.summary, b.summary) and torch.equal(a.features, b.features)
        assert torch.equal(model(x, adaptors=["t"])["t"].features, model(ref, adaptors=["t"])["t"].features)
        ia, ib = model.forward_intermediates(x, indices=1), model.forward_intermediates(ref, indices=1)
        assert torch.equal(ia.intermediates[0].features, ib.intermediates[0].features)
        for dtype in REFUSED:
            for run in (model, model.forward_intermediates):
                with pytest.raises(TypeError, match=rf"^student: images must be .* got dtype {dtype}"):
                    run(x.to(dtype))
