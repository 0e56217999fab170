"""`radio eval PROBE`: the probes' command line (arguments shared by every probe, one sub-command per probe)."""
from __future__ import annotations

import argparse
import sys

PROBE_HELP = {
    "knn": "kNN top-1 on summary features (k=20, T=0.07)",
    "linear": "linear probe (learning rates x pooling, best on val)",
    "seg": "segmentation probe (BN + 1x1 conv on patch features, mIoU)",
    "zeroshot": "zero-shot classification through the CLIP/SigLIP adaptor and its teacher's text tower",
    "fidelity": "fidelity of a student's adaptors to its recorded teachers across resolutions",
    "vlm": "frozen tower + MLP projector + causal LM (LLaVA-1.5 protocol), exact-match accuracy",
    "all": "every probe the data allows, in one report",
}


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def cmd_eval(a: argparse.Namespace) -> int:
    from eval.datasets import DatasetError
    from eval.features import ModelSpecError
    from eval.report import headline
    from eval.run import EvalOptions, run_eval
    from eval.vlm import VLMConfig

    vlm = VLMConfig(lm=a.lm, num_tokens=a.num_tokens, stage1_epochs=a.stage1_epochs, stage2_epochs=a.stage2_epochs,
                    stage2_lr=a.stage2_lr, batch_size=a.vlm_batch_size, pre_norm=not a.no_pre_norm,
                    system=a.system_prompt)
    opts = EvalOptions(resolution=a.resolution, batch_size=a.batch_size, device=a.device, progress=not a.no_progress,
                       limit=a.limit, layout=a.layout, num_classes=a.num_classes,
                       label_fields=tuple(a.label_field) if a.label_field else None, k=a.k,
                       temperature=a.temperature, linear_epochs=a.linear_epochs, linear_lrs=_floats(a.linear_lrs),
                       seg_epochs=a.seg_epochs, seg_lrs=_floats(a.seg_lrs), adaptor=a.adaptor,
                       templates=a.templates, classnames=a.classnames,
                       resolutions=_ints(a.resolutions) if a.resolutions else None,
                       fidelity_images=a.fidelity_images, vlm=vlm, vlm_data=a.vlm_data, vlm_limit=a.vlm_limit,
                       pca_images=a.pca_images, with_teachers=a.with_teachers,
                       verify=not a.no_verify)
    try:
        report = run_eval([a.probe], a.model, a.data, a.out, opts, names=a.name)
    except (DatasetError, ModelSpecError) as e:
        print(f"radio: error: {e}", file=sys.stderr)
        return 2
    for probe, per_model in report["probes"].items():
        for name, per_task in per_model.items():
            cells = [f"{task} {m} {v:.4f}" for task, r in per_task.items()
                     for m, v in [headline(r)] if isinstance(v, float)]
            if cells:
                print(f"{probe} {name}: " + ", ".join(cells))
    for n in report.get("notes", []):
        if n.startswith("skipped"):
            print(n)
    print(f"report: {a.out}/report.md")
    return 0


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("models and data")
    g.add_argument("--model", action="append", required=True,
                   help="export dir, EXPORT_DIR::TEACHER (the teacher as trained), teacher config file or teacher "
                        "name; repeat it to put students and teachers side by side in one report")
    g.add_argument("--no-verify", action="store_true",
                   help="load student exports without checking their checksums (by default an export whose "
                        "config.json has no weights_sha256/config_sha256, or one that does not match, is an error)")
    g.add_argument("--name", action="append", help="display name per --model, in order (default: derived)")
    g.add_argument("--with-teachers", action="store_true",
                   help="also evaluate every teacher recorded in each student export's provenance (one line per "
                        "teacher on stderr; a recorded spec that asks to run code is refused)")
    g.add_argument("--data", required=True,
                   help="train/ + val/ shards, an ImageFolder tree (train/, val/), ADE20K (images/, annotations/) "
                        "or VOC (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/)")
    g.add_argument("--layout", choices=["shards", "imagefolder", "ade20k", "voc"], help="force the data layout")
    g.add_argument("--out", required=True, help="report directory (report.json, report.md, PNG plots)")
    g.add_argument("--resolution", type=int, default=224, help="input side in pixels (snapped to each patch size)")
    g.add_argument("--label-field", action="append", help="shard json label field(s) (default: label + info.json's)")
    g.add_argument("--num-classes", type=int, help="segmentation classes (ADE20K default: 150)")
    g.add_argument("--limit", type=int, help="at most this many samples per split")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--device", default="cpu")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--pca-images", type=int, default=4, help="images in the PCA feature-map plot (0: no plot)")
    p = common.add_argument_group("kNN")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.07)
    p = common.add_argument_group("linear and segmentation probes")
    p.add_argument("--linear-epochs", type=int, default=30)
    p.add_argument("--linear-lrs", default="1e-4,1e-3,1e-2,1e-1", help="comma-separated learning rates")
    p.add_argument("--seg-epochs", type=int, default=20)
    p.add_argument("--seg-lrs", default="1e-3,1e-2,1e-1", help="comma-separated learning rates")
    p = common.add_argument_group("zero-shot")
    p.add_argument("--adaptor", help="student adaptor whose teacher's text tower to use (default: clip, then siglip)")
    p.add_argument("--templates", default="simple", help="'simple', 'openai' or a file (one template per line, {})")
    p.add_argument("--classnames", help="file with one class name per line, in label order")
    p = common.add_argument_group("fidelity")
    p.add_argument("--resolutions", help="comma-separated student resolutions in pixels "
                                         "(default: patch size x 4,6,8,12,16,24,32)")
    p.add_argument("--fidelity-images", type=int, default=64, help="validation images per resolution")
    p = common.add_argument_group("VLM (LLaVA-1.5 protocol)")
    p.add_argument("--lm", default="tiny", help="causal LM: local path or hub id, or 'tiny' (random 2-layer Llama)")
    p.add_argument("--vlm-data", help="directory with LLaVA JSON train.json and val.json (images relative to it); "
                                      "default: questions generated from synth shards' labels")
    p.add_argument("--vlm-limit", type=int, default=250,
                   help="at most this many images per split for generated questions (default: 250; 0: all)")
    p.add_argument("--num-tokens", type=int, help="output token budget, passed to students as num_tokens=")
    p.add_argument("--stage1-epochs", type=int, default=1)
    p.add_argument("--stage2-epochs", type=int, default=None,
                   help="0 skips stage 2 (default: 1 for a pretrained LM, 8 for 'tiny')")
    p.add_argument("--stage2-lr", type=float, default=None, help="default: 2e-5 (pretrained LM), 3e-3 ('tiny')")
    p.add_argument("--vlm-batch-size", type=int, default=32)
    p.add_argument("--no-pre-norm", action="store_true", help="no LayerNorm on vision tokens before the projector")
    p.add_argument("--system-prompt", default="", help="system prompt before the conversation")
    return common


def add_eval_parser(sub) -> None:
    """Add `eval` and its probe sub-commands to the `radio` sub-parsers."""
    ev = sub.add_parser("eval", help="probing benchmarks on exported students and teachers, side by side")
    probes = ev.add_subparsers(dest="probe", metavar="PROBE", required=True)
    common = _common()
    for name, text in PROBE_HELP.items():
        probes.add_parser(name, help=text, description=text, parents=[common]).set_defaults(func=cmd_eval)
