"""The `radio` command line: one entry point, a subcommand per job, `--help` everywhere."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from radio.cli.eval_cmd import add_eval_parser

FIT_HELP = ("distill with a recipe (LightningCLI): radio fit --config RECIPE [--key value ...]; "
            "see `radio fit --help`")
VALIDATE_HELP = ("validation of a checkpoint with the same recipe (losses, fidelity and cos-error per teacher at "
                 "model.validation.resolutions): radio validate --config RECIPE --ckpt_path CKPT")


def _cmd_demo(a: argparse.Namespace) -> int:
    from radio.cli.demo import run_demo

    md = run_demo(a.out, count=a.count, steps=a.steps, progress=not a.no_progress)
    print(f"report: {md}")
    return 0


def _cmd_synth(a: argparse.Namespace) -> int:
    from radio.data.synth import write_synth

    written = write_synth(a.out, a.count, val_count=a.val_count, seed=a.seed, size=a.size,
                          shard_size=a.shard_size)
    for split, paths in written.items():
        print(f"{split}: {len(paths)} shard(s) in {a.out}/{split}")
    return 0


def _cmd_pack(a: argparse.Namespace) -> int:
    from radio.data.shards import pack_folder

    info = pack_folder(a.src, a.out, shard_size=a.shard_size)
    print(f"packed {info['count']} images ({len(info['classes'])} classes) into {len(info['shards'])} shard(s) "
          f"in {a.out}; skipped {info['skipped']} unreadable file(s)")
    return 0


def _cmd_cache(a: argparse.Namespace) -> int:
    from radio.cache.writer import cache_recipe

    out, results = cache_recipe(a.config, out=a.out, shards=a.shards, teachers=a.teachers,
                                batch_size=a.batch_size, dtype=a.dtype)
    for name, meta in results.items():
        print(f"{name}: {meta['count']} images at {meta['resolution'][0]}x{meta['resolution'][1]}, "
              f"{meta['bytes_per_image'] / 1024:.1f} KiB per image ({meta['dtype']}), "
              f"skipped {meta['skipped']} -> {out}/{name}")
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    import json

    from radio.export import CONFIG_NAME, export_checkpoint

    adaptors = [] if a.no_adaptors else a.adaptors
    out = export_checkpoint(a.ckpt, a.out, fmt=a.format, adaptors=adaptors, num_tokens=a.num_tokens,
                            report=a.report, verify_onnx=not a.no_check, merge_r=a.merge_r,
                            merge_schedule=a.merge_schedule)
    config = json.loads((out / CONFIG_NAME).read_text())
    config = config.get("radio_config", config)
    kept = [t["name"] for t in config["teachers"] if t.get("has_adaptor", True)]
    print(f"exported {a.ckpt} -> {out} ({a.format}; adaptors: {', '.join(kept) or 'none'})")
    if config.get("provenance", {}).get("report"):
        print(f"model card includes the eval results of {config['provenance']['report']}")
    for size, r in (config.get("onnx") or {}).get("check", {}).items():
        print(f"onnxruntime vs PyTorch at {size}: max abs difference {r['max_abs_diff']:.2e} "
              f"(largest output {r['max_abs_value']:.3g})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="radio", description="Agglomerative vision-encoder distillation.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    d = sub.add_parser("demo", help="whole pipeline on the embedded default data; prints the report path")
    d.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    d.add_argument("--count", type=int, default=1000, help="training images to generate (default: 1000)")
    d.add_argument("--steps", type=int, default=None, help="override the recipe's max_steps")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_demo)

    data = sub.add_parser("data", help="make image shards").add_subparsers(dest="data_command", metavar="ACTION",
                                                                         required=True)
    s = data.add_parser("synth", help="generated labelled images (class, colour, count, position, mask)")
    s.add_argument("--out", required=True, help="output directory (train/ and val/ shards, info.json)")
    s.add_argument("--count", type=int, default=1000, help="training images (default: 1000)")
    s.add_argument("--val-count", type=int, default=None, help="validation images (default: count // 4)")
    s.add_argument("--size", type=int, default=128, help="image side in pixels (default: 128)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--shard-size", type=int, default=256, help="samples per shard")
    s.set_defaults(func=_cmd_synth)
    pk = data.add_parser("pack", help="image folder or ImageFolder tree -> shards")
    pk.add_argument("src", help="image folder, or a tree with one sub-folder per class")
    pk.add_argument("--out", required=True)
    pk.add_argument("--shard-size", type=int, default=1000)
    pk.set_defaults(func=_cmd_pack)

    sub.add_parser("fit", help=FIT_HELP, add_help=False)
    sub.add_parser("validate", help=VALIDATE_HELP, add_help=False)

    c = sub.add_parser("cache", help="run a recipe's teachers once and write feature shards")
    c.add_argument("--config", required=True, help="recipe YAML")
    c.add_argument("--out", default=None,
                   help="cache directory, one sub-folder per teacher (default: the recipe's data.cache.dir)")
    c.add_argument("--shards", default=None, help="image shards (default: the recipe's data.shards)")
    c.add_argument("--teachers", nargs="+", metavar="NAME", default=None,
                   help="cache only these teachers (default: data.cache.teachers, else every teacher)")
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    c.set_defaults(func=_cmd_cache)

    e = sub.add_parser("export", help="checkpoint -> self-describing student directory")
    e.add_argument("ckpt", help="a checkpoint written by radio fit")
    e.add_argument("--out", required=True)
    e.add_argument("--format", default="safetensors", choices=["safetensors", "hf", "onnx"],
                   help="safetensors: radio.load / timm; hf: transformers AutoModel (also radio.load); "
                        "onnx: model.onnx with dynamic batch, height and width (default: safetensors)")
    keep = e.add_mutually_exclusive_group()
    keep.add_argument("--adaptors", nargs="+", metavar="NAME", default=None,
                      help="keep only these teachers' adaptor heads (default: all)")
    keep.add_argument("--no-adaptors", action="store_true", help="drop every adaptor head (backbone only)")
    e.add_argument("--num-tokens", type=int, default=None,
                   help="default output-token budget: `model(x)` merges the patch tokens to exactly N (e.g. 256 "
                        "for a VLM); stored in config.json (tome.num_tokens, defaults.num_tokens)")
    e.add_argument("--merge-r", type=int, default=0,
                   help="default in-network token merging: tokens merged per block (tome.r; default 0 = off)")
    e.add_argument("--merge-schedule", default="constant", choices=["constant", "decreasing"],
                   help="schedule of --merge-r over the blocks (tome.schedule)")
    e.add_argument("--report", default=None,
                   help="report.json whose eval results go into the model card (default: one found next to "
                        "the checkpoint's run)")
    e.add_argument("--no-check", action="store_true",
                   help="onnx: skip the onnxruntime vs PyTorch comparison at two resolutions")
    e.set_defaults(func=_cmd_export)

    add_eval_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from radio.cache.format import CacheMismatchError
    from radio.data.health import BadDataError
    from radio.export import ExportError
    from radio.schema import ConfigError
    from radio.train.guard import NonFiniteLossError

    try:
        if argv and argv[0] in ("fit", "validate"):
            from radio.cli.fit import UnsafeCheckpointError, run_fit

            try:
                run_fit(argv[1:], subcommand=argv[0])
            except UnsafeCheckpointError as e:
                print(f"radio: error: {e}", file=sys.stderr)
                return 2
            return 0
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except (ConfigError, ExportError, CacheMismatchError, FileNotFoundError) as e:
        print(f"radio: error: {e}", file=sys.stderr)
        return 2
    except (BadDataError, NonFiniteLossError) as e:  # the run stopped itself; the message says why and where
        print(f"radio: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
