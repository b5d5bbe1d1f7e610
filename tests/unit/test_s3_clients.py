"""Beam's S3 filesystem shares one boto3 client per process and settings (ssdflow/patches/s3_clients.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("boto3")

from apache_beam.io.aws import s3io  # noqa: E402

import ssdflow.beam_runner  # noqa: E402,F401  (importing it installs the sharing, as every job does)
from ssdflow.patches.s3_clients import share_s3_clients  # noqa: E402


def _client(endpoint: str):
    return s3io.S3IO(options={"s3_endpoint_url": endpoint, "s3_region_name": "us-east-1"}).client


def test_every_s3io_of_one_setting_uses_one_boto3_client_with_its_own_download_state(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    assert share_s3_clients() and share_s3_clients()  # idempotent
    first, second = _client("http://127.0.0.1:1"), _client("http://127.0.0.1:1")
    assert first is not second and first.client is second.client  # Beam's wrapper per call, boto3's client once
    first._download_pos = 7  # a wrapper's read position is its own
    assert second._download_pos == 0
    assert first.client.meta.endpoint_url == "http://127.0.0.1:1"


def test_other_endpoints_and_a_changed_aws_environment_get_their_own_client(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    one = _client("http://127.0.0.1:1").client
    other = _client("http://127.0.0.1:2").client
    assert other is not one and other.meta.endpoint_url == "http://127.0.0.1:2"
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore reads it when it builds a client
    fewer = _client("http://127.0.0.1:1").client
    assert fewer is not one and fewer.meta.config.retries["total_max_attempts"] == 1
    assert one.meta.config.retries.get("total_max_attempts", 3) != 1
