"""Searches on ``s3://`` storage against a real S3-protocol server: moto's standalone server,
started by each test on 127.0.0.1 and a free port and stopped by its pid.

The endpoint comes from ``AWS_ENDPOINT_URL`` and the credentials from the standard AWS
variables, as on a cluster; the credentials are random per test and must show up nowhere: not
in what the drivers print, not in any object of the bucket.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time

import pyarrow.fs as pafs
import pytest
from fault_tools import REPO, SearchDriver, intact_trials, trial_folders
from s3_tools import MotoS3

from raykd.results import load
from raykd.results.compact import compact
from raykd.results.store import list_parts, resolve

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BUCKET = "raykd-test"
STORAGE = f"s3://{BUCKET}/searches"


@pytest.fixture
def s3(monkeypatch):
    """A moto server with the bucket, and this process's (and its children's) AWS variables
    pointing at it with random credentials; yields the server."""
    server = MotoS3()
    try:
        server.make_bucket(BUCKET)
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", f"AKIA{secrets.token_hex(8).upper()}")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secrets.token_hex(20))
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_driver(tmp_path):
    drivers = []

    def make(space, name: str, logs: str) -> SearchDriver:
        driver = SearchDriver(space, STORAGE, name, tmp_path / logs)
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        driver.close()


def bucket_bytes() -> bytes:
    """Every object of the bucket, concatenated (the tables, checkpoints, Tune's state, ...)."""
    fs, _ = resolve(f"s3://{BUCKET}")
    infos = fs.get_file_info(pafs.FileSelector(BUCKET, recursive=True))
    return b"".join(fs.open_input_stream(i.path).read() for i in infos if i.type == pafs.FileType.File)


def assert_no_credentials(*texts: str | bytes) -> None:
    for secret in (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]):
        for text in texts:
            assert (secret.encode() if isinstance(text, bytes) else secret) not in text


def test_search_on_s3_holds_each_trial_once_and_refuses_a_second_driver(s3, fault_space, s3_driver, tmp_path):
    space = fault_space(num_samples=4, epochs=2)
    root = f"{STORAGE}/four"
    driver = s3_driver(space, "four", "logs")
    driver.start()
    driver.wait_for(r"trial \w+ started")
    second = s3_driver(space, "four", "logs-second")
    second.start()
    assert second.finish(timeout=300) == 2, second.text()[-3000:]
    refusal = second.text().strip().splitlines()[-1]
    assert refusal.startswith(f"python -m raykd.search: error: {root}: --name: in use by python -m raykd.search "
                              f"on host ") and f"pid {driver.process.pid}," in refusal, refusal
    assert "Traceback" not in second.text()
    assert driver.finish() == 0, driver.text()[-3000:]

    trials = load(f"{root}/tables")
    assert len(trials) == 4 and trials["trial_id"].is_unique, trials[["trial_id", "status"]]
    assert set(trials["status"]) == {"TERMINATED"}
    assert len(load(f"{root}/tables", table="epochs")) == 8
    assert sorted(intact_trials(root, epochs=2)) == sorted(trials["trial_id"])
    assert trial_folders(root) == set(trials["trial_id"])
    fs, path = resolve(root)
    checkpoints = [i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                   if "/checkpoint_" in i.path and i.type == pafs.FileType.File]
    assert {p.split("/trial_")[1].split("/")[0] for p in checkpoints} == set(trials["trial_id"])
    assert "tables: s3://" in driver.text() and "optuna.journal" not in bucket_bytes().decode(errors="replace")

    report = tmp_path / "report"
    analyzed = subprocess.run([sys.executable, "-m", "raykd.analyze", root, "--out", str(report)], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    assert analyzed.returncode == 0, analyzed.stderr[-3000:]
    assert (report / "report.md").is_file()

    parts = list_parts(fs, f"{path}/tables/trials")
    assert len(parts) == 1  # the search compacted its tables on s3:// when it ended
    fs.copy_file(parts[0], parts[0].replace("/part-", "/part-9"))  # a second part repeating every row
    assert len(load(f"{root}/tables")) == 4
    assert compact(root)["trials"] == 2
    assert len(list_parts(fs, f"{path}/tables/trials")) == 1
    assert sorted(load(f"{root}/tables")["trial_id"]) == sorted(trials["trial_id"])
    assert_no_credentials(driver.text(), second.text(), analyzed.stdout, analyzed.stderr, bucket_bytes())


@pytest.mark.fault("driver SIGKILL, s3:// storage", trials=4)
def test_driver_killed_on_s3_resumes_with_every_trial_once(s3, fault_space, s3_driver, fault_ledger):
    space = fault_space(num_samples=4, epochs=3)
    root = f"{STORAGE}/killed"
    driver = s3_driver(space, "killed", "logs")
    try:
        driver.start()
        driver.wait_for(r"epoch 1/3")  # a trial's first checkpoint in flight
        driver.kill()
        driver.start("--resume")
        assert driver.finish() == 0, driver.text()[-3000:]
    finally:
        fault_ledger(len(intact_trials(root, epochs=3)))
    assert len(intact_trials(root, epochs=3)) == 4 and len(load(f"{root}/tables")) == 4
    assert load(f"{root}/tables", table="runs")["resumed"].tolist() == [False, True]


@pytest.mark.fault("S3 endpoint unreachable for 6 s", trials=4)
def test_endpoint_gone_for_seconds_mid_search_loses_nothing(s3, fault_space, s3_driver, fault_ledger):
    space = fault_space(num_samples=4, epochs=3)
    root = f"{STORAGE}/outage"
    driver = s3_driver(space, "outage", "logs")
    try:
        driver.start()
        driver.wait_for(r"epoch 1/3")
        s3.pause()  # the endpoint stops answering: requests hang, as behind a lost route
        time.sleep(6)
        s3.resume()
        code = driver.finish()
        if code != 0:  # it may stop with one clear line; then it continues where it stopped
            last = driver.text().strip().splitlines()[-1]
            assert "error" in last and "--resume" in last, driver.text()[-3000:]
            driver.start("--resume")
            assert driver.finish() == 0, driver.text()[-3000:]
    finally:
        s3.resume()
        fault_ledger(len(intact_trials(root, epochs=3)))
    assert len(intact_trials(root, epochs=3)) == 4 and len(load(f"{root}/tables")) == 4


def _search(space, name: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raykd.search", str(space), "--storage", STORAGE, "--name", name,
                           "--num-cpus", "2"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          start_new_session=True)


def test_wrong_credentials_and_a_missing_bucket_are_one_line_before_any_trial(fault_space, monkeypatch):
    space = fault_space(num_samples=1, epochs=1)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", f"AKIA{secrets.token_hex(8).upper()}")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secrets.token_hex(20))
    checked = MotoS3(auth=True, free_requests=2)  # moto checks credentials after the bucket is made
    try:
        checked.make_bucket(BUCKET)
        monkeypatch.setenv("AWS_ENDPOINT_URL", checked.endpoint)
        refused = _search(space, "denied")
    finally:
        checked.stop()
    plain = MotoS3()  # no bucket at all
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", plain.endpoint)
        missing = _search(space, "nobucket")
    finally:
        plain.stop()
    for proc, reason in ((refused, "the storage refused the credentials"),
                         (missing, f"the bucket '{BUCKET}' does not exist")):
        err = proc.stderr.strip()
        assert proc.returncode == 2 and err.count("\n") == 0, err
        assert err.startswith(f"python -m raykd.search: error: {STORAGE}: --storage: cannot write there: {reason}"), err
        assert "teacher" not in proc.stdout and "trial" not in proc.stdout, proc.stdout
        assert_no_credentials(proc.stdout, proc.stderr)
