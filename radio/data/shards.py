"""Webdataset shards: writing, resolving shard patterns, decoding samples, packing image folders.

A sample is a set of tar members sharing a key: `__key__`, an image (`jpg|jpeg|png|webp`), an optional `json`
(with `label`), an optional `seg.png` mask. img2dataset's output is valid input.

Every image and mask of a shard is decoded by `open_image`, which reads the size from the header first: an image
of more than `max_pixels` pixels (default MAX_IMAGE_PIXELS, PIL's decompression-bomb warning threshold) is
`OversizedImage`, bad data like an undecodable one, and is never decoded (a 12000 x 12000 PNG can be 140 KB).
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
MAX_IMAGE_PIXELS = 89_478_485  # PIL's default decompression-bomb warning threshold (Image.MAX_IMAGE_PIXELS)
_FILE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class ShardSink:
    """Writes samples into numbered shards `DIR/000000.tar`, `DIR/000001.tar`, ... (webdataset.ShardWriter)."""

    def __init__(self, directory: str | Path, shard_size: int = 1000, start: int = 0) -> None:
        import webdataset as wds

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.paths: list[str] = []
        self.count = 0
        pattern = str(self.directory / "%06d.tar")
        self._writer = wds.ShardWriter(pattern, maxcount=shard_size, verbose=0, start_shard=start,
                                       post=self.paths.append)

    def write(self, sample: dict[str, Any]) -> None:
        self._writer.write(sample)
        self.count += 1

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> ShardSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def resolve_shards(pattern: str, what: str = "shards") -> list[str]:
    """Expand a shard spec into existing files, or fail naming the spec or the missing file.

    Accepts brace patterns (`DIR/{000000..000009}.tar`), globs (`DIR/*.tar`), a directory (all its `.tar`
    files) and several specs joined by `::`.
    """
    from braceexpand import braceexpand

    if not pattern:
        raise FileNotFoundError(f"{what}: empty shard pattern")
    files: list[str] = []
    for part in pattern.split("::"):
        part = os.path.expanduser(part)
        if os.path.isdir(part):
            found = sorted(glob.glob(os.path.join(part, "*.tar")))
            if not found:
                raise FileNotFoundError(f"{what}: directory {part!r} holds no .tar shard")
            files.extend(found)
            continue
        for p in braceexpand(part):
            if any(c in p for c in "*?["):
                found = sorted(glob.glob(p))
                if not found:
                    raise FileNotFoundError(f"{what}: shard pattern {p!r} matches no file")
                files.extend(found)
            elif not os.path.isfile(p):
                raise FileNotFoundError(f"{what}: shard {p!r} (from {pattern!r}) does not exist")
            else:
                files.append(p)
    if not files:
        raise FileNotFoundError(f"{what}: shard pattern {pattern!r} matches no file")
    return files


@dataclass
class ErrorCounter:
    """Counts skipped samples/shards by kind; used as a webdataset `handler` that logs and continues."""

    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def __call__(self, exn: BaseException) -> bool:
        where = getattr(exn, "radio_where", None) or ""
        kind = type(exn).__name__
        self.counts[kind] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{kind} {where}: {exn}")
        log.warning("skipped bad data (%s) %s: %s", kind, where, exn)
        return True  # continue

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class SampleError(ValueError):
    """A sample that cannot be decoded; carries shard and key in `radio_where`."""

    def __init__(self, msg: str, url: str | None, key: str | None) -> None:
        super().__init__(msg)
        self.radio_url, self.radio_key = url, key
        self.radio_where = f"shard={url} key={key}"


class OversizedImage(SampleError):
    """An image whose header declares more pixels than allowed; it was not decoded."""

    radio_kind = "OversizedImage"


def open_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, mode: str | None = "RGB") -> Image.Image:
    """Decode image bytes (converted to `mode`; None keeps the file's), refusing without decoding any image whose
    header declares more than `max_pixels` pixels: raises OversizedImage (url and key unset) for those, and
    whatever PIL raises for undecodable bytes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked just below
            img = Image.open(io.BytesIO(data))  # reads the header only
        _check_pixels(img.size, max_pixels)
        pil_limit = Image.MAX_IMAGE_PIXELS
        with warnings.catch_warnings():  # formats that pick their frame (and size) while loading
            # PIL's warning means "over its threshold": over ours too when ours is lower; a higher one is the user's
            warnings.simplefilter("error" if pil_limit and max_pixels <= pil_limit else "ignore",
                                  Image.DecompressionBombWarning)
            img.load()
        _check_pixels(img.size, max_pixels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise OversizedImage(f"oversized image, refused by PIL before decoding: {e} (data.max_image_pixels = "
                             f"{max_pixels:,})", None, None) from e
    return img.convert(mode) if mode is not None else img


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w * h > max_pixels:
        raise OversizedImage(f"oversized image: {w}x{h} = {w * h:,} pixels, more than data.max_image_pixels = "
                             f"{max_pixels:,}; not decoded", None, None)


@dataclass
class Sample:
    key: str
    image: Image.Image
    label: int = -1
    meta: dict[str, Any] = field(default_factory=dict)
    mask: np.ndarray | None = None
    url: str = ""


def decode_sample(raw: dict[str, Any], need_mask: bool = False, max_pixels: int = MAX_IMAGE_PIXELS) -> Sample:
    """Decode a raw webdataset sample (bytes per extension) into a Sample; errors name shard and key. An image
    or mask of more than `max_pixels` pixels is OversizedImage (a SampleError), found before decoding."""
    key, url = raw.get("__key__"), raw.get("__url__")
    ext = next((e for e in IMAGE_EXTS if e in raw), None)
    if ext is None:
        raise SampleError(f"no image member (one of {IMAGE_EXTS}); members: {sorted(raw)}", url, key)
    try:
        img = open_image(raw[ext], max_pixels)
    except OversizedImage as e:
        raise OversizedImage(f"{ext} image: {e}", url, key) from None
    except Exception as e:  # truncated or garbage image bytes
        raise SampleError(f"cannot decode {ext} image: {e}", url, key) from e
    meta: dict[str, Any] = {}
    if "json" in raw:
        try:
            meta = json.loads(raw["json"])
        except Exception as e:
            raise SampleError(f"bad json member: {e}", url, key) from e
    try:
        label = int(meta.get("label", -1)) if isinstance(meta, dict) else -1
    except (TypeError, ValueError, OverflowError) as e:  # OverflowError: an infinite label
        raise SampleError(f"json member: 'label' must be an integer class index, got {meta.get('label')!r}",
                          url, key) from e
    mask = None
    if need_mask:
        if "seg.png" not in raw:
            raise SampleError("missing seg.png member", url, key)
        try:
            mask = np.array(open_image(raw["seg.png"], max_pixels, mode=None))
        except OversizedImage as e:
            raise OversizedImage(f"seg.png: {e}", url, key) from None
        except Exception as e:
            raise SampleError(f"cannot decode seg.png: {e}", url, key) from e
    # a webdataset sample always carries its __key__ (the readers set it with every member)
    return Sample(key=cast(str, key), image=img, label=label, meta=meta if isinstance(meta, dict) else {},
                  mask=mask, url=url or "")


def iter_raw_samples(urls: list[str], handler=None) -> Iterable[dict[str, Any]]:
    """Raw samples of the shards in order (single process, no shuffling): evaluation and caching."""
    import webdataset as wds

    handler = handler or wds.reraise_exception
    return wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(handler=handler))


def pack_folder(src: str | Path, out: str | Path, shard_size: int = 1000, progress: bool = True,
                max_pixels: int = MAX_IMAGE_PIXELS) -> dict[str, Any]:
    """Pack an image folder, or an ImageFolder tree (class = sub-folder name), into shards.

    Unreadable images, and images of more than `max_pixels` pixels (not decoded), are skipped and counted.
    Writes OUT/000000.tar ... and OUT/info.json.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"pack: source {str(src)!r} is not a directory")
    subdirs = sorted(d for d in src.iterdir() if d.is_dir())
    files: list[tuple[Path, int]] = []
    if subdirs:
        classes = [d.name for d in subdirs]
        for ci, d in enumerate(subdirs):
            files += [(p, ci) for p in sorted(d.rglob("*")) if p.suffix.lower() in _FILE_EXTS]
    else:
        classes = []
        files = [(p, -1) for p in sorted(src.iterdir()) if p.suffix.lower() in _FILE_EXTS]
    if not files:
        raise FileNotFoundError(f"pack: no image files under {str(src)!r}")
    skipped: list[str] = []
    it: Iterable = files
    if progress:
        from tqdm import tqdm

        it = tqdm(files, desc="pack", unit="img", leave=False)
    with ShardSink(out, shard_size=shard_size) as sink:
        for i, (path, ci) in enumerate(it):
            try:
                data = path.read_bytes()
                im = open_image(data, max_pixels, mode=None)
                fmt = (im.format or "").lower()
            except Exception as e:
                skipped.append(f"{path}: {type(e).__name__}: {e}")
                log.warning("pack: skipped unreadable image %s (%s)", path, e)
                continue
            ext = {"jpeg": "jpg", "mpo": "jpg"}.get(fmt, fmt)
            if ext not in IMAGE_EXTS:  # re-encode formats webdataset decoders do not know
                buf = io.BytesIO()
                im.convert("RGB").save(buf, format="PNG")
                data, ext = buf.getvalue(), "png"
            meta = {"label": ci, "path": str(path.relative_to(src))}
            if ci >= 0:
                meta["class"] = classes[ci]
            sink.write({"__key__": f"{i:08d}", ext: data, "json": json.dumps(meta).encode()})
    info = {"name": src.name, "label_field": "label", "classes": classes, "count": sink.count,
            "skipped": len(skipped), "skipped_files": skipped[:100]}
    (out / "info.json").write_text(json.dumps(info, indent=2))
    return info | {"shards": sink.paths}
