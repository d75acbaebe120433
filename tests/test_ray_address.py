"""raykd.ray_address: which cluster --address names, and a dead one refused in one connect."""

from __future__ import annotations

import time

import pytest
from proc_tools import free_port

from raykd.errors import UserError
from raykd.ray_address import check_reachable, record_file, resolve


@pytest.fixture
def ray_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


def test_auto_is_ray_address_then_the_record(ray_tmp, monkeypatch):
    assert record_file() == ray_tmp / "ray" / "ray_current_cluster"  # where Ray 2.60 keeps it
    with pytest.raises(UserError, match="no Ray cluster to join: RAY_ADDRESS is unset"):
        resolve("auto")
    (ray_tmp / "ray").mkdir()
    record_file().write_text("10.1.2.3:6379\n")
    assert resolve("auto") == ("10.1.2.3:6379", f"Ray's record {record_file()} (from --address auto)")
    monkeypatch.setenv("RAY_ADDRESS", "10.9.9.9:6379")
    assert resolve("auto")[0] == "10.9.9.9:6379"
    assert resolve("head:6379") == ("head:6379", "--address")


def test_dead_address_refused_within_seconds(ray_tmp):
    port = free_port()  # nothing listens there any more
    (ray_tmp / "ray").mkdir()
    record_file().write_text(f"127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(UserError) as err:
        check_reachable("auto")
    assert time.monotonic() - started < 5
    assert str(err.value) == (f"--address: no Ray cluster answers at 127.0.0.1:{port} (from Ray's record "
                              f"{record_file()} (from --address auto)): Connection refused; start one (ray start "
                              "--head) or leave out --address to run a private local Ray")
    with pytest.raises(UserError, match="expected HOST:PORT"):
        check_reachable("nonsense")


def test_live_address_passes(ray_tmp):
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        assert check_reachable(address) == address
        assert check_reachable(f"ray://{address}") == f"ray://{address}"
