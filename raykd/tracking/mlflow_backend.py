"""MLflow: one run per trial in an experiment named after the search; params = the trial's
config, metrics per epoch with ``step = epoch``, tags ``status``, ``stop_reason`` and ``phase``.

A trial is found again by its tags ``raykd.trial_id`` and ``raykd.folder`` (the search folder),
so a resumed search continues its runs and logs only the (metric, epoch) pairs they lack.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping
from typing import Any

from raykd.tracking.base import ERROR, RUNNING, TrialInfo

TRIAL_TAG = "raykd.trial_id"
FOLDER_TAG = "raykd.folder"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def param_text(value: Any) -> str:
    """A config value as an MLflow param (lists as ``[1, 2]``)."""
    return str(list(value)) if isinstance(value, tuple) else str(value)


class MlflowTracker:
    """Logs to the tracking server or database at ``uri`` through ``MlflowClient`` (never the
    process-wide ``mlflow.set_tracking_uri``: the URI given is the one used)."""

    name = "mlflow"

    def __init__(self, uri: str, experiment: str, folder: str, artifact_location: str | None = None):
        self.uri, self.experiment, self.folder = uri, experiment, folder
        self.artifact_location = artifact_location
        self._client: Any = None
        self._experiment_id: str | None = None
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._logged: dict[str, set[tuple[str, int]]] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_client=None, _experiment_id=None, _runs={}, _logged={})
        return state

    def open(self) -> None:
        self.client()

    def client(self):
        """The ``MlflowClient`` of ``uri`` with the experiment created (first call: a new
        SQLite database takes a few seconds to set up)."""
        if self._client is None:
            for name in ("mlflow", "alembic"):  # database set-up lines would interleave with progress
                logging.getLogger(name).setLevel(logging.WARNING)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecations inside MLflow's database layer
                from mlflow.tracking import MlflowClient

                client = MlflowClient(tracking_uri=self.uri)
                found = client.get_experiment_by_name(self.experiment)
                self._experiment_id = found.experiment_id if found is not None else client.create_experiment(
                    self.experiment, artifact_location=self.artifact_location)
            self._client = client
        return self._client

    def _run(self, trial: TrialInfo) -> str:
        run_id = self._runs.get(trial.trial_id)
        if run_id is not None:
            return run_id
        from mlflow.entities import Param

        client = self.client()
        runs = [r for r in client.search_runs([self._experiment_id], f"tags.`{TRIAL_TAG}` = '{trial.trial_id}'")
                if r.data.tags.get(FOLDER_TAG) == self.folder]
        logged: set[tuple[str, int]] = set()
        if runs:  # an earlier driver's: continue it
            run = runs[0]
            run_id = run.info.run_id
            for key in run.data.metrics:
                logged.update((key, int(m.step)) for m in client.get_metric_history(run_id, key))
            if run.info.status != RUNNING:
                client.update_run(run_id, status=RUNNING)
            have = dict(run.data.params)
        else:
            run_id = client.create_run(self._experiment_id, run_name=trial.name, tags={
                TRIAL_TAG: trial.trial_id, FOLDER_TAG: self.folder, "phase": trial.phase}).info.run_id
            have = {}
        params = [Param(k, param_text(v)[:MAX_PARAM_CHARS]) for k, v in trial.config.items()
                  if not k.startswith("__") and v is not None and k not in have]
        client.log_batch(run_id, params=params, tags=_tags(RUNNING, "running", trial.phase))
        self._runs[trial.trial_id], self._logged[trial.trial_id] = run_id, logged
        return run_id

    def log_epoch(self, trial: TrialInfo, epoch: int, scalars: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        run_id = self._run(trial)
        logged = self._logged[trial.trial_id]
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, epoch) for k, v in scalars.items() if (k, epoch) not in logged]
        if metrics:
            self.client().log_batch(run_id, metrics=metrics)  # one transaction: all of them or none
            logged.update((m.key, epoch) for m in metrics)

    def finish(self, trial: TrialInfo, status: str, stop_reason: str) -> None:
        run_id = self._run(trial)
        client = self.client()
        client.log_batch(run_id, tags=_tags(status, stop_reason, trial.phase))
        client.set_terminated(run_id, "FAILED" if status == ERROR else "FINISHED")
        self._runs.pop(trial.trial_id, None)
        self._logged.pop(trial.trial_id, None)

    def close(self) -> None:
        self._runs, self._logged = {}, {}


def _tags(status: str, stop_reason: str, phase: str) -> list:
    from mlflow.entities import RunTag

    return [RunTag("status", status), RunTag("stop_reason", stop_reason), RunTag("phase", phase)]
