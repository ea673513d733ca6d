"""The ``semiseg`` command line: batch work without opening a notebook.

    semiseg prepare --dataset peerhub --source PATH --out data/peerhub
    semiseg train --data data/peerhub --method semisegdefect --label-fraction 0.05 \
                  --profile cpu --seed 0 --out runs/semi-5pc [semi.contrastive_weight=0.1 ...]
    semiseg evaluate --run runs/semi-5pc --data data/other --split test
    semiseg predict --run runs/semi-5pc --images my_photos/ --out predictions/ --quantify
    semiseg evaluate --run runs/semi-5pc --folder my_labelled_photos/ --per-image scores.csv
    semiseg quantify --masks predictions/ --out defects.csv --mm-per-pixel 0.2
    semiseg export --run runs/semi-5pc --onnx semi-5pc.onnx --check-data data/peerhub
    semiseg notebook notebooks/00_data_preparation.py --executed out.ipynb -p dataset peerhub
    semiseg demo --out results/demo            # every notebook, smoke profile
    torchrun --standalone --nproc-per-node 4 -m semiseg_helpers.cli train ...   # 4 GPUs
    semiseg sweep ... --slurm partition=gpu,timeout_min=600,gpus_per_node=1    # SLURM

Each sub-command is a thin layer over a package function, so notebooks and
the command line run the same code.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="tile, split and draw label fractions from a source dataset",
                       description="Prepare a dataset: tiles, 7:1:2 split, nested label fractions, "
                                   "manifest.json. Written whole or not at all.")
    p.add_argument("--dataset", required=True,
                   help="peerhub | mdmcs | deepcrack | folder | synthetic")
    p.add_argument("--source", type=Path, help="source folder (not for synthetic)")
    p.add_argument("--out", type=Path, required=True, help="prepared dataset folder to create")
    p.add_argument("--crop-size", type=int, default=512, help="tile size (default 512)")
    p.add_argument("--all-tiles", action="store_true",
                   help="keep tiles without defects too (default: defect tiles only)")
    p.add_argument("--split-ratios", type=float, nargs=3, default=(0.7, 0.1, 0.2),
                   metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fractions", type=float, nargs="+", default=(0.02, 0.05, 0.1, 0.2),
                   help="label fractions of the training split (nested subsets)")
    p.add_argument("--class-file", type=Path,
                   help="a classes.txt ('<value> <class>' or '<R>,<G>,<B> <class>' per line) "
                        "replacing the reader's class table, e.g. to count MDMCS corrosion")
    p.add_argument("--threshold", type=int, help="deepcrack: grey level above which a pixel is crack")
    p.add_argument("--synthetic-images", type=int, default=200)
    p.add_argument("--synthetic-unlabeled", type=int, default=0)
    p.add_argument("--synthetic-size", type=int, default=256)
    p.add_argument("--workers", type=int, help="worker processes (default: up to 4)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> int:
    from semiseg_helpers.data.prepare import load_manifest, prepare_dataset
    from semiseg_helpers.data.readers import read_class_file

    reader_options = {}
    if args.class_file:
        reader_options["class_table"] = read_class_file(args.class_file)[0]
    if args.threshold is not None:
        reader_options["threshold"] = args.threshold
    started = time.time()
    out = prepare_dataset(
        args.dataset, args.out, args.source, crop_size=args.crop_size,
        keep_defect_only=not args.all_tiles, split_ratios=args.split_ratios, seed=args.seed,
        label_fractions=args.fractions, overwrite=args.overwrite, workers=args.workers,
        reader_options=reader_options,
        synthetic_options={"n_labeled": args.synthetic_images, "size": args.synthetic_size,
                           "n_unlabeled": args.synthetic_unlabeled})
    m = load_manifest(out)
    print(f"prepared {len(m['samples'])} samples in {time.time() - started:.1f} s -> {out}")
    print("  splits:", ", ".join(f"{k} {v}" for k, v in m["counts"].items()))
    print("  labelled subsets:", ", ".join(f"{float(k):g}: {v}" for k, v in m["labelled_counts"].items())
          or "none (an evaluation-only set: score a run on its test split)")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the notebooks in order (papermill)",
                       description="Execute notebooks/NN_*.py in order into OUT/<notebook>/, "
                                   "sharing the prepared dataset OUT/data; the ablation "
                                   "notebooks (02-08) only with --ablations or --only.")
    p.add_argument("--out", type=Path, default=Path("results/demo"))
    p.add_argument("--profile", default="smoke")
    p.add_argument("--only", nargs="+", help="notebook number prefixes to run, e.g. 00 01")
    p.add_argument("--ablations", action="store_true",
                   help="also run the ablation notebooks 02-08 (Tables 2-8: about twenty "
                        "more training runs)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from semiseg_helpers.notebooks import run_all

    started = time.time()
    records = run_all(args.out, profile=args.profile, only=args.only,
                      ablations=args.ablations)
    for r in records:
        print(f"  {r['notebook']:<40} {r['seconds']:>8.1f} s")
    print(f"all notebooks done in {time.time() - started:.1f} s -> {args.out}")
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train one model into a run folder (resumes if interrupted)",
                       description="Train one run. Extra key=value arguments override the "
                                   "profile's config (dotted keys, e.g. semi.num_anchors=64).")
    p.add_argument("--data", type=Path, required=True, help="prepared dataset folder")
    p.add_argument("--method", default="semisegdefect")
    p.add_argument("--label-fraction", type=float, default=0.05)
    p.add_argument("--profile", default="cpu", help="smoke | cpu | gpu | paper")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--stop-after", type=int, metavar="STEP",
                   help="stop once STEP steps are done, as if interrupted (e.g. to fit a "
                        "time slot); the same command without it resumes")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from semiseg_helpers import distributed
    from semiseg_helpers.config import make_config, parse_overrides
    from semiseg_helpers.train import train

    config = make_config(args.profile, parse_overrides(args.overrides), method=args.method,
                         label_fraction=args.label_fraction, seed=args.seed)
    # under torchrun (several processes) each one runs this; rank 0 alone speaks
    summary = train(config, args.data, args.out, progress=not args.quiet,
                    stop_after=args.stop_after)
    main_process = distributed.is_main_process()
    distributed.shutdown()
    if not main_process:
        return 0
    if summary is None:
        print(f"stopped after step {args.stop_after}; the same command without --stop-after "
              f"resumes the run in {args.out}")
        return 0
    _print_scores(summary["test"] or summary["val"], "test" if summary["test"] else "val")
    print(f"best step {summary['best_step']}; run folder {args.out}")
    return 0


def _print_scores(scores: dict, split: str) -> None:
    print(f"{split} MIoU {scores['miou']:.4f}  " +
          "  ".join(f"{c} {v:.4f}" for c, v in scores["iou"].items()))


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="score a run on a prepared split or on a folder of labelled photos",
        description="Per-class IoU and MIoU of a run's best weights: on a prepared dataset's "
                    "split (--data), or on every labelled photo of a folder, whole photos, no "
                    "split (--folder in the generic layout, or --images with --masks). Mask "
                    "classes are matched to the model's by name (classes.txt).")
    p.add_argument("--run", type=Path, required=True)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="a prepared dataset folder")
    source.add_argument("--folder", type=Path,
                        help="labelled photos in the generic layout: images/, masks/, "
                             "classes.txt")
    source.add_argument("--images", type=Path, help="a folder of photos (with --masks)")
    p.add_argument("--masks", type=Path, help="their masks, same names (with --images)")
    p.add_argument("--classes", type=Path,
                   help="class file of the masks (default: classes.txt in the folder, or in "
                        "or beside --masks)")
    p.add_argument("--split", choices=("train", "val", "test"),
                   help="split of --data (default: test)")
    p.add_argument("--window", type=int, help="sliding-window size (default: the run's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, help="also write the scores here")
    p.add_argument("--per-image", type=Path, metavar="CSV",
                   help="write each image's pixel accuracy, IoU and pixel counts per class")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    import json

    from semiseg_helpers.predict import evaluate_folder, evaluate_run, write_per_image
    from semiseg_helpers.runs import atomic_write_text

    if args.data is None and args.split is not None:
        raise ValueError("--split is for a prepared dataset (--data); a folder is scored whole")
    if (args.masks is not None) != (args.images is not None):
        raise ValueError("--images and --masks go together")
    if args.data is not None and args.classes is not None:
        raise ValueError("--classes is for --folder or --images/--masks; a prepared dataset "
                         "is already mapped onto the class schema")
    if args.data is not None:
        split = args.split or "test"
        result = evaluate_run(args.run, args.data, split, args.device, args.window)
        _print_scores(result, f"{split} ({result['n_images']} images)")
    else:
        result = evaluate_folder(args.run, args.folder, args.device, args.window,
                                 images=args.images, masks=args.masks, class_file=args.classes)
        _print_scores(result, f"{result['data']} ({result['n_images']} photos)")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1))
    if args.per_image:
        write_per_image(result, args.per_image)
        print(f"per-image scores -> {args.per_image}")
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="segment one photo or every photo in a folder (any size)",
                       description="Segment photos by sliding window: a class-index mask, a "
                                   "colour mask and an overlay per photo, predictions.json; "
                                   "with --quantify also quantities.csv (defect measurements). "
                                   "Photos that cannot be read are listed and skipped.")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--images", type=Path, required=True, help="a photo or a folder of photos")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--window", type=int, help="sliding-window size (default: the run's)")
    p.add_argument("--device", default="auto")
    _add_quantify_options(p)
    p.add_argument("--quantify", action="store_true",
                   help="measure each defect found into OUT/quantities.csv")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    from semiseg_helpers.predict import predict_folder

    if not args.quantify and (args.mm_per_pixel is not None or args.min_pixels != 1):
        raise ValueError("--mm-per-pixel and --min-pixels need --quantify")
    report = predict_folder(args.run, args.images, args.out, args.device, args.window,
                            quantify=args.quantify, mm_per_pixel=args.mm_per_pixel,
                            min_pixels=args.min_pixels)
    print(f"wrote {len(report.masks)} masks (+ colour masks and overlays) to {args.out}")
    if report.quantities is not None:
        _print_quantities(report.quantities)
    if report.failed:
        print(f"skipped {len(report.failed)} photo(s) that could not be read:", file=sys.stderr)
        for path, reason in report.failed:
            print(f"  {reason}", file=sys.stderr)
        return 1
    return 0


def _add_quantify_options(p) -> None:
    p.add_argument("--mm-per-pixel", type=float, metavar="MM",
                   help="photo scale: lengths and widths in mm, areas in mm^2 too")
    p.add_argument("--min-pixels", type=int, default=1, metavar="N",
                   help="leave out defects smaller than N pixels (speckle; default 1: none)")


def _add_quantify(sub) -> None:
    p = sub.add_parser("quantify", help="measure the defects in masks: crack length and width, "
                                        "spalling / rebar area",
                       description="One CSV row per defect (connected component): cracks with "
                                   "their length along the skeleton and mean / max width, "
                                   "spalling and rebar regions with their area; in pixels, "
                                   "and in mm given --mm-per-pixel.")
    p.add_argument("--masks", type=Path, required=True,
                   help="a `semiseg predict` output folder, or a folder (or file) of "
                        "class-index masks")
    p.add_argument("--out", type=Path, required=True, help="CSV to write")
    p.add_argument("--classes", type=Path,
                   help="class file mapping the masks' values to classes (default: "
                        "classes.txt in the masks folder or beside it, else the schema's "
                        "indices 0 background, 1 crack, 2 spalling, 3 rebar, 255 ignore)")
    _add_quantify_options(p)
    p.set_defaults(func=cmd_quantify)


def cmd_quantify(args) -> int:
    from semiseg_helpers.quantify import quantify_folder, write_table

    table = quantify_folder(args.masks, args.mm_per_pixel, args.min_pixels, args.classes)
    write_table(table, args.out)
    _print_quantities(args.out, table)
    return 0


def _print_quantities(path: Path, table=None) -> None:
    import pandas as pd

    from semiseg_helpers.quantify import summarise_table

    table = pd.read_csv(path) if table is None else table
    parts = []
    for name, entry in summarise_table(table).items():
        part = f"{name} {entry['count']}"
        if "length_px" in entry:
            part += (f" (total length {entry['length_px']:.0f} px, "
                     f"widest {entry['max_width_px']:.1f} px)")
        parts.append(part)
    print(f"measured {len(table)} defects" + (": " + ", ".join(parts) if parts else "")
          + f" -> {path}")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a run's best weights in half precision "
                                      "(RUN/model.safetensors), as a model of record commits "
                                      "them, or its network as ONNX (--onnx)",
                       description="Without --onnx: RUN/model.safetensors, the best weights in "
                                   "fp16 (needs checkpoints/best.pt). With --onnx PATH: the "
                                   "inference network as an fp32 ONNX graph, dynamic batch, "
                                   "height and width (from best.pt or model.safetensors), "
                                   "optionally checked against PyTorch (--check-data). Files "
                                   "are written whole or not at all.")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--onnx", type=Path, metavar="PATH", help="write the ONNX model here instead")
    p.add_argument("--check-data", type=Path, metavar="DIR",
                   help="with --onnx: compare onnxruntime with PyTorch fp32 on this prepared "
                        "dataset's --split; exit status 1 outside the tolerance")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--threads", type=int, help="CPU threads of PyTorch and onnxruntime")
    p.add_argument("--json", type=Path, help="with --check-data: also write its numbers here")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    if args.onnx is None:
        if args.check_data or args.json:
            raise ValueError("--check-data and --json apply to an ONNX export: add --onnx PATH")
        from semiseg_helpers.predict import export_weights

        path = export_weights(args.run)
        print(f"wrote {path} ({path.stat().st_size / 2 ** 20:.1f} MiB)")
        return 0
    return _export_onnx(args)


def _export_onnx(args) -> int:
    import json

    import torch

    from semiseg_helpers.export import check_onnx_export, describe_check, export_run_onnx
    from semiseg_helpers.runs import atomic_write_text

    if args.json and not args.check_data:
        raise ValueError("--json writes the numbers of --check-data: add --check-data DIR")
    if args.threads:
        torch.set_num_threads(args.threads)
    path = export_run_onnx(args.run, args.onnx)
    print(f"wrote {path} ({path.stat().st_size / 2 ** 20:.1f} MiB; fp32, input 'image' "
          "(batch, 3, height, width) in [0, 1], output 'logits')")
    if args.check_data is None:
        return 0
    result = check_onnx_export(args.run, path, args.check_data, args.split, args.threads)
    print(describe_check(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(result, indent=1))
    return 0 if result["passed"] else 1


def _add_notebook(sub) -> None:
    p = sub.add_parser("notebook", help="execute one notebook with parameters (papermill)",
                       description="Execute a jupytext notebook; -p NAME VALUE sets a "
                                   "parameter (VALUE parsed as YAML: 0.05, [1, 2], true).")
    p.add_argument("path", type=Path, help="notebooks/NN_name.py")
    p.add_argument("--executed", type=Path, required=True, help="executed .ipynb to write")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                   metavar=("NAME", "VALUE"))
    p.set_defaults(func=cmd_notebook)


def cmd_notebook(args) -> int:
    import yaml

    from semiseg_helpers.notebooks import run_notebook

    params = {name: yaml.safe_load(value) for name, value in args.parameter}
    run_notebook(args.path, args.executed, params)
    print(f"executed {args.path} -> {args.executed}")
    return 0


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="train a grid of runs, one folder per point (resumable)",
                       description="Train every point of methods x fractions x seeds (x the "
                                   "--grid file's axes), plus --extra points, into ROOT/<point>. "
                                   "Finished points are skipped; a failed one leaves error.txt "
                                   "and is retried by the next sweep. Extra key=value arguments "
                                   "are config overrides shared by every point.")
    p.add_argument("--data", type=Path, required=True, help="prepared dataset folder")
    p.add_argument("--root", type=Path, required=True, help="folder holding the run folders")
    p.add_argument("--methods", nargs="+", help="default: semisegdefect")
    p.add_argument("--fractions", type=float, nargs="+", help="label fractions (default: 0.05)")
    p.add_argument("--seeds", type=int, nargs="+", help="default: 0")
    p.add_argument("--profile", default="cpu", help="smoke | cpu | gpu | paper")
    p.add_argument("--grid", type=Path,
                   help="YAML mapping of further axes, key: [values] (dotted config keys, "
                        "e.g. semi.num_anchors: [64, 256]); its reserved key `cases` lists "
                        "explicit settings crossed with the axes (e.g. grids/*.yaml)")
    p.add_argument("--reuse", type=Path, action="append", default=[], metavar="ROOT",
                   help="copy into a point's folder a finished run found under ROOT with the "
                        "same configuration and data, instead of training it (repeatable)")
    p.add_argument("--extra", action="append", default=[], metavar="KEY=VALUE,...",
                   help="one more point, e.g. method=deeplabv3plus,label_fraction=1.0 "
                        "(repeatable; scalar values only)")
    p.add_argument("--jobs", type=int, default=1,
                   help="points run side by side (one GPU each when several are visible)")
    p.add_argument("--notebook", type=Path,
                   help="run each point through this notebook instead of `semiseg train`")
    p.add_argument("--slurm", metavar="KEY=VALUE,...",
                   help="submit the points to SLURM (submitit) instead of running them here, "
                        "e.g. partition=gpu,timeout_min=600,gpus_per_node=1 (sbatch options "
                        "by name: account, qos, constraint, array_parallelism, ...); "
                        "gpus_per_node > 1 trains each point on that many GPUs (torchrun). "
                        "Waits for the jobs; interrupting it cancels them")
    p.add_argument("--dry-run", action="store_true", help="print the commands; run nothing")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    import shlex

    from semiseg_helpers.config import parse_overrides
    from semiseg_helpers.sweep import (Grid, cluster_executor, expand_grid, load_grid,
                                       notebook_job, plan, reuse_finished, sweep, train_job,
                                       with_processes)

    loaded = load_grid(args.grid) if args.grid else Grid()
    axes = dict(loaded.axes)
    in_cases = set().union(*loaded.cases) if loaded.cases else set()
    grid = {}
    for key, flag, values, default in (("method", "--methods", args.methods, ["semisegdefect"]),
                                       ("label_fraction", "--fractions", args.fractions, [0.05]),
                                       ("seed", "--seeds", args.seeds, [0])):
        if values is not None and (key in axes or key in in_cases):
            raise ValueError(f"{key} is given both by {flag} and in {args.grid}")
        if key not in in_cases:   # a case that sets it needs no axis (nor a default)
            grid[key] = axes.pop(key, values if values is not None else default)
    grid.update(axes)
    extra = [parse_overrides(item.split(",")) for item in args.extra]
    overrides = parse_overrides(args.overrides)
    job = (notebook_job(args.notebook, args.data, args.profile, overrides) if args.notebook
           else train_job(args.data, args.profile, overrides))
    points = expand_grid(grid, extra, cases=loaded.cases)
    slurm = parse_overrides(args.slurm.split(",")) if args.slurm else None
    processes = int((slurm or {}).get("gpus_per_node") or 1)
    reused = (reuse_finished(points, args.root, job, args.reuse, dry_run=args.dry_run)
              if args.reuse else [])
    if args.dry_run:
        todo, skipped = (plan(points, args.root, job, jobs=1, gpus=[]) if slurm is not None
                         else plan(points, args.root, job, jobs=args.jobs))
        copied = {target.resolve() for _, target in reused}
        todo = [j for j in todo if j.run_dir not in copied]
        for j in todo:
            print(shlex.join(with_processes(j, processes).command if slurm is not None
                             else j.command))
        print(f"{len(todo)} to run, {len(skipped)} finished before"
              + (f", {len(copied)} to copy from finished runs" if args.reuse else ""))
        return 0
    if slurm is not None:
        executor = cluster_executor(args.root / ".submitit", slurm)
        report = sweep(points, args.root, job, executor=executor, processes=processes)
    else:
        report = sweep(points, args.root, job, jobs=args.jobs)
    print(report)
    return 1 if report.failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semiseg", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_prepare, _add_train, _add_evaluate, _add_predict, _add_quantify,
                _add_export, _add_notebook, _add_demo, _add_sweep):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import semiseg_helpers  # noqa: F401  (torchvision fix before anything imports it)
    from semiseg_helpers.data.readers import DataError
    from semiseg_helpers.runs import RUN_IN_USE_EXIT, RunInUse

    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # key=value overrides may stand anywhere, also after options (argparse
    # only gathers a positional list up to the first option)
    overrides = [u for u in unknown if "=" in u and not u.startswith("-")]
    if len(overrides) < len(unknown) or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if overrides:
        args.overrides = list(args.overrides or []) + overrides
    try:
        return args.func(args)
    except (DataError, ValueError, FileNotFoundError) as exc:
        print(f"semiseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RunInUse as exc:
        print(f"semiseg {args.command}: {exc}", file=sys.stderr)
        return RUN_IN_USE_EXIT
    except KeyboardInterrupt:
        print(f"semiseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
