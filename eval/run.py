"""Entry points of `radio eval`: run probes on several models (students and teachers) into one report.

`run_eval(["knn", "linear"], models, data, out)` loads every model once, extracts its frozen features of the train
and val splits once, runs the probes on them, and writes report.json, report.md and the plots into `out`.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from eval import probes as P
from eval.datasets import Dataset, DatasetError, open_dataset
from eval.features import (
    Encoder,
    FeatureBank,
    describe,
    load_encoder,
    provenance_file,
    recorded_teacher,
    recorded_teacher_names,
)
from eval.knn import knn_eval
from eval.options import EvalOptions
from eval.report import write_report
from radio.export import verification

PROBES = ("knn", "linear", "seg", "zeroshot", "fidelity", "vlm")
SYNTH_NOTE = ("Generated data: the masks are colour classes, a local and dense property, while shape (`label`), "
              "position and count are global. Randomly initialised teachers (as in the demo) carry colour in their "
              "patch features but little global information in their summaries (DESIGN.md section 5), so global-label "
              "kNN and zero-shot sit near chance for them and for students distilled from them; the segmentation "
              "probe and fidelity are the informative measures there.")


def knn_tasks(tr: FeatureBank, te: FeatureBank, k: int, temperature: float) -> dict[str, Any]:
    """kNN (eval.knn) per label field that has labelled samples in both splits."""
    return {f: knn_eval(tr.summary, tr.labels[f], te.summary, te.labels[f], k=k, temperature=temperature)
            for f in tr.labels if (tr.labels[f] >= 0).any() and (te.labels[f] >= 0).any()}


class Evaluation:
    """One report: models x probes on one dataset (see module docstring)."""

    def __init__(self, probes: Sequence[str], models: Sequence[str | dict], data: str, out: str | Path,
                 opts: EvalOptions | None = None, names: Sequence[str] | None = None,
                 encoders: Sequence[Encoder] = (), explicit: bool = True) -> None:
        unknown = [p for p in probes if p not in PROBES]
        if unknown:
            raise ValueError(f"unknown probe(s) {unknown}; valid: {', '.join(PROBES)}, all")
        self.probes, self.data, self.out, self.opts = list(probes), data, Path(out), opts or EvalOptions()
        self.specs = list(models)
        self.names = list(names or [])
        self.given = list(encoders)
        self.explicit = explicit
        self.report: dict[str, Any] = {"title": "radio eval", "models": {}, "probes": {}, "plots": [], "notes": [],
                                       "timing_s": {}}
        self.pca: dict[str, torch.Tensor] = {}
        self.pca_images: torch.Tensor | None = None

    # -- helpers ---------------------------------------------------------------------------------------------
    def note(self, text: str) -> None:
        if text not in self.report["notes"]:
            self.report["notes"].append(text)

    def encoders(self) -> Iterator[Encoder]:
        """The models one at a time (each loaded when its turn comes), with unique names.

        Teachers taken from an export's provenance (EXPORT_DIR::NAME, --with-teachers) are checked before any model
        loads (no code-running option: eval.features.recorded_teacher); --with-teachers prints each one it adds.
        """
        specs = list(self.specs)
        if self.opts.with_teachers:
            for s in self.specs:
                if isinstance(s, str) and Path(s).is_dir() and (Path(s) / "config.json").is_file():
                    for name in recorded_teacher_names(s):
                        spec = recorded_teacher(s, name)
                        shown = {k: v for k, v in dataclasses.asdict(spec).items() if v is not None}
                        print(f"--with-teachers: {s}::{name} builds {json.dumps(shown, default=str)} (recorded in "
                              f"{provenance_file(s)})", file=sys.stderr, flush=True)
                        specs.append(f"{s}::{name}")
        for s in specs:
            if isinstance(s, str) and "::" in s:
                recorded_teacher(*s.rsplit("::", 1))
        seen: set[str] = set()
        lazy = [lambda e=e: e for e in self.given]
        lazy += [lambda i=i, s=s: load_encoder(  # type: ignore[misc]
                     s, self.names[i] if i < len(self.names) else None) for i, s in enumerate(specs)]
        for make in lazy:
            enc = make()
            base, n = enc.name, 1
            while enc.name in seen:  # the report is keyed by name
                n += 1
                enc.name = f"{base}-{n}"
            seen.add(enc.name)
            yield enc

    def record(self, probe: str, model: str, result: Any) -> None:
        self.report["probes"].setdefault(probe, {})[model] = result

    # -- run -------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Measure, then write report.json and report.md into `out`; returns the report."""
        self.measure()
        write_report(self.out, self.report)
        return self.report

    def measure(self) -> dict[str, Any]:
        """Run every probe on every model and write the plots; returns the report (not written). Exports load
        under `opts.verify` (radio.export.verification)."""
        with verification(self.opts.verify):
            return self._measure()

    def _measure(self) -> dict[str, Any]:
        o = self.opts
        ds: Dataset | None = None
        if set(self.probes) - {"vlm"} or not o.vlm_data:
            ds = open_dataset(self.data, o.layout, o.num_classes, o.label_fields)
            self.report["data"] = {"root": str(ds.root), "layout": ds.layout, "resolution": o.resolution,
                                   "label_fields": list(ds.classes),
                                   "seg_classes": ds.seg.classes if ds.seg else None}
        probes = []
        for p in self.probes:
            reason = P.data_support(p, ds, o)
            if reason is None:
                probes.append(p)
            elif self.explicit:
                raise DatasetError(f"{self.data}: {reason}")
            else:
                self.note(f"skipped {reason}")
        conversations = P.vlm_conversations(ds, o, self.out) if "vlm" in probes else None
        for enc in self.encoders():
            self.report["models"][enc.name] = describe(enc)
            self.run_model(enc, ds, probes, conversations)
            enc.to("cpu")  # free the accelerator for the next model
        self.write_plots()
        for n in protocol_notes(probes, o):
            self.note(n)
        if ds is not None and P.is_synth(ds):
            self.note(SYNTH_NOTE)
        return self.report

    def run_model(self, enc: Encoder, ds: Dataset | None, probes: list[str], conversations) -> None:
        o = self.opts
        # data_support checked the data for every probe: ds is set for those that read it, tr and te (the
        # feature banks) for knn, linear and seg
        tr = te = None
        if {"knn", "linear", "seg"} & set(probes):
            t0 = time.perf_counter()
            tr, te = P.features(enc, ds, o, dense="seg" in probes)  # type: ignore[arg-type]
            self.report["timing_s"].setdefault(enc.name, {})["features"] = round(time.perf_counter() - t0, 2)
            self.report["models"][enc.name]["skipped_samples"] = tr.skipped + te.skipped
        steps = {"knn": lambda: knn_tasks(tr, te, o.k, o.temperature),  # type: ignore[arg-type]
                 "linear": lambda: P.linear(tr, te, o),  # type: ignore[arg-type]
                 "seg": lambda: P.seg(tr, te, ds, o),  # type: ignore[arg-type]
                 "zeroshot": lambda: P.zeroshot(enc, ds, te, o),  # type: ignore[arg-type]
                 "fidelity": lambda: P.fidelity(enc, ds, o),  # type: ignore[arg-type]
                 "vlm": lambda: P.vlm(enc, conversations, o)}
        for p in probes:
            t0 = time.perf_counter()
            try:
                self.record(p, enc.name, steps[p]())
            except P.ProbeSkipped as e:
                self.note(f"skipped {e}")
            self.report["timing_s"].setdefault(enc.name, {})[p] = round(time.perf_counter() - t0, 2)
            if o.progress:
                print(f"[{enc.name}] {p}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        if o.pca_images and ds is not None:
            images, maps = P.pca_maps(enc, ds, o)
            self.pca_images, self.pca[enc.name] = images, maps

    def write_plots(self) -> None:
        from eval import plots
        from eval.fidelity import plot_sweeps

        probes, plots_out = self.report["probes"], self.report["plots"]
        if "fidelity" in probes:
            plots_out.append(str(plot_sweeps(probes["fidelity"], self.out / "fidelity_vs_resolution.png")))
        if self.pca:
            plots_out.append(str(plots.plot_pca(self.pca_images,  # type: ignore[arg-type]  # set with pca
                                                self.pca, self.out / "pca_features.png")))
        for p, metric in (("linear", "top1"), ("seg", "mIoU")):
            if p in probes:
                plots_out.append(str(plots.plot_probe_curves(p, probes[p], self.out / f"{p}_curves.png", metric)))
        if "vlm" in probes:
            curves = {m: r["qa"] for m, r in probes["vlm"].items()}
            plots_out.append(str(plots.plot_vlm_curves(curves, self.out / "vlm_curves.png")))


def protocol_notes(probes: Sequence[str], o: EvalOptions) -> list[str]:
    """One line per probe run: how it was measured."""
    text = {
        "knn": f"kNN: L2-normalized summary vectors, cosine similarity, k = {o.k}, T = {o.temperature}, votes "
               f"exp(sim / T) summed per class.",
        "linear": f"Linear probe: frozen features standardized with training statistics; heads for every pooling "
                  f"(summary, patch mean, both) x learning rate {list(o.linear_lrs)}, AdamW + cosine, "
                  f"{o.linear_epochs} epochs, trained in one pass; the best head on val is reported (DINOv2's "
                  f"protocol; on a small val split the choice is optimistic, equally for every model).",
        "seg": f"Segmentation probe: frozen patch features, BatchNorm + 1x1 conv, logits bilinearly upsampled "
               f"(trained against labels at 4 pixels per patch, scored at the full {o.resolution}-px masks), "
               f"learning rates {list(o.seg_lrs)}, {o.seg_epochs} epochs, best on val; mIoU over the classes present "
               f"in predictions or targets, ignored pixels skipped.",
        "zeroshot": f"Zero-shot: students through their CLIP/SigLIP adaptor summary, teachers through their own "
                    f"image embedding, against the teacher's text embeddings of the {o.templates!r} templates.",
        "fidelity": "Fidelity: Var(teacher) / MSE(student adaptor, teacher) over all images and positions, per "
                    "teacher and student resolution; dense teachers at the same patch grid, fixed-size teachers "
                    "at their native size, teacher features resized to the student grid.",
        "vlm": "VLM probe (LLaVA-1.5 protocol): frozen tower, LayerNorm + MLP projector into the LM, stage 1 "
               "projector only, stage 2 projector + LM; greedy answers scored by exact match; the majority "
               "baseline answers each question with its most frequent training answer.",
    }
    return [text[p] for p in probes if p in text]


def run_eval(probes: Sequence[str], models: Sequence[str | dict], data: str, out: str | Path,
             opts: EvalOptions | None = None, names: Sequence[str] | None = None,
             encoders: Sequence[Encoder] = ()) -> dict[str, Any]:
    """Run `probes` ("all" expands to every probe the data allows) on `models` and extra `encoders`; writes the
    report into `out` and returns it."""
    explicit = list(probes) != ["all"]
    probes = list(probes) if explicit else list(PROBES)
    return Evaluation(probes, models, data, out, opts, names, encoders, explicit).run()

