"""A thin client of one cluster's Ray Jobs API: submit, status, logs (followed), stop, list.

Everything goes over the dashboard's HTTP address (``http://HEAD:8265``); nothing here
connects to the cluster as a Ray driver. Ray's errors become :class:`UserError` lines:
an unreachable address, a missing or rejected token, an unknown job id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import TextIO

from raykd.errors import UserError
from raykd.submit.auth import HOW_TO, auth_headers
from raykd.uri import is_uri

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Ray's INFO lines about package uploads and log sockets; the command prints its own.
_CHATTY_LOGGERS = ("ray._private.runtime_env.packaging", "ray.dashboard.modules.dashboard_sdk",
                   "ray.dashboard.modules.job.sdk")


def resolve_address(value: str | None) -> str:
    """The dashboard address from ``--address`` or ``RAY_ADDRESS``, with ``http://`` added if missing."""
    address = (value or os.environ.get("RAY_ADDRESS", "")).strip()
    if not address:
        raise UserError("no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS", key="--address")
    if address == "auto" or address.startswith("ray://"):
        raise UserError(f"expected the dashboard address (http://HEAD:8265), got {address!r}", key="--address")
    if not is_uri(address):
        address = f"http://{address}"
    return address.rstrip("/")


@dataclass
class ClusterNodes:
    alive: int
    cpus: float
    gpus: float

    def __str__(self) -> str:
        return f"{self.alive} node{'s' if self.alive != 1 else ''}, {self.cpus:g} CPUs, {self.gpus:g} GPUs"


class JobsClient:
    """The Ray Jobs API of the cluster whose dashboard is at ``address``."""

    def __init__(self, address: str):
        self.address = address
        self._headers = auth_headers()
        from ray.job_submission import JobSubmissionClient

        for name in _CHATTY_LOGGERS:  # set after the import: Ray's modules set INFO when imported
            logging.getLogger(name).setLevel(logging.WARNING)
        with self._errors():
            self._client = JobSubmissionClient(address, headers=dict(self._headers))

    # ---------------------------------------------------------------- errors

    @contextlib.contextmanager
    def _errors(self, job_id: str | None = None):
        from ray.exceptions import AuthenticationError

        try:
            yield
        except AuthenticationError as err:
            if "403" in str(err) or "invalid" in str(err).lower() or "Forbidden" in str(err):
                raise UserError(f"the cluster at {self.address} rejected the token ({HOW_TO})",
                                key="RAY_AUTH_TOKEN") from None
            raise UserError(f"the cluster at {self.address} requires a token: {HOW_TO}", key="RAY_AUTH_MODE") from None
        except OSError as err:  # ConnectionError, and requests' errors once connected
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"cannot reach the Ray dashboard at {self.address} ({reason[:200]})",
                            key="--address") from None
        except RuntimeError as err:
            text = str(err)
            if job_id is not None and "status code 404" in text:
                raise UserError(f"no job {job_id!r} on the cluster at {self.address} (see --list)", key="JOB_ID") from None
            if "status code 400" in text or "status code 404" in text:
                detail = text.split(":", 1)[-1].strip().rstrip(".").splitlines()[0]
                raise UserError(f"the cluster at {self.address} refused the request: {detail[:300]}") from None
            raise

    # ---------------------------------------------------------------- cluster

    def state(self):
        """A ``ray.util.state`` client of the same cluster (nodes, actors, ...)."""
        from ray.util.state.api import StateApiClient

        with self._errors():
            return StateApiClient(address=self.address, headers=dict(self._headers))

    def nodes(self) -> ClusterNodes:
        """Alive nodes and their total CPUs and GPUs, from the state API."""
        from ray.util.state.common import ListApiOptions, StateResource

        state = self.state()
        with self._errors():
            nodes = state.list(StateResource.NODES, options=ListApiOptions(filters=[("state", "=", "ALIVE")]),
                               raise_on_missing_output=False)
        totals = [n.resources_total if hasattr(n, "resources_total") else n["resources_total"] for n in nodes]
        return ClusterNodes(alive=len(nodes), cpus=sum(t.get("CPU", 0) for t in totals),
                            gpus=sum(t.get("GPU", 0) for t in totals))

    # ---------------------------------------------------------------- jobs

    def submit(self, **kwargs) -> str:
        """Upload the working_dir if Ray has no copy of it yet, and submit; returns the job id."""
        with self._errors():
            try:
                return self._client.submit_job(**kwargs)
            except ValueError as err:  # Ray's runtime_env checks: package too large, bad paths
                detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise UserError(f"Ray refused the job's runtime_env: {detail[:300]}", key="--exclude") from None

    def info(self, job_id: str):
        with self._errors(job_id):
            return self._client.get_job_info(job_id)

    def status(self, job_id: str) -> str:
        return str(self.info(job_id).status.value)

    def logs(self, job_id: str) -> str:
        with self._errors(job_id):
            return self._client.get_job_logs(job_id)

    def stop(self, job_id: str) -> bool:
        """Ask the job to stop; False when it had already ended."""
        self.info(job_id)  # a clear error for an unknown id
        with self._errors(job_id):
            return self._client.stop_job(job_id)

    def list(self, *, raykd_only: bool = True) -> list:
        """Jobs, oldest first; only those submitted by raykd unless ``raykd_only`` is False."""
        with self._errors():
            jobs = self._client.list_jobs()
        if raykd_only:
            jobs = [j for j in jobs if (j.metadata or {}).get("tool") == "raykd"]
        return sorted(jobs, key=lambda j: j.start_time or 0)

    def wait(self, job_id: str, timeout_s: float, poll_s: float = 0.5) -> str:
        """Poll until the job ends or ``timeout_s`` passes; returns the last status."""
        deadline = time.monotonic() + timeout_s
        status = self.status(job_id)
        while status not in TERMINAL and time.monotonic() < deadline:
            time.sleep(poll_s)
            status = self.status(job_id)
        return status

    def follow(self, job_id: str, *, out: TextIO | None = None, since: float | None = None) -> tuple[str, dict]:
        """Stream the job's logs to ``out`` until it ends; print each status change.

        Returns the final status and the seconds from ``since`` (a ``time.monotonic()``
        value; default: now) at which each status was first seen.
        """
        out = out or sys.stdout
        start = time.monotonic() if since is None else since
        seen: dict[str, float] = {}
        state = {"partial": False}

        def say(line: str) -> None:
            prefix = "\n" if state["partial"] else ""
            out.write(f"{prefix}[raykd.submit] {line}\n")
            out.flush()
            state["partial"] = False

        def note(status: str) -> None:
            if status not in seen:
                seen[status] = time.monotonic() - start
                say(f"{job_id}: {status} after {seen[status]:.1f} s")

        async def watch_status() -> None:
            while True:
                status = await asyncio.to_thread(self.status, job_id)
                note(status)
                if status in TERMINAL:
                    return
                await asyncio.sleep(0.5)

        async def stream() -> None:
            watcher = asyncio.create_task(watch_status())
            try:
                with self._errors(job_id), warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)  # aiohttp's ssl=None inside Ray's client
                    async for chunk in self._client.tail_job_logs(job_id):
                        out.write(chunk)
                        out.flush()
                        state["partial"] = bool(chunk) and not chunk.endswith("\n")
            except RuntimeError:
                pass  # the log stream broke off; the status poll below still ends the wait
            await watcher

        self.info(job_id)
        asyncio.run(stream())
        final = self.status(job_id)
        note(final)
        return final, seen
