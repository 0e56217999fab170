"""Patch-aligned random resized crops (radio.cache.aligned): pure geometry on canvases and feature grids."""
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2.functional import to_dtype, to_image

from radio.cache.aligned import (
    CropView,
    GridGeometry,
    box_in,
    canvas_image,
    crop_grid,
    crop_image,
    draw_view,
    is_aligned,
    whole_view,
)
from radio.data.transforms import eval_transform


def _views(ref, n=200, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return [draw_view(ref, 0.35, generator=g, **kw) for _ in range(n)]


@pytest.mark.parametrize("size", [(64, 64), (97, 64), (64, 97), (123, 250), (301, 77)])
def test_canvas_at_scale_one_is_the_canvas_the_cache_was_written_for(size):
    img = Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), dtype=torch.uint8).numpy())
    for r in (56, 64):
        ours = canvas_image(to_image(img), r, 1)
        assert ours.shape == (3, r, r)
        assert torch.equal(to_dtype(ours, torch.float32, scale=True), eval_transform(r)(img))


def test_canvas_at_a_larger_scale_has_the_same_geometry():
    """A horizontal ramp image: each canvas column's value is its position in the image, so a canvas drawn at
    3x its size, averaged back over 3 x 3 pixels, must give the scale-1 canvas (a one-pixel shift would not)."""
    w, h = 150, 100
    ramp = torch.linspace(0, 1, w).expand(3, h, w).clone()
    one = canvas_image(ramp, 48, 1)
    three = F.avg_pool2d(canvas_image(ramp, 48, 3)[None], 3)[0]
    assert three.shape == one.shape == (3, 48, 48)
    step = float(one[0, 0, 1] - one[0, 0, 0])  # the ramp's step per canvas pixel
    assert (three - one).abs().max() < 0.1 * step
    assert (three[..., 1:] - one[..., :-1]).abs().max() > 0.5 * step


def test_views_follow_random_resized_crop_in_whole_cells():
    ref = GridGeometry(96, 8, (12, 12))
    views = _views(ref, n=400)
    for v in views:
        assert 0 <= v.top and v.top + v.height <= 12 and 0 <= v.left and v.left + v.width <= 12
        area = v.height * v.width / 144
        assert area >= 0.35 * 0.8 and 3 / 4 * 0.7 <= v.width / v.height <= 4 / 3 * 1.4  # up to rounding to cells
        assert v.whole == ((v.top, v.left, v.height, v.width) == (0, 0, 12, 12))
    flips = sum(v.flip for v in views) / len(views)
    assert 0.4 < flips < 0.6
    assert len({(v.top, v.left, v.height, v.width) for v in views}) > 50
    whole = _views(ref, n=400, whole_prob=0.3)
    frac = sum(v.whole and not v.flip for v in whole) / len(whole)
    assert 0.22 < frac < 0.4


def test_a_grid_that_does_not_cover_its_canvas_never_has_a_whole_random_view():
    ref = GridGeometry(72, 16, (4, 4))  # 4 cells of 16 px on 72 px (like 27 cells of 14 px on 384)
    views = _views(ref, n=300)
    assert any((v.top, v.left, v.height, v.width) == (0, 0, 4, 4) for v in views)
    assert not any(v.whole for v in views)
    assert whole_view(ref).whole


def _local_features(x, patch, weight):
    """A teacher whose features are local: a strided convolution, one output per patch."""
    return F.conv2d(x[None], weight, stride=patch)[0]


@pytest.mark.parametrize("sizes", [(8, [8, 4]), (16, [16, 8, 4])])
def test_cropping_the_cached_grid_equals_the_features_of_the_cropped_image(sizes):
    """For local features, the aligned view cut from the canvas's grid is the grid of the cut image, for the
    reference grid and every grid nested in it, with flips (kernels symmetric under a horizontal flip)."""
    ref_patch, patches = sizes
    torch.manual_seed(0)
    canvas = torch.rand(3, 64, 64)
    ref = GridGeometry(64, ref_patch, (64 // ref_patch,) * 2)
    kernels = {}
    for p in patches:
        w = torch.randn(5, 3, p, p)
        kernels[p] = w + w.flip(-1)
    cached = {p: _local_features(canvas, p, kernels[p]) for p in patches}
    views = _views(ref, n=60, whole_prob=0.1)
    assert any(v.flip for v in views) and any(not v.whole for v in views)
    for v in views:
        crop = crop_image(canvas, v, ref, None)
        for p in patches:
            geom = GridGeometry(64, p, (64 // p,) * 2)
            assert is_aligned(box_in(v, ref, geom), geom.grid) or v.whole
            got = crop_grid(cached[p], v, ref, geom)
            assert torch.allclose(got, _local_features(crop, p, kernels[p]), atol=1e-5)
    # the test can fail: a view one cell lower is a different crop
    v = next(v for v in views if v.top + v.height < ref.grid[0] and not v.whole)
    moved = v._replace(top=v.top + 1)
    assert not torch.allclose(crop_grid(cached[ref_patch], moved, ref, ref),
                              _local_features(crop_image(canvas, v, ref, None), ref_patch, kernels[ref_patch]))


def test_a_grid_off_the_reference_cells_is_resampled_bilinearly_at_the_view_cells():
    """On a linear ramp, bilinear sampling is exact: the resampled values are the ramp at the centres of
    round(extent) cells spanning the view (inside the outermost cell centres, where nothing is clamped)."""
    ref = GridGeometry(48, 12, (4, 4))
    geom = GridGeometry(48, 8, (6, 6))
    ys = torch.arange(6, dtype=torch.float32) + 0.5
    ramp = (2 * ys[:, None] + 3 * ys[None, :] + 1)[None].repeat(2, 1, 1)
    checked = 0
    for v in _views(ref, n=100):
        top, left, bottom, right = (float(b) for b in box_in(v, ref, geom))
        got = crop_grid(ramp, v, ref, geom)
        oh, ow = max(1, round(bottom - top)), max(1, round(right - left))
        assert got.shape == (2, oh, ow)
        cy = top + (torch.arange(oh) + 0.5) * (bottom - top) / oh
        cx = left + (torch.arange(ow) + 0.5) * (right - left) / ow
        if v.flip:
            cx = cx.flip(0)
        want = 2 * cy[:, None] + 3 * cx[None, :] + 1
        inside = ((cy >= 0.5) & (cy <= 5.5))[:, None] & ((cx >= 0.5) & (cx <= 5.5))[None, :]
        assert torch.allclose(got[0][inside], want[inside], atol=1e-4)
        checked += int(inside.sum())
    assert checked > 500


def test_crop_grid_rejects_a_grid_of_the_wrong_size():
    ref = GridGeometry(64, 16, (4, 4))
    with pytest.raises(ValueError, match=r"features of \(5, 5\) cells, expected \(4, 4\)"):
        crop_grid(torch.zeros(3, 5, 5), CropView(0, 0, 2, 2, False, False), ref, ref)


def test_student_image_is_the_box_resized_and_flipped():
    ref = GridGeometry(32, 8, (4, 4))
    canvas = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)  # drawn at scale 2
    v = CropView(1, 2, 2, 2, True, False)
    x = crop_image(canvas, v, ref, 32)
    want = F.interpolate(canvas[None, :, 16:48, 32:64].float() / 255, size=(32, 32), mode="bilinear",
                         antialias=True, align_corners=False)[0].flip(-1)
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    assert (x - want).abs().max() < 2 / 255
    assert math.isclose(float(crop_image(canvas, whole_view(ref), ref, 64).mean()), float(canvas.float().mean() / 255),
                        rel_tol=1e-6)
