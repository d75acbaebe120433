"""Which Ray a command uses: a private local instance, or a cluster that answers.

``ray.init()`` without an address follows Ray's record of the last cluster started on the
machine (``$RAY_TMPDIR/ray/ray_current_cluster``, default ``/tmp/ray``) and retries a dead one
for many minutes. raykd commands therefore start a private instance (``address="local"``)
unless ``--address`` is given; a given address is checked with one TCP connection first.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from raykd.errors import UserError

CONNECT_TIMEOUT_S = 3.0


def record_file() -> Path:
    """Ray's record of the last cluster ``ray start`` began on this machine."""
    base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(base, "ray", "ray_current_cluster")


def resolve(address: str) -> tuple[str, str]:
    """``(address to join, where it came from)``; ``auto`` is ``$RAY_ADDRESS``, else Ray's record."""
    if address != "auto":
        return address, "--address"
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "RAY_ADDRESS (from --address auto)"
    try:
        found = record_file().read_text().strip()
    except OSError:
        found = ""
    if not found:
        raise UserError("no Ray cluster to join: RAY_ADDRESS is unset and no cluster was started on this machine "
                        "(ray start --head); leave out --address to run a private local Ray", key="--address")
    return found, f"Ray's record {record_file()} (from --address auto)"


def check_reachable(address: str) -> str:
    """The address to pass to ``ray.init`` for ``--address``, after one TCP connection to it
    succeeded within :data:`CONNECT_TIMEOUT_S`; otherwise a one-line :class:`UserError`."""
    target, source = resolve(address)
    hostport = target.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"expected HOST:PORT of a Ray cluster (or auto), got {target!r} from {source}",
                        key="--address")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise UserError(f"no Ray cluster answers at {hostport} (from {source}): {why}; start one (ray start --head) "
                        "or leave out --address to run a private local Ray", key="--address") from None
    return target
