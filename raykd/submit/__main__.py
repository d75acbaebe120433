"""``python -m raykd.submit SPACE.yaml --address http://HEAD:8265``: a search as a Ray job on a cluster."""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from raykd.config import parse_overrides
from raykd.console import add_verbosity_args, quiet_libraries
from raykd.errors import ArgumentParser, UserError, run_cli
from raykd.tracking.setup import add_tracking_args, parse_backends

PROG = "python -m raykd.submit"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Run a search (python -m raykd.search) on a Ray cluster through the Ray Jobs API.\n"
                    "The space file is validated here first; the project (or, with --no-package, only the space\n"
                    "and experiment files) is shipped as the job's working_dir. The cluster address is the\n"
                    "dashboard's (http://HEAD:8265; default: $RAY_ADDRESS). Token authentication uses Ray's\n"
                    "variables: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (RAY_AUTH_MODE=disabled\n"
                    "sends none). See docs/cluster.md.",
        usage=f"{PROG} SPACE.yaml [options]\n"
              f"       {PROG} status|logs|stop JOB_ID [--address URL] [--follow]\n"
              f"       {PROG} list [--address URL]",
        epilog="job commands (also as the flags --status, --logs, --stop, --list):\n"
               "  status JOB_ID   a job's status, its search and results\n"
               "  logs JOB_ID     a job's logs (with --follow: until it ends)\n"
               "  stop JOB_ID     stop a job (Tune saves the search state; resume it with --resume)\n"
               "  list            the raykd jobs of the cluster\n\n"
               "examples:\n"
               f"  {PROG} search_spaces/demo.yaml --address http://127.0.0.1:8265 --follow\n"
               f"  {PROG} search_spaces/demo.yaml --storage s3://bucket/raykd --name demo1\n"
               f"  {PROG} stop raykd-demo1\n"
               f"  {PROG} search_spaces/demo.yaml --storage s3://bucket/raykd --resume --name demo1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("space", nargs="?", help="search-space YAML file to submit")
    parser.add_argument("--address", help="Ray dashboard address, http://HEAD:8265 (default: $RAY_ADDRESS)")
    parser.add_argument("--follow", action="store_true",
                        help="stream the job's logs until it ends; exit 0 if it succeeded, 1 otherwise")
    parser.add_argument("--storage", default="results",
                        help="folder or URI for the search, reachable from every node: s3://, gs:// or a shared "
                             "mount; a relative path is made absolute here (default: ./results)")
    parser.add_argument("--shared-storage", action="store_true",
                        help="the --storage path is a shared mount (NFS) at the same path on every node")
    parser.add_argument("--name", help="search name (default: SPACE-STEM-YYYYmmdd-HHMMSS; with --resume: the "
                                       "latest job of this space on the cluster)")
    parser.add_argument("--num-samples", type=int, help="override search.num_samples")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a dotted key of the space or experiment (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="resume a stopped or failed search (submitted as raykd-NAME-rK)")
    parser.add_argument("--no-package", action="store_true",
                        help="ship only the space and experiment files; raykd must be installed on the cluster")
    parser.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                        help="also leave this gitignore-style pattern out of the package (repeatable)")
    add_tracking_args(parser)
    add_verbosity_args(parser)
    parser.add_argument("--driver-cpus", type=float, help="CPUs reserved for the search driver (default 0)")
    parser.add_argument("--driver-gpus", type=float,
                        help="GPUs reserved for the search driver, which trains a missing teacher (default 0)")
    manage = parser.add_mutually_exclusive_group()
    manage.add_argument("--status", metavar="JOB_ID", help="print a job's status")
    manage.add_argument("--logs", metavar="JOB_ID", help="print a job's logs (with --follow: until it ends)")
    manage.add_argument("--stop", metavar="JOB_ID",
                        help="stop a job (Tune saves the search state; resume it with --resume)")
    manage.add_argument("--list", action="store_true", help="list the raykd jobs of the cluster")
    return parser


JOB_COMMANDS = ("status", "logs", "stop", "list")


def job_command_flags(argv: Sequence[str]) -> list[str]:
    """``status JOB_ID ...`` (``logs``, ``stop``, ``list``) as the flags ``--status JOB_ID ...``;
    any other command line as it is."""
    argv = list(argv)
    if not argv or argv[0] not in JOB_COMMANDS:
        return argv
    command, rest = argv[0], argv[1:]
    if command == "list":
        return ["--list", *rest]
    if not rest or rest[0].startswith("-"):
        raise UserError(f"expected a JOB_ID after {command!r} (see '{PROG} list')", key=command)
    return [f"--{command}", *rest]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(job_command_flags(sys.argv[1:] if argv is None else argv))
    quiet_libraries(args)
    action = next((a for a in ("status", "logs", "stop", "list") if getattr(args, a)), None)
    if action and args.space:
        raise UserError(f"give either SPACE.yaml or --{action}, not both", key="SPACE")
    if not action and not args.space:
        raise UserError("expected SPACE.yaml to submit, or one of status, logs, stop, list", key="SPACE")
    from raykd.submit.client import JobsClient, resolve_address

    address = resolve_address(args.address)
    if action is None:
        return submit(args, address)
    client = JobsClient(address)
    if action == "status":
        return show_status(client, args.status)
    if action == "logs":
        if args.follow:
            return _outcome(client, args.logs, time.monotonic())
        print(client.logs(args.logs), end="")
        return 0
    if action == "stop":
        return stop(client, args.stop)
    return list_jobs(client)


def submit(args: argparse.Namespace, address: str) -> int:
    from raykd.search.space import Space
    from raykd.submit.client import JobsClient
    from raykd.submit.package import build_job, check_name, check_storage, node_local_paths, resolve_storage

    space = Space(args.space, parse_overrides(args.overrides), num_samples=args.num_samples)
    parse_backends(args.log)  # a wrong --log is refused here, not in the job's log
    spec = space.settings
    res = spec.resources
    print(f"space {args.space}: valid - {spec.search.num_samples} samples x {spec.search.repeats} seeds, sampler "
          f"{spec.search.sampler}, executor {res.resolved_executor()}, {res.workers_per_trial} worker(s) x "
          f"{res.cpus_per_worker:g} CPU, {res.gpus_per_worker:g} GPU per trial", flush=True)
    storage = resolve_storage(args.storage)
    client = JobsClient(address)
    nodes = client.nodes()
    print(f"cluster {address}: {nodes}", flush=True)
    check_storage(storage, nodes.alive, args.shared_storage)
    if nodes.alive > 1:
        local = node_local_paths(space, parse_overrides(args.overrides), storage)
        if local:
            print(f"note: {', '.join(local)} in {space.experiment_path.name} are relative: the job reads them at "
                  "their paths on this machine, which the other nodes have only on a shared mount (else set them "
                  "to shared paths, e.g. --set cache_dir=/shared/raykd/cache)")
    if res.gpus_per_worker > 0 and nodes.gpus == 0:
        print("note: the space asks for GPUs and the cluster has none now (an autoscaler may add them)")
    name, attempt = _name_and_attempt(client, space, args)
    check_name(name)
    refuse_if_running(client, f"{storage}/{name}")
    with tempfile.TemporaryDirectory(prefix="raykd-submit-") as staging:
        job = build_job(space, name=name, storage=storage, staging=Path(staging), package=not args.no_package,
                        resume=args.resume, attempt=attempt, num_samples=args.num_samples,
                        overrides=args.overrides, excludes=args.exclude, driver_cpus=args.driver_cpus,
                        driver_gpus=args.driver_gpus, log=args.log, mlflow_uri=args.mlflow_uri)
        for note in job.notes:
            print(note)
        started = time.monotonic()
        job_id = client.submit(**job.submit_kwargs())
    where = "" if args.address is None else f" --address {shlex.quote(args.address)}"
    print(f"submitted job {job_id} ({'resume of ' if args.resume else ''}search {name}) in "
          f"{time.monotonic() - started:.1f} s")
    print(f"  runs:    {job.entrypoint}")
    print(f"  results: {job.results} (tables: {job.results}/tables)")
    print(f"  logs:    {PROG} logs {job_id} --follow{where}")
    print(f"  stop:    {PROG} stop {job_id}{where}")
    print(f"  resume:  {PROG} {shlex.quote(args.space)}{where} --storage {shlex.quote(storage)} --resume "
          f"--name {name}", flush=True)
    if not args.follow:
        return 0
    return _outcome(client, job_id, started, results=job.results)


def _name_and_attempt(client, space, args) -> tuple[str, int]:
    """The search name and, for a resume, the number of its earlier resumes plus one."""
    from raykd.submit.client import TERMINAL

    if not args.resume:
        if args.name is None:
            return f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}", 0
        taken = [j.submission_id for j in client.list() if j.metadata.get("name") == args.name]
        if taken:
            raise UserError(f"the cluster already ran search {args.name!r} (job {taken[0]}); pass --resume to "
                            "continue it or another --name", key="--name")
        return args.name, 0
    jobs = client.list()
    name = args.name
    if name is None:
        mine = [j for j in jobs if j.metadata.get("space") == space.name]
        if not mine:
            raise UserError(f"no earlier job of space {space.name!r} on this cluster: pass --name", key="--resume")
        name = mine[-1].metadata["name"]
    earlier = [j for j in jobs if j.metadata.get("name") == name]
    running = [j.submission_id for j in earlier if str(j.status.value) not in TERMINAL]
    if running:
        raise UserError(f"search {name!r} is still running as job {running[0]}; stop it first "
                        f"({PROG} stop {running[0]})", key="--resume")
    return name, 1 + max((int(j.metadata.get("resume", "0")) for j in earlier), default=0)


def refuse_if_running(client, root: str) -> None:
    """Refuse to submit into a search folder a live driver holds (:mod:`raykd.ownership`): a
    running job of this cluster, or any other process; a job of this cluster that ended no longer
    holds it. Storage this machine cannot read is left to the job's own check."""
    from raykd.ownership import live_owner
    from raykd.submit.client import TERMINAL

    try:
        owner = live_owner(root)
    except (OSError, ValueError):
        return
    if owner is None:
        return
    if owner.job_id:
        try:
            status = client.status(owner.job_id)
        except UserError:  # not a job of this cluster
            status = None
        if status in TERMINAL:
            return
        if status is not None:
            raise UserError(f"this search is being written by job {owner.job_id} ({status}); stop it first "
                            f"({PROG} stop {owner.job_id}) or use another --name", file=root, key="--name")
    raise UserError(f"this search is being written by {owner.describe()}; stop that driver first or use another "
                    "--name", file=root, key="--name")


def _outcome(client, job_id: str, since: float, results: str | None = None) -> int:
    try:
        final, _ = client.follow(job_id, since=since)
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job_id} keeps running ({PROG} stop {job_id} stops it)")
        return 130
    info = client.info(job_id)
    print(f"job {job_id} {final}: {info.message or ''}".rstrip(": "))
    if results:
        print(f"results: {results}")
    return 0 if final == "SUCCEEDED" else 1


def show_status(client, job_id: str) -> int:
    info = client.info(job_id)
    meta = info.metadata or {}
    print(f"{info.submission_id or job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
    if meta.get("tool") == "raykd":
        print(f"  search:  {meta.get('name')} (space {meta.get('space_file')}, user {meta.get('user')})")
        print(f"  results: {meta.get('storage', '').rstrip('/')}/{meta.get('name')}")
    if info.start_time:
        end = info.end_time or time.time() * 1000
        print(f"  started: {_when(info.start_time)}, {'ran' if info.end_time else 'running for'} "
              f"{(end - info.start_time) / 1000:.0f} s")
    print(f"  runs:    {info.entrypoint}")
    return 0


def stop(client, job_id: str) -> int:
    started = time.monotonic()
    if not client.stop(job_id):
        print(f"{job_id}: already {client.status(job_id)}")
        return 0
    print(f"{job_id}: stop requested (SIGINT: Tune saves the search state)", flush=True)
    status = client.wait(job_id, timeout_s=90)
    print(f"{job_id}: {status} after {time.monotonic() - started:.1f} s")
    meta = client.info(job_id).metadata or {}
    if meta.get("tool") == "raykd" and status == "STOPPED":
        print(f"resume:  {PROG} {shlex.quote(meta.get('space_file', 'SPACE.yaml'))} --storage "
              f"{shlex.quote(meta.get('storage', ''))} --resume --name {meta.get('name')}")
    return 0


def list_jobs(client) -> int:
    jobs = client.list()
    if not jobs:
        print("no raykd jobs on this cluster")
        return 0
    for job in jobs:
        meta = job.metadata or {}
        started = _when(job.start_time) if job.start_time else "-"
        print(f"{job.submission_id:<40} {job.status.value:<10} {started}  search {meta.get('name')} "
              f"(space {meta.get('space')}, user {meta.get('user')})")
    return 0


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


if __name__ == "__main__":
    run_cli(main, PROG)
