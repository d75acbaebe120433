"""The storage check of a URI storage (``raykd.results.store.check_uri_writable``), without a server:
``file://`` and an S3 endpoint nobody listens on."""

from __future__ import annotations

import pytest
from proc_tools import free_port

from raykd.errors import UserError
from raykd.results.store import check_uri_writable


def test_a_file_uri_storage_is_created_and_left_empty(tmp_path):
    check_uri_writable(f"file://{tmp_path}/new/storage")
    assert list((tmp_path / "new" / "storage").iterdir()) == []  # the probe is gone


def test_an_unreachable_endpoint_is_one_line_naming_it(monkeypatch):
    endpoint = f"http://127.0.0.1:{free_port()}"  # free: nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret-never-shown")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    with pytest.raises(UserError) as raised:
        check_uri_writable("s3://bucket/searches")
    assert str(raised.value) == f"s3://bucket/searches: --storage: cannot write there: cannot reach the endpoint {endpoint}"
    assert "example-secret" not in str(raised.value) and "AKIAEXAMPLE" not in str(raised.value)
