"""Each probe run on one model: from an Encoder, a Dataset and the options to a result for the report.

A probe that cannot run on a model (zero-shot without a text tower, fidelity of a teacher) raises `ProbeSkipped`
with the reason; a probe that cannot run on the data at all is found by `data_support` before any model loads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import teachers as teacher_lib
from eval.datasets import Dataset, DatasetError
from eval.features import AdaptorEncoder, Encoder, FeatureBank, StudentEncoder, TeacherEncoder, extract_split
from eval.options import EvalOptions


class ProbeSkipped(Exception):
    """This probe does not apply to this model; the message says why (it goes into the report's notes)."""


def data_support(probe: str, ds: Dataset | None, opts: EvalOptions) -> str | None:
    """None when `probe` can run on the data, else the reason it cannot."""
    if probe in ("knn", "linear", "zeroshot"):
        if ds is None or not ds.classes:
            return f"{probe}: the {ds.layout if ds else 'given'} data has no image-level labels"
        if probe == "zeroshot" and not any(ds.classes.values()) and not opts.classnames:
            return "zeroshot: no class names (info.json 'classes', ImageFolder folders or --classnames)"
    if probe == "seg" and (ds is None or ds.seg is None):
        return f"seg: the {ds.layout if ds else 'given'} data has no segmentation masks"
    if probe == "vlm" and not opts.vlm_data and not (ds is not None and ds.layout == "shards"
                                                    and is_synth(ds)):
        return "vlm: no question/answer data; pass --vlm-data DIR (LLaVA JSON train.json / val.json) or synth shards"
    return None


def is_synth(ds: Dataset) -> bool:
    """True for the embedded generated data (`radio data synth`)."""
    from eval.datasets import read_info

    return read_info(ds.root).get("name") == "radio-synth"


def features(enc: Encoder, ds: Dataset, opts: EvalOptions, dense: bool) -> tuple[FeatureBank, FeatureBank]:
    kw: dict[str, Any] = dict(dense=dense, masks=dense, limit=opts.limit, progress=opts.progress,
                              device=opts.device)
    return (extract_split(enc, ds.train, opts.resolution, opts.batch_size, **kw),
            extract_split(enc, ds.val, opts.resolution, opts.batch_size, **kw))


def linear(tr: FeatureBank, te: FeatureBank, opts: EvalOptions) -> dict[str, Any]:
    from eval.linear import linear_probe, pooled_inputs

    out = {}
    for f in tr.labels:
        if (tr.labels[f] >= 0).any() and (te.labels[f] >= 0).any():
            out[f] = linear_probe(pooled_inputs(tr.summary, tr.pooled), tr.labels[f],
                                  pooled_inputs(te.summary, te.pooled), te.labels[f], lrs=opts.linear_lrs,
                                  epochs=opts.linear_epochs, device=opts.device)
    return out


def seg(tr: FeatureBank, te: FeatureBank, ds: Dataset, opts: EvalOptions) -> dict[str, Any]:
    from eval.seg import seg_probe

    # dense banks with masks of a segmentation dataset (features(dense=True); data_support checks ds.seg)
    return {"masks": seg_probe(tr.dense, tr.masks, te.dense, te.masks,  # type: ignore[arg-type]
                               ds.seg.num_classes, ds.seg.classes,  # type: ignore[union-attr]
                               lrs=opts.seg_lrs, epochs=opts.seg_epochs, device=opts.device)}


def _text_teacher(enc: Encoder, opts: EvalOptions) -> tuple[Encoder, Any]:
    """(image encoder in the text tower's space, teacher holding the text tower) for zero-shot."""
    from eval.zeroshot import TEXT_TEACHERS

    if isinstance(enc, TeacherEncoder):
        if not hasattr(enc.teacher, "encode_text"):
            raise ProbeSkipped(f"zeroshot: teacher {enc.name!r} has no text tower")
        return enc, enc.teacher
    if not isinstance(enc, StudentEncoder):
        raise ProbeSkipped(f"zeroshot: {enc.name!r} is neither a radio student nor a teacher")
    names = enc.model.teacher_names()
    adaptor = opts.adaptor or next((n for n in TEXT_TEACHERS if n in names), None)
    if adaptor is None:
        raise ProbeSkipped(f"zeroshot: student {enc.name!r} has no {'/'.join(TEXT_TEACHERS)} adaptor "
                           f"(it has {', '.join(names)})")
    export = getattr(enc.model, "provenance", {})
    specs = enc.teacher_specs
    if adaptor not in specs:
        raise ProbeSkipped(f"zeroshot: student {enc.name!r} records no teacher spec for {adaptor!r}; cannot build "
                           f"its text tower (provenance: {sorted(export)})")
    return AdaptorEncoder(enc, adaptor), teacher_lib.build(enc.recorded_teacher(adaptor))


def zeroshot(enc: Encoder, ds: Dataset, te: FeatureBank | None, opts: EvalOptions) -> dict[str, Any]:
    from eval.zeroshot import readable_classnames, templates_named, text_classifier, zeroshot_eval

    image_enc, teacher = _text_teacher(enc, opts)
    if image_enc is not enc or te is None:
        te = extract_split(image_enc, ds.val, opts.resolution, opts.batch_size, limit=opts.limit,
                           progress=opts.progress, device=opts.device)
    templates = templates_named(opts.templates)
    out = {}
    for f, names in ds.classes.items():
        if f == "label" and opts.classnames:
            names = [n.strip() for n in Path(opts.classnames).read_text().splitlines() if n.strip()]
        if not names or not (te.labels[f] >= 0).any():
            continue
        if int(te.labels[f].max()) >= len(names):
            raise DatasetError(f"{opts.classnames or ds.root}: {len(names)} class names but label "
                               f"{int(te.labels[f].max())} in {f}")
        classifier = text_classifier(teacher.to(opts.device), readable_classnames(names), templates, opts.device)
        out[f] = zeroshot_eval(te.summary, te.labels[f], classifier.cpu()) | {"via": image_enc.name}
    return out


def fidelity(enc: Encoder, ds: Dataset, opts: EvalOptions) -> dict[str, Any]:
    from eval.fidelity import default_resolutions, fidelity_sweep

    if not isinstance(enc, StudentEncoder):
        raise ProbeSkipped(f"fidelity: {enc.name!r} is not a radio student (fidelity compares a student's adaptors "
                           f"with its teachers)")
    specs = enc.teacher_specs
    if not specs:
        raise ProbeSkipped(f"fidelity: student {enc.name!r} records no teachers in its provenance")
    teachers = {n: teacher_lib.build(enc.recorded_teacher(n)) for n in specs if n in enc.model.teacher_names()}
    images = []
    for rec in ds.val.records():
        images.append(rec.image)
        if len(images) >= opts.fidelity_images:
            break
    res = opts.resolutions or default_resolutions(enc.model.resolution_step)
    return fidelity_sweep(enc.model, teachers, images, res, batch_size=min(16, opts.batch_size),
                          device=opts.device, progress=opts.progress)


def vlm_conversations(ds: Dataset | None, opts: EvalOptions, out: Path):
    """(train, val) LLaVA conversations: from --vlm-data, or generated from synth shards into OUT/vlm_data."""
    from eval.vlm_data import read_llava_json, write_synth_vqa

    if opts.vlm_data:
        root = Path(opts.vlm_data)
        return read_llava_json(root / "train.json"), read_llava_json(root / "val.json")
    qa_dir = out / "vlm_data"
    limit = opts.vlm_limit or None
    # without --vlm-data, ds is synth shards (data_support)
    return (read_llava_json(write_synth_vqa(ds.train, qa_dir, limit=limit)),  # type: ignore[union-attr]
            read_llava_json(write_synth_vqa(ds.val, qa_dir, limit=limit)))  # type: ignore[union-attr]


def vlm(enc: Encoder, conversations, opts: EvalOptions) -> dict[str, Any]:
    from dataclasses import replace

    from eval.vlm import vlm_probe

    cfg = replace(opts.vlm, resolution=opts.resolution)
    if isinstance(enc, AdaptorEncoder):
        raise ProbeSkipped(f"vlm: {enc.name!r} is an adaptor view; use the student itself")
    return {"qa": vlm_probe(enc, conversations[0], conversations[1], cfg, device=opts.device,
                            progress=opts.progress)}


@torch.no_grad()
def pca_maps(enc: Encoder, ds: Dataset, opts: EvalOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (n, 3, R, R), feature maps (n, C, h, w)) of the first `opts.pca_images` val images."""
    from radio.data.transforms import eval_transform

    recs = []
    for rec in ds.val.records():
        recs.append(rec.image)
        if len(recs) >= opts.pca_images:
            break
    tf = eval_transform(enc.input_size(opts.resolution))
    x = torch.stack([tf(im) for im in recs]).to(opts.device)
    enc.to(opts.device)
    _, maps = enc.encode(x)
    show = torch.stack([eval_transform(opts.resolution)(im) for im in recs])
    return show, maps.float().cpu()
