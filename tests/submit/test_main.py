"""``python -m raykd.submit`` without a cluster: bad input, the job it builds, storage and token rules."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raykd.errors import UserError, run_cli
from raykd.search.space import Space
from raykd.submit.__main__ import PROG, main
from raykd.submit.auth import auth_headers
from raykd.submit.client import resolve_address
from raykd.submit.package import (
    ENV_VARS,
    EXCLUDES,
    JOB_FILES,
    build_job,
    check_storage,
    node_local_paths,
    project_root,
    resolve_storage,
)

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "search_spaces" / "demo.yaml"


def cli_error(argv: list[str], capsys) -> str:
    """Run the command in-process like ``python -m``: returns its stderr line, checks exit 2."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda _: main(argv), PROG)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert err.count("\n") == 0 and err.startswith(f"{PROG}: error: "), err
    return err


@pytest.fixture
def no_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def test_missing_address_is_one_line_exit_2(no_address, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "raykd.submit", str(DEMO)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"{PROG}: error: --address: no cluster address: pass --address "
                                   "http://HEAD:8265 or set RAY_ADDRESS")
    proc = subprocess.run([sys.executable, "-m", "raykd.submit", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "--shared-storage" in proc.stdout and "RAY_AUTH_TOKEN" in proc.stdout


def test_invalid_space_is_rejected_before_contacting_the_cluster(write_experiment, tmp_path, capsys):
    space = tmp_path / "bad.yaml"
    space.write_text(yaml.safe_dump({"experiment": str(write_experiment()), "space": {"train.lr": {"uniformm": [0, 1]}}}))
    # Nothing listens on port 1: had the command contacted the cluster, the error would name the address.
    err = cli_error([str(space), "--address", "http://127.0.0.1:1"], capsys)
    assert str(space) in err and "space.train.lr" in err
    err = cli_error([str(tmp_path / "missing.yaml"), "--address", "http://127.0.0.1:1"], capsys)
    assert "missing.yaml" in err
    err = cli_error([str(DEMO), "--address", "http://127.0.0.1:1", "--set", "train.epochs=zero"], capsys)
    assert "train.epochs" in err


def test_usage_errors(no_address, capsys):
    assert "give either SPACE.yaml or --status" in cli_error([str(DEMO), "--status", "raykd-x"], capsys)
    assert "expected SPACE.yaml" in cli_error(["--address", "http://127.0.0.1:1"], capsys)
    err = cli_error(["--list", "--address", "http://127.0.0.1:1"], capsys)
    assert "cannot reach the Ray dashboard at http://127.0.0.1:1" in err and "--address" in err
    assert "dashboard address" in cli_error(["--list", "--address", "auto"], capsys)


def test_address_comes_from_the_flag_or_ray_address(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:8265")
    assert resolve_address(None) == "http://10.0.0.5:8265"
    assert resolve_address("https://head.example:8443/") == "https://head.example:8443"
    monkeypatch.delenv("RAY_ADDRESS")
    with pytest.raises(UserError, match="no cluster address"):
        resolve_address(None)


def test_job_of_a_space_in_the_project_ships_the_project(tmp_path):
    root = project_root()
    assert root == ROOT
    job = build_job(Space(DEMO), name="demo-1", storage="/shared/raykd", staging=tmp_path / "staging",
                    num_samples=4, overrides=["train.epochs=2"])
    assert job.runtime_env["working_dir"] == str(ROOT)
    assert not (tmp_path / "staging").exists()  # nothing staged
    assert job.entrypoint == ("python -m raykd.search search_spaces/demo.yaml --address auto --storage /shared/raykd "
                              f"--name demo-1 --num-samples 4 --set train.epochs=2 "
                              f"--set data.synthetic.out_dir={ROOT}/data_cache/demo96 "
                              f"--set train.output_dir={ROOT}/runs/demo_student --set cache_dir={ROOT}/data_cache")
    assert job.submission_id == "raykd-demo-1"
    env = job.runtime_env["env_vars"]
    assert {k: env[k] for k in ENV_VARS} == ENV_VARS
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert env["RAYKD_GIT_COMMIT"] == commit and env["RAYKD_GIT_DIRTY"] in ("0", "1")  # the package has no .git
    assert ENV_VARS["RAY_JOB_STOP_SIGNAL"] == "SIGINT" and ENV_VARS["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.2"
    assert ENV_VARS["RAY_USAGE_STATS_ENABLED"] == "0"
    assert job.metadata["tool"] == "raykd" and job.metadata["space"] == "demo" and job.metadata["name"] == "demo-1"
    assert job.metadata["user"] and all(isinstance(v, str) for v in job.metadata.values())
    assert job.results == "/shared/raykd/demo-1"

    resumed = build_job(Space(DEMO), name="demo-1", storage=str(ROOT / "my_results"), staging=tmp_path / "s2",
                        resume=True, attempt=2)
    assert resumed.submission_id == "raykd-demo-1-r2"
    assert resumed.entrypoint.endswith(f"--set cache_dir={ROOT}/data_cache --resume")
    assert "/my_results" in resumed.runtime_env["excludes"]  # results kept inside the project stay out


def test_trackers_go_to_the_search_and_a_wrong_one_is_refused_before_the_cluster(tmp_path, capsys):
    from raykd.search.__main__ import build_parser

    job = build_job(Space(DEMO), name="demo-1", storage="/shared/raykd", staging=tmp_path / "staging",
                    log="tensorboard,mlflow", mlflow_uri="http://mlflow.internal:5000")
    assert job.entrypoint.endswith("/data_cache --log tensorboard,mlflow --mlflow-uri http://mlflow.internal:5000")
    parsed = build_parser().parse_args(shlex.split(job.entrypoint)[3:])  # the search takes them as its own flags
    assert (parsed.log, parsed.mlflow_uri) == ("tensorboard,mlflow", "http://mlflow.internal:5000")
    assert "--log" not in build_job(Space(DEMO), name="demo-1", storage="/shared/raykd",
                                    staging=tmp_path / "s2").entrypoint
    # Nothing listens on port 1: had the command contacted the cluster, the error would name the address.
    err = cli_error([str(DEMO), "--address", "http://127.0.0.1:1", "--log", "comet"], capsys)
    assert "--log" in err and "'comet'" in err and "127.0.0.1" not in err


def test_excludes_keep_the_package_and_drop_results_caches_and_checkpoints():
    from ray._private.runtime_env.packaging import _get_excludes  # how Ray matches runtime_env excludes

    excluded = _get_excludes(ROOT, list(EXCLUDES))
    for kept in ("raykd/results", "raykd/results/read.py", "raykd/data/cache.py", "benchmarks/data_loading.py",
                 "experiments/shapes_student.yaml", "search_spaces/demo.yaml"):
        assert not excluded(ROOT / kept), kept
    for dropped in (".git", "results", "results/demo/tables/x.parquet", "runs/shapes_teacher/model_final.pt",
                    "data_cache/shapes128/annotations/train.json", "cache", "benchmarks/out", "raykd/__pycache__",
                    "weights/student.pt"):
        assert excluded(ROOT / dropped), dropped


def test_space_outside_the_project_is_staged_beside_it(write_experiment, tmp_path):
    exp = write_experiment()
    space_dir = tmp_path / "spaces"
    space_dir.mkdir()
    (space_dir / "s.yaml").write_text(yaml.safe_dump({"experiment": str(exp), "space": {"train.lr": [0.001, 0.002]}}))
    staging = tmp_path / "staging"
    job = build_job(Space(space_dir / "s.yaml"), name="s1", storage=str(tmp_path / "out"), staging=staging)
    assert job.runtime_env["working_dir"] == str(staging)
    assert job.space_in_package == f"{JOB_FILES}/spaces/s.yaml"
    assert (staging / "raykd").resolve() == ROOT / "raykd"  # the project, linked
    assert not (staging / ".git").exists()
    staged = Space(staging / job.space_in_package)  # the copy validates on its own ...
    assert staged.experiment_path.resolve() == (staging / JOB_FILES / "exp.yaml").resolve()  # ... against the copy
    assert yaml.safe_load((staging / job.space_in_package).read_text())["experiment"] == "../exp.yaml"

    bare = build_job(Space(space_dir / "s.yaml"), name="s1", storage=str(tmp_path / "out"), staging=tmp_path / "bare",
                     package=False)
    assert sorted(p.name for p in (tmp_path / "bare").iterdir()) == [JOB_FILES]
    assert "raykd must be installed on the cluster" in bare.notes[0]


def test_files_with_bases_are_shipped_with_the_project_only(write_experiment, tmp_path):
    """Staged alone (outside the project, or --no-package), a file's _base_ files would be missing
    on the cluster: refused in one line; inside the project the whole project ships."""
    exp = write_experiment()
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({"_base_": exp.name, "name": "child"}))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"experiment": "child.yaml", "space": {"train.lr": [0.001, 0.002]}}))
    for package in (True, False):
        with pytest.raises(UserError, match=r"child.yaml: _base_: inherits from _base_ files"):
            build_job(Space(tmp_path / "s.yaml"), name="s1", storage=str(tmp_path / "out"),
                      staging=tmp_path / f"staging-{package}", package=package)
    inside = build_job(Space(ROOT / "search_spaces" / "shapes_reproduction.yaml"), name="r", storage="/shared/raykd",
                       staging=tmp_path / "project")  # reproduction_student.yaml inherits: the project ships
    assert inside.runtime_env["working_dir"] == str(ROOT)


def test_storage_must_be_shared_on_a_multi_node_cluster(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_storage("results") == str(tmp_path / "results")
    assert resolve_storage("s3://bucket/raykd/") == "s3://bucket/raykd"
    check_storage(str(tmp_path / "results"), nodes=1, shared=False)
    for uri in ("s3://bucket/raykd", "gs://bucket/raykd", "hdfs://nn/raykd"):
        check_storage(uri, nodes=4, shared=False)
    check_storage("/mnt/nfs/raykd", nodes=4, shared=True)
    for local in (str(tmp_path / "results"), "file:///tmp/raykd"):
        with pytest.raises(UserError, match="--shared-storage") as info:
            check_storage(local, nodes=2, shared=False)
        assert info.value.key == "--storage" and "2 nodes" in info.value.message


def test_relative_experiment_paths_are_named_for_multi_node_clusters():
    space = Space(ROOT / "search_spaces" / "methods_compare.yaml")  # its teacher is a relative checkpoint
    # Without a cache_dir, a job's cache is under a path storage (shared with it), on the node for a URI.
    assert node_local_paths(space, {}, "/shared/raykd") == ["data.synthetic.out_dir", "teacher.checkpoint"]
    assert node_local_paths(space, {}, "s3://b/raykd") == ["data.synthetic.out_dir", "teacher.checkpoint", "cache_dir"]
    assert node_local_paths(space, {"cache_dir": "/shared/cache", "teacher.checkpoint": "/shared/t.pt"},
                            "s3://b/raykd") == ["data.synthetic.out_dir"]
    assert node_local_paths(Space(DEMO), {}, "/shared/raykd") == ["data.synthetic.out_dir", "cache_dir"]


def test_relative_paths_mean_the_users_files_and_the_cache_defaults_to_the_storage(write_experiment, tmp_path):
    """The job's experiment is a copy inside its package: relative paths (in the file, the space's
    fixed block or --set) reach it as the absolute paths they mean here; an unset cache_dir is
    STORAGE/cache, shared by every job on that storage."""
    user = tmp_path / "user"
    user.mkdir()
    exp = yaml.safe_load(write_experiment().read_text())
    del exp["cache_dir"]
    exp["data"]["synthetic"] = {"out_dir": "shapes", "train_images": 4, "val_images": 2, "image_size": 64}
    del exp["data"]["train"], exp["data"]["val"]
    exp["student"]["weights"] = "../weights/s.pt"
    (user / "exp.yaml").write_text(yaml.safe_dump(exp))
    (user / "s.yaml").write_text(yaml.safe_dump({"experiment": "exp.yaml", "fixed": {"teacher.checkpoint": "t.pt"},
                                                 "space": {"train.lr": [0.001, 0.002]}}))
    job = build_job(Space(user / "s.yaml"), name="s1", storage="/shared/raykd", staging=tmp_path / "staging",
                    overrides=["train.epochs=1", "data.synthetic.out_dir=other"])
    sets = dict(item.split("=", 1) for item in shlex.split(job.entrypoint)[1:] if "=" in item)
    assert sets == {"train.epochs": "1", "data.synthetic.out_dir": str(user / "other"),
                    "student.weights": str(tmp_path / "weights" / "s.pt"), "teacher.checkpoint": str(user / "t.pt"),
                    "cache_dir": "/shared/raykd/cache"}
    assert shlex.split(job.entrypoint).count("data.synthetic.out_dir=other") == 0  # replaced, not repeated
    assert "cache_dir=~/.cache/raykd" in build_job(Space(user / "s.yaml"), name="s1", storage="s3://b/raykd",
                                                   staging=tmp_path / "s2").entrypoint
    exp["cache_dir"] = "/mine/cache"
    (user / "exp.yaml").write_text(yaml.safe_dump(exp))
    assert "cache_dir" not in build_job(Space(user / "s.yaml"), name="s1", storage="/shared/raykd",
                                        staging=tmp_path / "s3").entrypoint  # the user's own, as it is


def test_token_comes_from_rays_variables_and_is_never_shown(tmp_path, monkeypatch):
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert auth_headers() == {}  # no token anywhere: none sent
    with pytest.raises(UserError, match="RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"):
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        auth_headers()
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-default-file\n")
    assert auth_headers() == {"Authorization": "Bearer from-default-file"}
    token_file = tmp_path / "token"
    token_file.write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    assert auth_headers() == {"Authorization": "Bearer from-path"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert auth_headers() == {"Authorization": "Bearer from-env"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth_headers() == {}
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    token_file.write_text("")
    with pytest.raises(UserError, match="empty") as info:
        auth_headers()
    assert "from-" not in str(info.value)


def test_example_cluster_configs_are_valid(monkeypatch):
    from ray.autoscaler._private import util

    monkeypatch.setattr(util.logger, "disabled", True)  # its INFO line about the head's max workers
    aws = yaml.safe_load((ROOT / "experiments/cluster/ray_up_aws.yaml").read_text())
    util.validate_config(util.prepare_config(aws))  # Ray's own schema of `ray up` configs
    starts = aws["head_start_ray_commands"] + aws["worker_start_ray_commands"]
    assert sum("RAY_AUTH_MODE=token ray start" in c for c in starts) == 2
    assert "--dashboard-host=127.0.0.1" in aws["head_start_ray_commands"][-1]
    cluster, claim = yaml.safe_load_all((ROOT / "experiments/cluster/kuberay_raycluster.yaml").read_text())
    assert cluster["kind"] == "RayCluster" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    workers = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert {e["name"] for e in workers["env"]} == {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
    assert workers["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_paths_and_cache_from_a_base_file_reach_the_job_as_they_are_meant_here(write_experiment, tmp_path):
    """A relative path in an experiment's ``_base_`` file means a file beside that base; the job
    (which would resolve it inside its package) gets the absolute path; a base's cache_dir is kept.
    Files with bases ship with the project, so these lie in a temporary folder inside it."""
    import shutil
    import tempfile

    project = Path(__file__).resolve().parents[2]
    folder = Path(tempfile.mkdtemp(prefix=".test-bases-", dir=project))
    try:
        exp = yaml.safe_load(write_experiment().read_text())
        exp["student"]["weights"] = "weights/s.pt"
        exp["cache_dir"] = "base_cache"
        (folder / "common").mkdir()
        (folder / "common" / "base.yaml").write_text(yaml.safe_dump(exp))
        (folder / "exp.yaml").write_text(yaml.safe_dump({"_base_": "common/base.yaml", "name": "child"}))
        (folder / "s.yaml").write_text(yaml.safe_dump({"experiment": "exp.yaml",
                                                       "space": {"train.lr": [0.001, 0.002]}}))
        job = build_job(Space(folder / "s.yaml"), name="s1", storage="/shared/raykd", staging=tmp_path / "staging")
        sets = dict(item.split("=", 1) for item in shlex.split(job.entrypoint)[1:] if "=" in item)
        assert sets["student.weights"] == str(folder / "common" / "weights" / "s.pt")
        assert sets["cache_dir"] == str(folder / "common" / "base_cache")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
