"""``python -m raykd.search SPACE.yaml``: a Ray Tune + Optuna search over distillation settings."""

from __future__ import annotations

import argparse
import errno
import functools
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from raykd.config import parse_overrides
from raykd.console import add_verbosity_args, library_log_level, progress_bars, quiet_libraries
from raykd.errors import ArgumentParser, UserError, run_cli
from raykd.metric_names import METRICS
from raykd.ownership import claim, has_content, ownership_lost, refuse_if_owned
from raykd.ray_address import check_reachable
from raykd.results.layout import SearchFolder
from raykd.results.schema import CONFIRM_PHASE, SEARCH_PHASE
from raykd.results.store import storage_failure
from raykd.search.space import Space
from raykd.tracking import add_tracking_args
from raykd.uri import is_uri, resolve_storage

PROG = "python -m raykd.search"
PROBE_BYTES = 1 << 20  # written and removed before anything starts
OWNED_TODO = ("two drivers must not write one search: wait for it to end or stop it (Ctrl-C or kill; "
              "its trials resume with --resume), or use another --name")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Search distillation hyperparameters with Ray Tune (Optuna sampler, ASHA early stopping). "
                    "The space file is validated in full first; the data and the teacher are prepared once "
                    "(synthetic data generated, teacher trained and cached when missing); every trial is written "
                    "to Parquet tables under STORAGE/NAME/tables.",
        epilog="exit codes: 0 finished, 2 bad input (nothing started), 3 stopped with unfinished trials "
               f"(continue with --resume). example: {PROG} search_spaces/demo.yaml "
               "--num-samples 6 --set train.epochs=3",
    )
    parser.add_argument("space", help="search-space YAML file (see search_spaces/)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted search (the latest one of this space, or --name)")
    parser.add_argument("--storage", default="results",
                        help="folder or pyarrow URI (s3://, gs://) holding searches (default: ./results)")
    parser.add_argument("--name", help="search name (default: SPACE-STEM-YYYYmmdd-HHMMSS)")
    parser.add_argument("--num-samples", type=int, help="override search.num_samples")
    parser.add_argument("--address", help="join a running Ray cluster: HOST:PORT, or auto ($RAY_ADDRESS, else the "
                                           "cluster last started on this machine) (default: a private local Ray)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a dotted key of the space (search.seed=1) or experiment (train.epochs=3)")
    add_tracking_args(parser)
    add_verbosity_args(parser)
    return parser


def _check_writable(storage: str) -> None:
    """Fail before any work when the storage cannot be written (a local folder, or a URI's bucket)."""
    if is_uri(storage):
        from raykd.results.store import check_uri_writable

        check_uri_writable(storage)
        return
    if Path(storage).exists() and not Path(storage).is_dir():
        raise UserError("expected a folder to hold searches, this is a file", file=storage, key="--storage")
    probe = Path(storage) / f".raykd-write-test-{os.getpid()}"
    created = [p for p in (Path(storage), *Path(storage).parents) if not p.exists()]  # removed after the probe
    try:
        Path(storage).mkdir(parents=True, exist_ok=True)
        with probe.open("wb") as fh:  # real bytes: a full disk still creates empty files
            fh.write(b"\0" * PROBE_BYTES)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        raise UserError(f"cannot write there ({err.strerror}{'; free some space' if full else ''})",
                        file=storage, key="--storage") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
        for folder in created:  # a search refused later leaves no folder behind
            try:
                folder.rmdir()
            except OSError:
                pass


def _pick_name(space: Space, storage: str, name: str | None, resume: bool) -> str:
    if name:
        return name
    stem = space.name
    if resume:
        if is_uri(storage):
            raise UserError("--resume on a URI storage needs --name", key="--name")
        candidates = sorted(p.name for p in Path(storage).glob(f"{stem}-*") if p.is_dir())
        if not candidates:
            raise UserError(f"no earlier search of {stem!r} under {storage} to resume", key="--resume")
        return candidates[-1]
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _check_resumable(paths) -> None:
    """``--resume`` needs a search folder (local) or Tune state (URI) under that name."""
    from ray.tune import Tuner

    if Path(paths.root).is_dir() if not is_uri(paths.storage) else Tuner.can_restore(paths.root):
        return
    raise UserError(f"no search to resume at {paths.root} (nothing was started under that name)", key="--resume")


def _restorable(paths) -> bool:
    """Whether Tune saved a whole state of the search to restore (:func:`raykd.search.tune_state.restorable`)."""
    if is_uri(paths.storage):
        return True
    from raykd.results import load_table
    from raykd.search.tune_state import restorable

    return restorable(paths.root, log=lambda line: print(line, flush=True),
                      trials_recorded=lambda: Path(paths.tables, "trials").is_dir()
                      and load_table(paths.tables).num_rows > 0)


def _init_ray(address: str | None, num_cpus: int | None, log_level: int) -> None:
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Every epoch checkpoints, which makes Tune warn about frequent state snapshots: expected here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=True, logging_level=log_level)
    else:  # private: never Ray's record of the last cluster started here (raykd/ray_address.py)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=log_level)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries(args)
    space = Space(args.space, parse_overrides(args.overrides), num_samples=args.num_samples)
    storage = resolve_storage(args.storage)
    name = _pick_name(space, storage, args.name, args.resume)

    paths = SearchFolder.of(storage, name)
    _check_writable(storage)  # before reading its owner file: e.g. a missing bucket, refused credentials
    refuse_if_owned(paths.root, key="--name", todo=OWNED_TODO)
    if not args.resume and not is_uri(storage) and has_content(paths.root):
        raise UserError(f"a search named {name!r} exists at {paths.root}; pass --resume or another --name",
                        key="--name")
    if args.resume:
        _check_resumable(paths)
    from raykd.tracking.setup import for_search

    args.tracking = for_search(args.log, args.mlflow_uri, storage=storage, root=paths.root, name=name,
                               resume=args.resume)
    address = check_reachable(args.address) if args.address else None
    owner = claim(paths.root, command=PROG, key="--name", todo=OWNED_TODO)
    if owner.taken_over:
        print(f"search folder {paths.root}: taken over from its last driver ({owner.taken_over})", flush=True)
    try:
        return _search(args, space, storage, name, paths, address)
    finally:
        owner.release()


def _search(args: argparse.Namespace, space: Space, storage: str, name: str, paths, address: str | None) -> int:
    """The search, its folder held by this driver (:mod:`raykd.ownership`)."""
    spec = space.settings
    print(f"search {name}: {spec.search.num_samples} samples × {spec.search.repeats} seeds, sampler "
          f"{spec.search.sampler}, scheduler {spec.scheduler.type}, executor {spec.resources.resolved_executor()}, "
          f"{len(space.params)} searched keys", flush=True)

    from raykd.train.setup import data_fingerprint, store_indexes, validate_data
    from raykd.train.teacher import check_teacher, ensure_teacher, needs_training

    cfg = space.base_config
    started = time.perf_counter()
    data_paths = validate_data(cfg.data, cfg.cache_dir, masks=space.trains_masks())  # before Ray: annotations, images, masks
    teacher_ckpt = trainer = None
    if needs_training(cfg):  # trained as a trial is, on Ray Train workers with the search's resources
        from raykd.train.worker import train_through_ray

        _init_ray(address, args.num_cpus, library_log_level(args))
        res = spec.resources
        trainer = functools.partial(train_through_ray, workers=res.workers_per_trial,
                                    cpus_per_worker=res.cpus_per_worker, gpus_per_worker=res.gpus_per_worker)
    teacher: dict = {}
    if cfg.teacher is not None:
        teacher_ckpt = ensure_teacher(cfg, log=lambda line: print(line, flush=True), progress=progress_bars(args),
                                      trainer=trainer)
        teacher = check_teacher(cfg, teacher_ckpt)
        if teacher_ckpt is None:  # teacher.weights as they are: scored once on this data when its head fits
            from raykd.train.teacher_eval import pretrained_teacher_metrics

            teacher = pretrained_teacher_metrics(cfg, log=lambda line: print(line, flush=True)) or {}
            print(f"teacher: {cfg.teacher.weights} (pretrained weights, not trained on this data"
                  + (f"; bbox_mAP {teacher['bbox_mAP']:.4f}" if "bbox_mAP" in teacher else "") + ")", flush=True)
        else:
            print(f"teacher: {teacher_ckpt} (bbox_mAP {teacher.get('bbox_mAP', float('nan')):.4f})", flush=True)
    store_indexes(data_paths, cfg.cache_dir)  # every input accepted: the trials memory-map these
    prep_s = time.perf_counter() - started

    _init_ray(address, args.num_cpus, library_log_level(args))
    from raykd.results import write_run
    from raykd.search.tuner import build_tuner, restore_tuner
    from raykd.tracking.callbacks import tune_callbacks

    if not is_uri(storage):
        Path(paths.root).mkdir(parents=True, exist_ok=True)
        if teacher_ckpt or teacher:
            Path(paths.teacher).write_text(json.dumps(
                {"checkpoint": teacher_ckpt, **teacher}, default=str))
    write_run(paths.tables, name, dataset_fingerprint=data_fingerprint(cfg), space_path=str(space.path),
              space_text=space.text, resumed=args.resume)
    args.tracking.save()
    if args.tracking.backends:
        print(args.tracking.describe(), flush=True)
    resumable = args.resume and _restorable(paths)
    if args.resume and not resumable:
        print(f"resume: no trial of {name} had started yet (the last driver stopped before Tune saved its "
              "state); starting the search", flush=True)
    tuner = restore_tuner(space, paths, teacher_ckpt) if resumable else build_tuner(
        space, paths, teacher_ckpt, quiet=args.quiet, autoscaling=bool(args.address),
        extra_callbacks=tune_callbacks(args.tracking))
    print(f"running: results in {paths.root}", flush=True)
    resume_cmd = (f"{PROG} {shlex.quote(str(args.space))} --resume --name {shlex.quote(name)}"
                  + (f" --storage {shlex.quote(storage)}" if args.storage != "results" else ""))
    search_start = time.perf_counter()
    if not _fit(tuner, storage, resume_cmd):
        return 3
    if spec.confirm is not None and not _unfinished(paths, SEARCH_PHASE):
        confirm = _confirm_tuner(args, space, paths, teacher_ckpt)
        if confirm is not None and not _fit(confirm, storage, resume_cmd):
            return 3
    search_s = time.perf_counter() - search_start
    unfinished = _summary(space, paths, prep_s, search_s)
    if unfinished:
        print(f"\ninterrupted: {unfinished} trial(s) unfinished; continue with:\n  {resume_cmd}", flush=True)
        return 3
    return 0


def _fit(tuner, storage: str, resume_cmd: str) -> bool:
    """Run ``tuner``; False (after one line on stderr) when the storage cannot take the results."""
    try:
        tuner.fit()
    except Exception as err:
        lost = ownership_lost(err)
        if lost is not None:
            raise lost from None  # one line: another driver holds the folder now
        failure = storage_failure(err)
        if failure is None:
            raise
        # The tables hold every part published before; nothing half-written is visible.
        print(f"{PROG}: error: {storage}: --storage: cannot write the results ({failure.strerror}); "
              f"free space or fix the storage, then continue with: {resume_cmd}", file=sys.stderr, flush=True)
        return False
    return True


def _unfinished(paths, phase: str) -> int:
    """Trials of ``phase`` the tables still mark running (a search stopped before they ended)."""
    from raykd.analyze.verdict import phase_of
    from raykd.results import load

    trials = load(paths.tables)
    return int(((trials["status"] == "RUNNING") & (phase_of(trials) == phase)).sum()) if len(trials) else 0


def _confirm_tuner(args: argparse.Namespace, space: Space, paths, teacher_ckpt: str | None):
    """The confirmation phase's Tuner: restored when it had started, else built from the
    search phase's ranking; None when no search trial has a value to rank.

    Its teachers (:func:`raykd.search.confirm.prepare_teachers`) are trained first when missing,
    and found in the cache when the phase resumes. With seeded teachers each trial names its
    own checkpoint, so the trainable is bound to none."""
    from raykd.search.confirm import confirm_config, confirmation_points, prepare_teachers, seeds_teachers
    from raykd.search.tune_state import can_restore
    from raykd.search.tuner import build_confirm_tuner, restore_tuner
    from raykd.tracking.callbacks import tune_callbacks

    confirm = space.settings.confirm
    if confirm.teacher_seeds and not seeds_teachers(space):
        print(f"confirm: the teacher is used as it is (no teacher.train block): one teacher, not one per "
              f"confirm.teacher_seeds {confirm.teacher_seeds}", flush=True)
    teachers = prepare_teachers(space, log=lambda line: print(line, flush=True), progress=not args.quiet)
    seeded = [t for t in teachers if t.seed is not None]
    bound = None if seeded else (teachers[0].checkpoint if teachers else teacher_ckpt)
    if seeded and not is_uri(paths.storage):
        _record_teacher(paths, "teacher_seeds", {str(t.seed): {"checkpoint": t.checkpoint, **t.metrics} for t in seeded})
    elif teachers and teachers[0].checkpoint != teacher_ckpt and not is_uri(paths.storage):
        _record_teacher(paths, "confirm_teacher", {"checkpoint": teachers[0].checkpoint, **teachers[0].metrics})
    if can_restore(paths.confirm, local=not is_uri(paths.storage)):
        print(f"confirm: continuing the confirmation phase in {paths.confirm}", flush=True)
        return restore_tuner(space, paths, bound, confirm=True)
    if not is_uri(paths.storage) and Path(paths.confirm).exists():
        # Its driver stopped before Tune saved a state: no confirmation trial had started.
        shutil.rmtree(paths.confirm)
    points = confirmation_points(space, paths.root, teachers)
    if not points:
        print("confirm: no search trial has a value to rank; nothing to confirm", flush=True)
        return None
    configs = len({json.dumps({k: v for k, v in p.items() if not k.startswith(("train.seed", "teacher."))},
                              sort_keys=True, default=str) for p in points})
    teachers_text = (f" × {len(seeded)} teachers (seeds {[t.seed for t in seeded]}; a configuration without "
                     "the teacher once per seed)" if seeded else "")
    changed = f", with {_pairs(confirm.set)}" if confirm.set else ""
    print(f"confirm: {configs} configurations × {len(confirm.seeds)} fresh seeds {confirm.seeds}{teachers_text} "
          f"at the full budget ({confirm_config(space).train.epochs} epochs{changed}), no early stopping, "
          f"{len(points)} trials", flush=True)
    return build_confirm_tuner(space, paths, bound, points, quiet=args.quiet, autoscaling=bool(args.address),
                               extra_callbacks=tune_callbacks(args.tracking, CONFIRM_PHASE))


def _pairs(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _record_teacher(paths, key: str, value: dict) -> None:
    """Add the confirmation's teachers to ``teacher.json``: ``teacher_seeds`` (each seeded
    teacher's checkpoint and metrics) or ``confirm_teacher`` (the one teacher ``confirm.set`` gave
    the confirmation, when it is not the search's)."""
    path = Path(paths.teacher)
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        record = {}
    record[key] = value
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, default=str))
    os.replace(tmp, path)


def _summary(space: Space, paths, prep_s: float, search_s: float) -> int:
    """Print the outcome; return the number of trials left unfinished (a stopped search).

    Best configuration, baseline and their difference come from
    :func:`raykd.analyze.verdict.decide`, as in ``raykd.analyze``'s summary and ``summary.json``.
    """
    from raykd.analyze.inputs import read_inputs
    from raykd.analyze.teachers import teacher_scores
    from raykd.analyze.verdict import decide

    metric = space.settings.metrics[0]
    inputs = read_inputs([paths.root])
    trials = inputs.trials
    counts = trials["stop_reason"].value_counts().to_dict()
    print(f"\ndone: {len(trials)} trials ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}); "
          f"preparation {prep_s:.0f} s, search {search_s:.0f} s", flush=True)
    found = decide(trials, inputs.epochs, inputs.params, metric, teacher=inputs.teacher,
                   teacher_scores=teacher_scores(inputs.teacher_seeds, metric), rank_check=inputs.rank_check,
                   searched=list(inputs.specs), confirm_teacher=inputs.confirm_teacher) if metric in METRICS else None
    for line in found.lines() if found else []:
        print(line)
    if space.settings.closing_note:
        print(space.settings.closing_note.strip())
    print(f"tables: {paths.tables}")
    print(f"next:   {PROG.replace('search', 'analyze')} {shlex.quote(paths.root)}")  # raykd analyze when run as raykd search
    return int((trials["status"] == "RUNNING").sum())


if __name__ == "__main__":
    run_cli(main, PROG)
