"""The feature cache: `radio cache` runs a recipe's teachers once; training reads their outputs with augmentation
kept alive.

Recipe: `data.cache: {dir: DIR, teachers: [...], align: NAME, summary: exact, whole_view: 0.25}` (CacheConfig).
DIR holds one folder per teacher as `radio cache` writes it (meta.json + one feature shard per image shard,
same file name, same keys in the same order). The listed teachers (default: every teacher of the recipe) are
read from the cache in every partition they supervise; the others run online in the same step (mixed runs).

The canvas, per teacher family: the centre square of the image at the teacher's cache resolution
(`eval_transform(R)`): a dynamic teacher (DINOv2) at a fixed R = the recipe's main student grid x its patch; a
fixed-size teacher (CLIP, SigLIP) at its input size (SigLIP-SO400M-14-384: 27 x 27 cells of 14 px on 384 px);
SAM at its padded canvas, which the square image fills (its valid region is the whole canvas). All canvases are
the same centre square of the image, each at its own resolution (to within torchvision's rounding of one pixel).

The aligned crop (radio.cache.aligned): per sample, one random resized crop is drawn in whole cells of a
*reference* grid (`align`, default the teacher with the coarsest cells, so that grids that nest in it are cut on
their cell borders too) with torchvision's sampling (area fraction ~ U(min_crop_scale, 1), aspect 3/4..4/3),
plus a flip with probability 1/2. The student's image is that box of the reference canvas (drawn at
ceil(resolution / R) times its size, so a high-resolution partition is not upsampled from a small canvas),
resized to the partition's resolution, flipped. Each cached grid gives the same box, flipped: its whole cells
where the box falls on its cell borders (exact; always for the reference), otherwise bilinear samples at the
centres of round(extent) cells spanning the box. In the module (radio.train.targets.cached_targets) each crop is
resized to the grid the teacher would have given online for the student image (dynamic: the student grid; fixed
size: its own grid) and then goes through the normal normalizer, grid matching and losses.

The online reference of "the same loss from the cache as online": the teacher run on the same canvas, its
output cut with the same box and flipped (tests/cache/test_cached.py shows the module's loss from the cache
equals it to float16 tolerance). It is not the teacher run on the cropped image (a ViT's features of a crop
are not the crop of its features: attention sees the whole canvas); for a teacher whose features are local
(a strided convolution) both agree exactly, which shows the crop is aligned.

Summary targets: a cached summary describes the whole canvas. `summary: exact` (default) uses it only for
samples whose view is the whole canvas, unflipped; `whole_view` is the probability of drawing that view (so a
quarter of the samples train the summary heads by default); the other samples carry no summary target (the loss
is the mean over the samples that do). `summary: approximate` uses the canvas summary for every crop and flip.

Nothing is filled in. A cache written for another teacher, architecture, patch size, resolution or format, or a
training shard without its feature shard, or a key that an intact feature shard lacks although the writer did not
skip it (meta.json `skipped_keys`), is an error naming meta.json, the shard or the key, before any compute. A
single sample whose cached record the writer skipped (its image did not decode), was lost to damage of its feature
shard, or is malformed (an array of the wrong shape, an undecodable member) is bad data: `FeatureError` names the
feature shard and the key, and the sample is skipped and counted like an undecodable image (radio.data.health).
Records are read by random access beside their images (radio.cache.index). Validation still runs the
teachers online.

Modules: format (the on-disk layout, meta.json, records, CacheMismatchError), config (the recipe's `data.cache`
section, its teachers' specs and student grid), checks (every check of a cache against a recipe, its shards and
the built teachers), writer (`cache_teacher(s)`, `cache_recipe` for `radio cache`), reader (the cached teachers
of a run, one record; FeatureError), index (random access to the records beside the image index), aligned (the
patch-aligned crop geometry), views (the datamodule's hook: aligned views and batches of cached targets).
"""
