"""raykd.submit refuses a search folder a live driver holds: a running job, or any other process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from raykd.errors import UserError
from raykd.search.space import Space
from raykd.submit.__main__ import refuse_if_running
from raykd.submit.package import JOB_ID_VAR, build_job

ROOT = Path(__file__).resolve().parents[2]
HOLD = textwrap.dedent("""
    import sys
    from raykd.ownership import claim
    held = claim(sys.argv[1], command="python -m raykd.search", key="--name", todo="-")
    print("held", flush=True)
    sys.stdin.read()
""")


class Jobs:
    """The one call of :class:`raykd.submit.client.JobsClient` the check makes."""

    def __init__(self, statuses: dict[str, str]):
        self.statuses = statuses

    def status(self, job_id: str) -> str:
        if job_id not in self.statuses:
            raise UserError(f"no job {job_id!r} on the cluster", key="JOB_ID")
        return self.statuses[job_id]


@pytest.fixture
def held_by_job(tmp_path):
    """A search folder held by a live process that runs as job ``raykd-demo``."""
    root = tmp_path / "results" / "demo"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], cwd=ROOT, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=dict(os.environ, **{JOB_ID_VAR: "raykd-demo"}))
    assert proc.stdout.readline().strip() == "held"
    yield root, proc
    proc.kill()
    proc.wait()


def test_running_job_refused_ended_job_not(held_by_job):
    root, proc = held_by_job
    with pytest.raises(UserError) as err:
        refuse_if_running(Jobs({"raykd-demo": "RUNNING"}), str(root))
    assert str(err.value) == (f"{root}: --name: this search is being written by job raykd-demo (RUNNING); stop it "
                              "first (python -m raykd.submit stop raykd-demo) or use another --name")
    refuse_if_running(Jobs({"raykd-demo": "STOPPED"}), str(root))  # its driver is ending: resumable
    with pytest.raises(UserError) as err:  # a job of another cluster: the process itself is judged
        refuse_if_running(Jobs({}), str(root))
    assert "being written by python -m raykd.search on host" in str(err.value)
    assert f"pid {proc.pid}," in str(err.value) and "Ray job raykd-demo; stop that driver first" in str(err.value)
    proc.kill()
    proc.wait()
    refuse_if_running(Jobs({}), str(root))  # its driver died: the job's own claim takes the folder over


def test_free_folder_and_the_job_id_variable(tmp_path):
    refuse_if_running(Jobs({}), str(tmp_path / "results" / "nothing"))
    job = build_job(Space(ROOT / "search_spaces" / "demo.yaml"), name="demo-1", storage="/shared/raykd",
                    staging=tmp_path / "staging", resume=True, attempt=2)
    assert job.runtime_env["env_vars"][JOB_ID_VAR] == job.submission_id == "raykd-demo-1-r2"
