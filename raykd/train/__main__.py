"""``python -m raykd.train EXPERIMENT.yaml``: train one teacher or student, no search."""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import yaml

from raykd.config import load_experiment, parse_overrides
from raykd.console import add_verbosity_args, library_log_level, progress_bars, quiet_libraries
from raykd.epoch_record import metrics_lines
from raykd.errors import ArgumentParser, UserError, run_cli
from raykd.ownership import claim
from raykd.ray_address import check_reachable
from raykd.tracking import add_tracking_args
from raykd.tracking.feed import RunFeed, run_feed

PROG = "python -m raykd.train"
OWNED_TODO = "another run is writing there: wait for it to end or stop it, or set another train.output_dir"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Train the student of an experiment (distilled from its teacher when distill.method is not "
                    "'none'), with COCO evaluation every epoch. Checkpoints and metrics go to train.output_dir: "
                    "checkpoints/state.pt (exact resume), metrics.jsonl (one line per epoch), model_final.pt (last epoch) "
                    "and model_best.pt (best bbox_mAP).",
        epilog=f"example: {PROG} experiments/shapes_student.yaml --set distill.method=mgd --set train.seed=1",
    )
    parser.add_argument("experiment", help="experiment YAML file (see experiments/)")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", default=[],
                        help="override a dotted key, e.g. --set train.epochs=4 (repeatable; values parse as YAML)")
    parser.add_argument("--workers", type=int, default=1,
                        help="DDP workers through Ray Train's TorchTrainer (default 1: plain PyTorch, no Ray)")
    parser.add_argument("--gpus-per-worker", type=int, choices=(0, 1), default=None,
                        help="with --workers: 1 GPU per worker (default: 1 when CUDA is visible)")
    parser.add_argument("--address", help="with --workers: join a running Ray cluster, HOST:PORT or auto ($RAY_ADDRESS, "
                                           "else the cluster last started on this machine) (default: a private local Ray)")
    parser.add_argument("--resume", action="store_true", help="continue from train.output_dir/checkpoints/state.pt")
    # kept for scripts written before -q (bars are drawn only on a terminal, -q hides them)
    parser.add_argument("--no-progress", action="store_true", help=argparse.SUPPRESS)
    add_tracking_args(parser, kind="run")
    add_verbosity_args(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries(args)
    args.progress = progress_bars(args) and not args.no_progress
    if args.workers < 1:
        raise UserError(f"expected a positive number of workers, got {args.workers}", key="--workers")
    overrides = parse_overrides(args.overrides)
    cfg = load_experiment(args.experiment, overrides)
    out = Path(cfg.train.output_dir)
    from raykd.train.checkpoint import latest_state

    resume_path = latest_state(out) if args.resume else None
    if args.resume and resume_path is None:
        raise UserError("nothing to resume: no checkpoint", file=out / "checkpoints" / "state.pt", key="--resume")
    from raykd.tracking.setup import for_train

    args.tracking = for_train(args.log, args.mlflow_uri, output_dir=str(out.resolve()), name=cfg.name,
                              resume=args.resume)
    from raykd.train.setup import validate_data

    data_paths = validate_data(cfg.data, cfg.cache_dir, masks=cfg.trains_masks())  # before anything is written
    from raykd.models.weights import check_weights

    check_weights(cfg)
    if args.address and args.workers == 1:
        raise UserError("--address joins a Ray cluster for --workers N > 1; one worker runs without Ray",
                        key="--address")
    address = check_reachable(args.address) if args.address else None
    owner = claim(out, command=PROG, key="train.output_dir", todo=OWNED_TODO)
    if owner.taken_over:
        print(f"output folder {out}: taken over from its last run ({owner.taken_over})", flush=True)
    try:
        return _train(args, cfg, out, resume_path, address, data_paths)
    finally:
        owner.release()


def _train(args: argparse.Namespace, cfg, out: Path, resume_path: Path | None, address: str | None,
           data_paths) -> int:
    """The run, its output folder held by this process (:mod:`raykd.ownership`)."""
    from raykd.train.setup import store_indexes

    teacher_ckpt = None
    if cfg.teacher is not None and (cfg.distill.method != "none" or cfg.student.inherit):
        from raykd.train.teacher import check_teacher, ensure_teacher

        teacher_ckpt = ensure_teacher(cfg, progress=args.progress)
        check_teacher(cfg, teacher_ckpt)
    store_indexes(data_paths, cfg.cache_dir)  # every input accepted: the workers memory-map these
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    print(f"training {cfg.student.arch} {cfg.student.backbone}/FPN{cfg.student.fpn_channels}, "
          f"distill={cfg.distill.method}, {cfg.train.epochs} epochs, output {out}", flush=True)
    if resume_path is not None:
        print(f"resuming from {resume_path}", flush=True)
    args.tracking.save()
    with run_feed(args.tracking, cfg.model_dump(mode="json")) as feed:
        if args.workers == 1:
            final = _train_local(cfg, out, teacher_ckpt, resume_path=resume_path, progress=args.progress,
                                 feed=feed, log=(lambda line: None) if args.quiet else print)
        else:
            final = _train_ray(cfg, out, teacher_ckpt, workers=args.workers, gpus=args.gpus_per_worker, feed=feed,
                               resume_path=resume_path, address=address, log_level=library_log_level(args))
    from raykd.metric_names import METRICS

    print(json.dumps({k: final[k] for k in METRICS if k in final}))
    return 0


def _train_local(cfg, out: Path, teacher_ckpt, *, resume_path: Path | None, progress: bool, feed: RunFeed,
                 log=print) -> dict:
    from raykd.train.checkpoint import load_state, save_state
    from raykd.train.loop import fit
    from raykd.train.teacher import BEST_METRIC, BestModel

    state_path = out / "checkpoints" / "state.pt"
    resume_state = load_state(resume_path) if resume_path else None
    if resume_state is not None:
        feed.history(resume_state.get("history", []))
    metrics_path = out / "metrics.jsonl"
    if resume_state is None:
        metrics_path.unlink(missing_ok=True)
    else:  # the history in the state is the truth (a Ray Train run wrote none of this file)
        metrics_path.write_text(metrics_lines(resume_state.get("history", [])))

    best = BestModel(out)
    if resume_state is not None:  # the best epoch so far is the one model_best.pt holds
        best.metrics = max(resume_state.get("history", []), key=lambda m: m.get(BEST_METRIC) or -1.0, default={})

    def on_epoch_end(record, make_state):
        metrics = record.as_report()
        state = make_state()
        save_state(state, state_path)
        with metrics_path.open("a") as fh:
            fh.write(metrics_lines([metrics]))
        feed.epoch(metrics)
        best.update(metrics, lambda: state)

    final = fit(cfg, teacher_checkpoint=teacher_ckpt, resume_state=resume_state, on_epoch_end=on_epoch_end,
                progress=progress, log=log)
    return final.as_report() if final is not None else {}


def _train_ray(cfg, out: Path, teacher_ckpt, *, workers: int, gpus: int | None, feed: RunFeed, resume_path: Path | None,
               address: str | None = None, log_level: int = logging.WARNING) -> dict:
    """Run the loop on ``workers`` DDP ranks through Ray Train; metrics and model land in ``out``.
    ``address``: a cluster to join (checked by :func:`raykd.ray_address.check_reachable`); None
    starts a private local Ray, never the one Ray's record of the last cluster names."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import torch

    from raykd.tracking.callbacks import ray_train_callbacks
    from raykd.train.checkpoint import STATE_FILE, load_state
    from raykd.train.teacher import improves, save_model, teacher_metrics
    from raykd.train.worker import BEST_FILE, make_trainer

    gpus_per_worker = (1 if torch.cuda.is_available() else 0) if gpus is None else gpus
    if not ray.is_initialized() and address:
        ray.init(address=address, log_to_driver=True, logging_level=log_level)
    elif not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, log_to_driver=True, logging_level=log_level)
    trainer = make_trainer(cfg.model_dump(mode="json"), workers=workers, gpus_per_worker=gpus_per_worker,
                           storage_path=str(out / "ray"), name=f"train-{cfg.name}",
                           teacher_checkpoint=teacher_ckpt, resume_path=str(resume_path) if resume_path else None,
                           callbacks=ray_train_callbacks(feed), keep_best=True)
    result = trainer.fit()
    if result.error:
        raise result.error
    metrics = dict(result.metrics or {})
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as folder:
            state = load_state(Path(folder) / STATE_FILE)
            best = load_state(Path(folder) / BEST_FILE)
        (out / "metrics.jsonl").write_text(metrics_lines(state["history"]))
        feed.history(state["history"])
        save_model(state["model"], out / "model_final.pt", metrics=state["history"][-1],
                   categories=state.get("categories"))
        # Resumed from a one-worker run (whose checkpoint has no best.pt): its model_best.pt competes.
        kept = out / "model_best.pt"
        if resume_path is None or not kept.is_file() or improves(best["metrics"], teacher_metrics(kept)):
            save_model(best["model"], kept, metrics=best["metrics"], categories=best.get("categories"))
        metrics = state["history"][-1]
    return metrics


if __name__ == "__main__":
    run_cli(main, PROG)
