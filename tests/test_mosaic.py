import pytest
import torch

import teachers
from radio.mosaic import crop_tiles, mosaic_features, plan_mosaic, tile_images
from radio.train.targets import teacher_targets
from tests.helpers import TINY_CLIP


def patchify_conv(patch: int, channels: int = 5, seed: int = 0) -> torch.nn.Conv2d:
    """A teacher whose features are strictly local: one feature vector per patch, from that patch only."""
    torch.manual_seed(seed)
    return torch.nn.Conv2d(3, channels, kernel_size=patch, stride=patch).requires_grad_(False)


def test_sam_example_from_the_design():
    plan = plan_mosaic((27, 27), 16, (1024, 1024))
    assert plan.tiles == (2, 2) and plan.tile == (432, 432) and plan.cell == (512, 512)
    assert plan.tile_grid == (27, 27) and plan.per_canvas == 4
    assert plan_mosaic((40, 40), 16, (1024, 1024)) is None  # 640 px tiles: only one fits, no mosaic
    assert plan_mosaic((20, 40), 16, (1024, 1024)).tiles == (3, 1)


@pytest.mark.parametrize("grid, canvas, batch", [((3, 3), (96, 96), 9), ((4, 4), (128, 128), 7),
                                                 ((2, 3), (80, 112), 5), ((5, 5), (176, 176), 3)])
def test_tiles_features_equal_each_images_own_features_for_a_local_teacher(grid, canvas, batch):
    patch = 8
    conv = patchify_conv(patch)
    plan = plan_mosaic(grid, patch, canvas)
    assert plan is not None
    images = torch.rand(batch, 3, grid[0] * patch, grid[1] * patch)
    pad = (0.5, 0.4, 0.3)
    calls = []

    def teacher(x):
        calls.append(x.shape[0])
        return conv(x)

    tiled = mosaic_features(teacher, images, plan, pad)
    own = conv(images)
    assert tiled.shape == own.shape == (batch, 5, *grid)
    assert torch.equal(tiled, own)
    # one forward, on ceil(B / k^2) canvases instead of B images
    assert calls == [plan.num_canvases(batch)] and plan.num_canvases(batch) == -(-batch // plan.per_canvas)


def test_tiles_are_placed_row_major_with_padding_everywhere_else():
    plan = plan_mosaic((2, 2), 4, (20, 20))  # 8 px tiles, 2 x 2 cells of 8 px, 4 px of canvas padding
    assert plan.tiles == (2, 2) and plan.cell == (8, 8)
    images = torch.arange(1, 6, dtype=torch.float).view(5, 1, 1, 1).expand(5, 3, 8, 8)
    canvases = tile_images(images, plan, (0.0, 0.0, 0.0))
    assert canvases.shape == (2, 3, 20, 20)
    assert canvases[0, 0, 0, 0] == 1 and canvases[0, 0, 0, 8] == 2 and canvases[0, 0, 8, 0] == 3
    assert canvases[0, 0, 8, 8] == 4 and canvases[1, 0, 0, 0] == 5
    assert canvases[1, :, 8:].abs().sum() == 0 and canvases[:, :, 16:].abs().sum() == 0  # empty cells, margin
    # crop_tiles inverts the placement on a grid-shaped signal
    feats = torch.nn.functional.avg_pool2d(canvases, 4)
    assert torch.equal(crop_tiles(feats, plan, 5)[:, 0, 0, 0], torch.arange(1, 6, dtype=torch.float))


def test_bad_sizes_are_errors():
    with pytest.raises(ValueError, match="canvas .* is not a multiple of the teacher's patch size 16"):
        plan_mosaic((2, 2), 16, (100, 100))
    plan = plan_mosaic((2, 2), 16, (64, 64))
    with pytest.raises(ValueError, match="tiles must be 32x32"):
        tile_images(torch.rand(1, 3, 16, 16), plan, (0, 0, 0))


def test_real_fixed_canvas_teacher_runs_once_per_k_squared_images():
    clip = teachers.build(TINY_CLIP)  # open_clip ViT, fixed 64 px canvas, patch 16
    assert not clip.dynamic_resolution and clip.input_size == 64
    seen = []
    hook = clip.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    images = torch.rand(8, 3, 32, 32)  # student grid 2 x 2 at patch 16 -> 2 x 2 tiles in the 64 px canvas
    t = teacher_targets(clip, images, (2, 2), mosaic=True)
    assert t.mosaic and t.summary is None and t.features.shape == (8, clip.feature_dim, 2, 2)
    assert seen == [torch.Size([2, 3, 64, 64])]  # 8 images, 2 forwards' worth of canvases: k^2 = 4 fewer
    seen.clear()
    plain = teacher_targets(clip, images, (2, 2), mosaic=False)
    assert not plain.mosaic and plain.summary.shape == (8, clip.summary_dim)
    assert plain.features.shape == (8, clip.feature_dim, 4, 4) and seen == [torch.Size([8, 3, 64, 64])]
    # a grid too large for two tiles falls back to the plain path
    assert not teacher_targets(clip, torch.rand(2, 3, 48, 48), (3, 3), mosaic=True).mosaic
    hook.remove()


def test_sam_runs_on_a_mosaic_without_summary():
    from tests.helpers import TINY_SAM

    sam = teachers.build(TINY_SAM)  # segment_anything ImageEncoderViT: 64 px canvas, patch 8, no summary
    seen = []
    hook = sam.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    images = torch.rand(20, 3, 32, 32)  # student grid 2 x 2 -> 16 px tiles, 4 x 4 of them per SAM canvas
    t = teacher_targets(sam, images, (2, 2), mosaic=True)
    hook.remove()
    assert t.mosaic and t.summary is None and t.features.shape == (20, sam.feature_dim, 2, 2)
    assert seen == [torch.Size([2, 3, 64, 64])]  # ceil(20 / 16) canvases
    # the first tile's window is what SAM gives for the first canvas's top-left corner
    canvas = tile_images(torch.nn.functional.interpolate(images[:16], size=(16, 16), mode="bilinear",
                                                         antialias=True).clamp(0, 1),
                         plan_mosaic((2, 2), 8, (64, 64)), sam.mean)
    assert torch.allclose(sam(canvas[:1]).features[0, :, :2, :2], t.features[0], atol=1e-5)
