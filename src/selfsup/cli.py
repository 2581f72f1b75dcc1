"""``selfsup`` command line: train, eval, sweep, methods, export, embed, shards, quickstart,
speedrun, config.

Run ``selfsup COMMAND --help`` for each command's options.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path

from selfsup.errors import ConfigError, SelfsupError, TrainingInterrupted


def _cmd_train(args: argparse.Namespace) -> int:
    from selfsup.config import load_config
    from selfsup.pretraining import pretrain

    cfg = load_config(args.method, args.config, args.overrides)
    result = pretrain(cfg, resume=args.resume, stop_at_step=args.stop_at_step)
    from selfsup.utils.distributed import is_main_process

    if is_main_process():
        print(
            f"done: {result.steps} steps, final loss {result.final_loss:.4f}, "
            f"{result.images_per_second:.0f} images/s"
        )
        print(f"run directory: {result.run_dir}")
        print(f"encoder:       {result.encoder_path}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from selfsup.config import dump_config, load_config

    print(dump_config(load_config(args.method, args.config, args.overrides)), end="")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from selfsup.evaluate import evaluate_encoder

    if args.protocol == "pretext":
        return _eval_pretext(args)
    if args.protocol in ("finetune", "low-label"):
        return _eval_finetune(args)
    if args.protocol == "all":
        return _eval_all(args)
    if args.protocol in ("propagation", "depth"):
        return _eval_dense(args)

    data = _eval_data(args)
    protocols = ("knn", "linear") if args.protocol == "all" else (args.protocol,)
    rows = []
    for spec in args.encoders:
        result = evaluate_encoder(
            spec,
            data,
            protocols=protocols,
            device=args.device,
            knn_k=tuple(args.k),
            knn_temperature=args.temperature,
            linear_epochs=args.epochs,
            linear_lr=args.lr,
            linear_batch_norm=not args.no_batch_norm,
            seed=args.seed,
            head=args.head,
        )
        result["data"] = data.key
        rows.append(result)
        if result.get("method") != "random" and Path(spec).is_dir():
            _append_eval(Path(spec), result)
    _print_rows(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
        print(f"wrote {args.json}")
    return 0


def _eval_pretext(args: argparse.Namespace) -> int:
    import torch

    from selfsup.data import load_source, random_subset_indices
    from selfsup.evaluate.pretext import evaluate_pretext
    from selfsup.models import load_method, write_pictures

    rows = []
    for spec in args.encoders:
        method = load_method(spec, args.device)
        source = load_source(
            args.data, split=args.test_split, root=args.root, image_size=method.image_size
        )
        if args.test_subset and args.test_subset < len(source):
            source = source.subset(random_subset_indices(len(source), args.test_subset, args.seed))
        result = evaluate_pretext(method, source, device=args.device, seed=args.seed)
        tag = "".join(c if c.isalnum() else "_" for c in f"eval_{args.data}_{args.test_split}")
        pictures = write_pictures(method, source, Path(spec), tag, torch.device(args.device))
        row = {
            "encoder": spec,
            "method": method.name,
            "data": f"{args.data}:{args.test_split}",
            "images": len(source),
            "pictures": [str(p) for p in pictures],
            **result,
        }
        rows.append(row)
        print(f"{spec}: " + ", ".join(f"{k}={v:.4f}" for k, v in result.items()))
        _append_eval(Path(spec), row)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def _eval_dense(args: argparse.Namespace) -> int:
    """``eval propagation`` (video_colorization runs) and ``eval depth`` (any encoder of an
    RGB-D run): on held-out data like the run's own, beside their baselines."""
    data = None if args.data == "cifar10" else args.data  # default: the run's own source
    rows = []
    for spec in args.encoders:
        if args.protocol == "propagation":
            from selfsup.evaluate.propagation import PropagationConfig, run_propagation

            cfg = PropagationConfig(
                temperature=args.prop_temperature, top_k=args.top_k, context=args.context
            )
            r = run_propagation(spec, clips=args.test_subset or 256, data=data, cfg=cfg,
                                tune_clips=args.tune_clips, device=args.device,
                                seed=args.seed)  # fmt: skip
            rnd = r.get("random_encoder_miou", float("nan"))
            print(
                f"{spec}: propagation mIoU {r['propagation_miou']:.4f} | identity "
                f"{r['identity_miou']:.4f} | random encoder {rnd:.4f} ({r['clips']} clips)"
            )
        else:
            from selfsup.evaluate.depth_probe import DepthProbeConfig, run_depth_probe

            cfg = DepthProbeConfig(epochs=args.probe_epochs, seed=args.seed)
            r = run_depth_probe(spec, train_items=args.train_subset or 2000,
                                test_items=args.test_subset or 500, data=data, cfg=cfg,
                                device=args.device, seed=args.seed)  # fmt: skip
            print(f"{spec}: depth RMSE {r['depth_rmse']:.3f} m, delta<1.25 "
                  f"{r['depth_delta1']:.3f} | random encoder "
                  f"{r['random_encoder_depth_rmse']:.3f} m | mean depth "
                  f"{r['mean_depth_depth_rmse']:.3f} m")  # fmt: skip
        rows.append({"encoder": spec, "protocol": args.protocol, **r})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
        print(f"wrote {args.json}")
    return 0


def _cmd_colorize(args: argparse.Namespace) -> int:
    from selfsup.colorize import colorize_files

    paths = colorize_files(
        args.encoder,
        args.reference,
        args.frames,
        args.out,
        size=args.size,
        temperature=args.temperature,
        top_k=args.top_k,
        device=args.device,
    )
    for p in paths:
        print(f"wrote {p}")
    return 0


def _eval_data(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from selfsup.evaluate import load_eval_data

    return load_eval_data(
        args.data,
        train_split=args.train_split,
        test_split=args.test_split,
        test_source=args.test_data,
        root=args.root,
        image_size=args.image_size,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        seed=args.seed,
        holdout=args.holdout,
    )


def _eval_all(args: argparse.Namespace) -> int:
    from selfsup.data import load_source
    from selfsup.evaluate.finetune import FinetuneConfig
    from selfsup.evaluate.suite import AXES, DEFAULT_AXES, SuiteOptions, evaluate_all, write_result

    axes = tuple(AXES) if args.axes == ["every"] else tuple(args.axes or DEFAULT_AXES)
    if "pictures" in axes and not args.out:
        raise ValueError("the pictures axis writes PNG files: give --out DIR")
    data = _eval_data(args)
    size = int(data.test.images.shape[1])
    extra_ood = {
        spec: load_source(spec, split=args.test_split, root=args.root, image_size=size)
        for spec in args.ood_data or []
    }
    opts = SuiteOptions(
        knn_k=tuple(args.k),
        knn_temperature=args.temperature,
        linear_epochs=args.epochs,
        finetune=FinetuneConfig(
            epochs=args.ft_epochs,
            batch_size=args.ft_batch_size,
            lr=args.ft_lr,
            seed=args.seed,
            device=args.device,
        ),  # fmt: skip
        partial_freeze=args.freeze_stages or None,
        label_fractions=tuple(args.label_fractions),
        label_seeds=tuple(args.label_seeds),
        pictures_dir=Path(args.out) / "pictures" if args.out else None,
        device=args.device,
        seed=args.seed,
    )
    specs = list(args.encoders)
    for baseline in args.baselines or []:
        if baseline == "random":
            specs.append(f"random:{args.encoders[0]}")
        else:
            specs.append(baseline)
    rows = []
    for spec in specs:
        row = evaluate_all(spec, data, axes=axes, options=opts, extra_ood=extra_ood)
        rows.append(row)
        if args.out:
            print(f"wrote {write_result(row, Path(args.out))}")
        if not spec.startswith("random:") and Path(spec).is_dir():
            _append_eval(Path(spec), row)
    _print_rows(rows)
    for row in rows:
        parts = []
        if "clustering" in row:
            c = row["clustering"]
            parts.append(f"NMI {c['nmi']:.3f} ARI {c['ari']:.3f} acc {c['cluster_accuracy']:.3f}")
        if "ood" in row:
            parts.append("OOD AUROC " + " ".join(
                f"{k}={v['auroc']:.3f}" for k, v in row["ood"].items()))  # fmt: skip
        for axis in ("finetune", "partial"):
            if axis in row:
                parts.append(f"{axis} {row[axis]['top1']:.3f}")
        if "robustness" in row:
            r = row["robustness"]["linear"]
            parts.append(f"mCA {r['mean_corruption_accuracy']:.3f} (clean {r['clean']:.3f})")
        if parts:
            print(f"{row['label'][:40]}: " + "; ".join(parts))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
        print(f"wrote {args.json}")
    return 0


def _eval_finetune(args: argparse.Namespace) -> int:
    from selfsup.evaluate import load_encoder
    from selfsup.evaluate.finetune import FinetuneConfig, finetune
    from selfsup.evaluate.low_label import low_label

    data = _eval_data(args)
    cfg = FinetuneConfig(
        epochs=args.ft_epochs,
        batch_size=args.ft_batch_size,
        lr=args.ft_lr,
        freeze_stages=args.freeze_stages,
        seed=args.seed,
        device=args.device,
    )
    rows = []
    for spec in args.encoders:
        if args.protocol == "finetune":
            result = finetune(load_encoder(spec, seed=args.seed), data.train, data.test, cfg,
                              num_classes=data.num_classes)  # fmt: skip
            curve = " ".join(f"{p['test_top1']:.3f}" for p in result["curve"] if "test_top1" in p)
            frozen = f"{result['freeze_stages']}/{result['num_stages']}"
            print(f"{spec}: fine-tune top-1 {result['top1']:.4f} (frozen stages {frozen}); "
                  f"per epoch: {curve}")  # fmt: skip
            row = {"encoder": spec, "protocol": "finetune", "data": data.key, **result}
        else:
            result = low_label(
                spec, data, fractions=tuple(args.label_fractions), seeds=tuple(args.label_seeds),
                protocols=tuple(args.low_label_protocols), finetune_cfg=cfg,
                linear_epochs=args.epochs, device=args.device,
            )  # fmt: skip
            for fraction, cell in result["fractions"].items():
                parts = [f"{p} {cell[p]['mean']:.4f} ± {cell[p]['std']:.4f}"
                         for p in args.low_label_protocols]  # fmt: skip
                print(f"{spec}: {fraction} of the labels ({cell['images']} images): "
                      + ", ".join(parts))  # fmt: skip
            row = {"protocol": "low_label", "data": data.key, **result}
        rows.append(row)
        if not spec.startswith("random:") and Path(spec).is_dir():
            _append_eval(Path(spec), row)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
        print(f"wrote {args.json}")
    return 0


def _append_eval(run_dir: Path, result: dict) -> None:
    with open(run_dir / "eval.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")


def _print_rows(rows: list[dict]) -> None:
    metric_keys = [k for k in rows[0] if k.startswith(("knn@", "linear_top1"))]
    header = f"{'encoder':<40} " + " ".join(f"{k:>12}" for k in metric_keys)
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['label'][:40]:<40} " + " ".join(f"{r[k]:>12.4f}" for k in metric_keys))


def _cmd_sweep(args: argparse.Namespace) -> int:
    from selfsup.sweep import check_protocols, parse_grid, plan_sweep, run_sweep, sweep_table

    specs, overrides = list(args.grid), list(args.overrides)
    if any("," in spec for spec in specs):
        # `--grid a=1,2 train.epochs=3`: a single value after the grid is a plain override
        overrides += [spec for spec in specs if "," not in spec]
        specs = [spec for spec in specs if "," in spec]
    grid = parse_grid(specs)
    out = Path(args.out or f"runs/sweep_{args.method}")
    check_protocols(args.protocols, args.metric)  # errors before the data loads
    plan_sweep(args.method, args.config, grid, out, overrides)
    rows = run_sweep(
        args.method,
        args.config,
        grid,
        out,
        overrides,
        data=_eval_data(args),
        protocols=tuple(args.protocols),
        linear_epochs=args.linear_epochs,
        metric=args.metric,
    )
    print()
    print(sweep_table(rows, grid, args.metric), end="")
    print()
    for name in ("sweep.json", "sweep.md", "sweep.png"):
        if (out / name).exists():
            print(f"wrote {out / name}")
    print(f"runs in {out}/<cell>")
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from selfsup.methods import list_methods

    methods = list_methods()
    w_name = max(len(c.name) for c in methods)
    w_family = max(len(c.family) for c in methods)
    for cls in sorted(methods, key=lambda c: (c.family, c.name)):
        print(f"{cls.name:<{w_name}}  {cls.family:<{w_family}}  {cls.description}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from selfsup.export import export_encoder

    paths = export_encoder(args.encoder, args.out, fmt=args.format)
    for p in paths:
        print(f"wrote {p}")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from selfsup.embed import embed_images

    summary = embed_images(args.source, args.encoder, args.out, batch_size=args.batch_size,
                           workers=args.workers, device=args.device,
                           fast=args.fast)  # fmt: skip
    print(f"embedded {summary.images} images ({summary.feature_dim} features each)")
    for name, reason in summary.skipped[:10]:
        print(f"skipped {name}: {reason}")
    if len(summary.skipped) > 10:
        print(f"... {len(summary.skipped) - 10} more skipped files")
    for p in summary.paths:
        print(f"wrote {p}")
    return 0


def _cmd_shards(args: argparse.Namespace) -> int:
    from selfsup.data import write_shards

    summary = write_shards(args.folder, args.out, shard_size=args.shard_size, prefix=args.prefix,
                           shuffle=not args.no_shuffle, seed=args.seed,
                           verify=not args.no_verify)  # fmt: skip
    for name, reason in summary.skipped[:10]:
        print(f"skipped {name}: {reason}")
    if len(summary.skipped) > 10:
        print(f"... {len(summary.skipped) - 10} more skipped files")
    classes = f", {len(summary.classes)} classes" if summary.classes else ", unlabeled"
    print(f"wrote {summary.samples} images{classes} into {len(summary.shards)} shards in "
          f"{summary.out} (manifest {summary.manifest.name})")  # fmt: skip
    first, last = summary.shards[0].name, summary.shards[-1].name
    print(f"train on them with: data.source={summary.out} (or {summary.out}/{first} .. {last})")
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from selfsup.quickstart import run_quickstart

    run_quickstart(out_dir=args.out_dir, minutes=args.minutes, device=args.device)
    return 0


def _cmd_speedrun(args: argparse.Namespace) -> int:
    from selfsup.speedrun import run_speedrun

    record = run_speedrun(
        args.minutes,
        args.out,
        data=args.data,
        root=args.root,
        seed=args.seed,
        linear=args.linear,
        device=args.device,
        holdout=args.holdout,
        recipe=args.recipe,
        overrides=args.overrides,
    )
    shown = {k: record[k] for k in ("knn_top1", "knn20_top1", "linear_top1") if k in record}
    print(
        f"speedrun ({record['recipe']}, {record['precision']}, {record['threads']} threads): "
        + ", ".join(f"{k}={v:.4f}" for k, v in shown.items())
        + f"; trained {record['train_seconds'] / 60:.1f} min on {record['images_seen']:,} "
        f"images, evaluated in {record['eval_seconds'] / 60:.1f} min"
    )
    if "effective_rank" in record:
        print(f"no labels: effective rank {record['effective_rank']:.1f} of "
              f"{record['feature_dim']}; pretext {record['pretext']}")  # fmt: skip
    print(f"run directory: {args.out}  (speedrun.json, encoder.safetensors)")
    return 0


def _add_data_args(p: argparse.ArgumentParser) -> None:
    """The labeled-data flags of ``eval`` and ``sweep`` (read by ``_load_eval_data``)."""
    p.add_argument("--data", default="cifar10", help="labeled dataset (name, .npz or folder)")
    p.add_argument("--test-data", help="test split source when it is another file/folder")
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="test")
    p.add_argument("--root", help="data root for named datasets (default $SELFSUP_DATA)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--train-subset", type=int)
    p.add_argument("--test-subset", type=int)
    p.add_argument(
        "--holdout",
        type=int,
        help="validate instead of test: queries are the N held-out images of the train split "
        "(those a run with data.holdout=N never saw), the bank the rest",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfsup", description="Self-supervised pretraining and evaluation of image encoders."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="pretrain an encoder with a method")
    p.add_argument("method", help="method name (see `selfsup methods`)")
    p.add_argument("--config", help="recipe name or YAML file (default: <method>_default)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument(
        "--stop-at-step",
        type=int,
        help="checkpoint and stop after this step (the schedule is unchanged; --resume continues)",
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=5")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("config", help="print the resolved config of a run without running it")
    p.add_argument("method")
    p.add_argument("--config")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("eval", help="evaluate encoders on labeled data")
    p.add_argument(
        "protocol",
        choices=[
            "knn",
            "linear",
            "all",
            "pretext",
            "finetune",
            "low-label",
            "propagation",
            "depth",
        ],  # fmt: skip
        help="pretext: the method's own task metric on held-out images (run dirs); finetune: "
        "the encoder + a new head trained end to end (--freeze-stages for partial); low-label: "
        "linear / fine-tune / from scratch on class-balanced label fractions over seeds; "
        "propagation: first-frame masks propagated through held-out synthetic clips (mIoU, "
        "video_colorization runs) beside identity and a random-init method; depth: a depth "
        "decoder on the frozen encoder (RMSE, delta<1.25) beside a random-init encoder and the "
        "mean depth. For these two --data defaults to the run's own source, --test-subset is "
        "the held-out clips/scenes and --train-subset the probe's training scenes",
    )
    p.add_argument(
        "encoders",
        nargs="+",
        help="run dirs, checkpoint dirs, encoder .safetensors files, or random:SPEC",
    )
    _add_data_args(p)
    p.add_argument("--k", type=int, nargs="+", default=[200, 20])
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=100, help="linear probe epochs")
    p.add_argument("--lr", type=float, default=0.1, help="linear probe learning rate")
    p.add_argument(
        "--no-batch-norm",
        action="store_true",
        help="linear probe without BatchNorm (no affine) before the linear layer",
    )
    p.add_argument(
        "--axes",
        nargs="+",
        help="eval all: the axes to run (default: knn linear clustering ood pretext cost; "
        "also finetune partial low_label robustness, or 'every')",
    )
    p.add_argument("--out", help="eval all: write one JSON per encoder into this directory")
    p.add_argument(
        "--baselines",
        nargs="+",
        help="eval all: baselines evaluated beside: 'random' (random init of the first "
        "encoder's architecture) or any encoder spec (e.g. a supervised run)",
    )
    p.add_argument(
        "--ood-data", nargs="+", help="eval all: datasets to detect as out-of-distribution"
    )
    p.add_argument("--ft-epochs", type=int, default=30, help="fine-tuning epochs")
    p.add_argument("--ft-lr", type=float, default=0.05, help="fine-tuning peak lr (batch 256)")
    p.add_argument("--ft-batch-size", type=int, default=256)
    p.add_argument(
        "--freeze-stages", type=int, default=0, help="freeze the first k encoder stages/blocks"
    )
    p.add_argument("--label-fractions", type=float, nargs="+", default=[0.01, 0.1])
    p.add_argument("--label-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--low-label-protocols",
        nargs="+",
        default=["linear", "finetune", "scratch"],
        choices=["linear", "finetune", "scratch"],
    )
    p.add_argument(
        "--head",
        help="evaluate the outputs of this method head after the encoder (run dirs), e.g. "
        "projector: the representation after SimCLR's or MoCo's projection head",
    )
    p.add_argument("--prop-temperature", type=float, default=0.5,
                   help="propagation: attention temperature")  # fmt: skip
    p.add_argument("--top-k", type=int, default=10, help="propagation: reference locations kept")
    p.add_argument("--context", type=int, default=2,
                   help="propagation: previous frames used besides the first")  # fmt: skip
    p.add_argument("--tune-clips", type=int, default=0,
                   help="propagation: pick each embedding's temperature / top-k / normalisation "
                   "on this many validation clips (0: use the flags above)")  # fmt: skip
    p.add_argument("--probe-epochs", type=int, default=40, help="depth: decoder epochs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results as JSON here")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "colorize",
        help="colourise grey frames from one coloured reference frame (video_colorization run)",
        description="Copy the reference frame's colours into each frame by attention over "
        "embeddings of their grey channels; writes DIR/<frame>_colorized.png and "
        "DIR/side_by_side.png (reference | grey | colourised, one row per frame).",
    )
    p.add_argument("--encoder", required=True,
                   help="a video_colorization run dir (or any grey-input encoder)")  # fmt: skip
    p.add_argument("--reference", required=True, help="the coloured reference frame")
    p.add_argument("frames", nargs="+", help="frames to colourise (only their L is used)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--size", type=int, help="shorter side frames are processed at "
                   "(default: the run's training image size)")  # fmt: skip
    p.add_argument("--temperature", type=float,
                   help="copy temperature (default: the run's copy_temperature)")  # fmt: skip
    p.add_argument("--top-k", type=int, help="copy from the k most similar locations only")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_colorize)

    p = sub.add_parser(
        "sweep",
        help="train and evaluate one run per cell of a grid of config values",
        description="Train one run per cell of the grid (the Cartesian product of the --grid "
        "values) into OUT/<cell>, evaluate each encoder, and write OUT/sweep.json (after every "
        "cell), OUT/sweep.md and OUT/sweep.png. Rerunning the command continues a killed sweep: "
        "finished cells are skipped, an interrupted run resumes from its last checkpoint.",
    )
    p.add_argument("method", help="method name (see `selfsup methods`)")
    p.add_argument("--config", help="recipe name or YAML file (default: <method>_default)")
    p.add_argument(
        "--grid",
        nargs="+",
        required=True,
        metavar="KEY=V1,V2",
        help="config key and the values to try, e.g. method_args.temperature=0.1,0.5; several "
        "keys make a grid (a KEY=VALUE without a comma among them is a plain override)",
    )
    p.add_argument("--out", help="sweep directory (default: runs/sweep_<method>)")
    p.add_argument(
        "--protocols", nargs="+", default=["knn"], choices=["knn", "linear"],
        help="evaluation protocols (default: knn)",
    )  # fmt: skip
    p.add_argument(
        "--metric", default="knn@200", choices=["knn@200", "knn@20", "linear_top1"],
        help="the metric to rank cells by and plot (default: knn@200)",
    )  # fmt: skip
    p.add_argument("--linear-epochs", type=int, default=100, help="linear probe epochs")
    _add_data_args(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation subsets")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every cell")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("methods", help="list the available methods")
    p.set_defaults(func=_cmd_methods)

    p = sub.add_parser("export", help="export an encoder for downstream use")
    p.add_argument(
        "encoder", help="run dir, checkpoint dir, encoder .safetensors or save_pretrained dir"
    )
    p.add_argument(
        "--out", required=True, help="output file (.safetensors, .onnx) or directory (pretrained)"
    )
    p.add_argument(
        "--format",
        choices=["selfsup", "torchvision", "timm", "pretrained", "onnx"],
        default="selfsup",
        help="selfsup: safetensors + json; torchvision/timm: the library's key names; "
        "pretrained: a selfsup.Encoder.save_pretrained directory; onnx: a graph taking float "
        "images (N, 3, H, W) in [0, 1] (needs selfsup[onnx])",
    )
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "embed",
        help="features of every image in a folder (or WebDataset shards) to .npy or .parquet",
    )
    p.add_argument("source", help="image folder (searched recursively) or shard spec")
    p.add_argument("--encoder", required=True, help="run dir, checkpoint, .safetensors or "
                   "save_pretrained dir")  # fmt: skip
    p.add_argument("--out", required=True, help="FILE.npy (+ FILE.txt listing the images) or "
                   "FILE.parquet (needs pyarrow)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="decoding processes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--fast", action="store_true", help="decode JPEGs as training streams them "
                   "(DCT scaling, libjpeg-turbo): faster, not bit-identical to "
                   "Encoder.preprocess")  # fmt: skip
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser("shards", help="write an image folder as WebDataset shards")
    p.add_argument("folder", help="image folder (class sub-folders give labels)")
    p.add_argument("--out", required=True, help="directory for the shards and shards.json")
    p.add_argument("--shard-size", type=int, default=1000, help="images per shard")
    p.add_argument("--prefix", default="train", help="shard file names: PREFIX-000000.tar ...")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle across shards")
    p.add_argument("--no-shuffle", action="store_true", help="keep the folder's order")
    p.add_argument("--no-verify", action="store_true", help="do not decode every file first")
    p.set_defaults(func=_cmd_shards)

    p = sub.add_parser("quickstart", help="a few minutes: SimCLR on CIFAR-10 vs a random encoder")
    p.add_argument("--out-dir", default="runs/quickstart")
    p.add_argument("--minutes", type=float, default=3.0, help="approximate training budget")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_quickstart)

    p = sub.add_parser(
        "speedrun",
        help="the best encoder in N minutes of this machine (time-based schedule), then kNN",
    )
    p.add_argument("--minutes", type=float, required=True, help="wall-clock training budget")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--data", default="cifar10", help="dataset name, .npz or image folder")
    p.add_argument("--root", help="data root for named datasets (default $SELFSUP_DATA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--linear", action="store_true", help="also a linear probe")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--holdout",
        type=int,
        help="hold N training images out and query them instead of the test split (tuning)",
    )
    p.add_argument("--recipe", help="another recipe (default: the one tuned for --minutes)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    p.set_defaults(func=_cmd_speedrun)

    from selfsup.report.cli import add_arguments as add_report_arguments
    from selfsup.report.cli import run as run_report

    p = sub.add_parser("report", help="static HTML + Markdown report comparing runs side by side")
    add_report_arguments(p).set_defaults(func=run_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # key=value overrides may come before or after options like --resume
        stray = [u for u in unknown if u.startswith("-") or "=" not in u]
        if stray or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(stray or unknown)}")
        args.overrides = [*args.overrides, *unknown]
    try:
        return args.func(args)
    except TrainingInterrupted as err:
        print(f"selfsup: {err}", file=sys.stderr)
        return 128 + err.signum
    except ConfigError as err:
        print(f"selfsup: {err}", file=sys.stderr)
        return 2
    except (SelfsupError, FileNotFoundError, ValueError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"selfsup: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("selfsup: interrupted", file=sys.stderr)
        return 130
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"selfsup: error: no space left on the device: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
