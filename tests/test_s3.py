"""S3 storage against a real S3-compatible HTTP server (moto's standalone server, in a subprocess).

Nothing here patches boto3: every request goes over HTTP to moto, or through :class:`FaultProxy`,
a small HTTP proxy in front of moto that answers chosen requests with S3 error responses
(503 SlowDown, 403 AccessDenied, ...) so that retries and fail-fast behaviour are seen end to end.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import logging
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pandas as pd
import pytest
from botocore.config import Config

from colorize.imaging import decode_scan
from colorize.modelfile import load_model, resolve_model_spec
from colorize.plan import extension_format
from colorize.registry import Registry
from colorize.storage import StorageError, UnsafeKeyError, check_key, nested_prefix, open_storage
from colorize.storage.s3 import S3Storage, parse_uri
from tests.helpers import encode, free_port, gray_image, make_archive, write

# Distinctive, so that a leak anywhere (logs, manifests, messages) is found by a plain search.
ACCESS_KEY = "AKIACOLORIZETEST0001"
SECRET = "colorize-test-secret-DO-NOT-LEAK-8f3a1c"
MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def aws_env(moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials, boto3 pointed at moto through AWS_ENDPOINT_URL, and an empty moto."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    host, port = moto_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/moto-api/reset")
    conn.getresponse().read()


@pytest.fixture
def s3(moto_url: str):
    """A plain boto3 client on moto, for setting up and inspecting buckets."""
    client = boto3.session.Session().client("s3", endpoint_url=moto_url, config=Config(max_pool_connections=16))
    for bucket in ("scans", "colour", "models"):
        client.create_bucket(Bucket=bucket)
    return client


def put_many(client, bucket: str, objects: dict[str, bytes]) -> None:
    """Upload many objects at once (moto answers a few hundred small PUTs a second)."""
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), objects.items()))


def keys(client, bucket: str, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", ())]


def s3_csv(client, bucket: str, key: str) -> tuple[pd.DataFrame, bytes]:
    data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False), data


# --- a fault-injecting proxy in front of moto ---------------------------------------------------

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "content-length"}


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int  # 0: forward, but send only half of the answer's body
    code: str
    times: int | None  # None: every matching request


@dataclass
class FaultProxy:
    """Forwards to moto, except that requests matching an injected fault get an S3 error response."""

    upstream: tuple[str, int]
    faults: list[Fault] = field(default_factory=list)
    seen: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status answered)
    drop_headers: set[str] = field(default_factory=set)  # request headers not passed on (lower case)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def inject(self, method: str, path: str, status: int, code: str, times: int | None = None) -> None:
        with self.lock:
            self.faults.append(Fault(method, re.compile(path), status, code, times))

    def take(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.method == method and fault.path.search(path) and fault.times != 0:
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def count(self, method: str, path: str, status: int | None = None) -> int:
        with self.lock:
            return sum(1 for m, p, s in self.seen if m == method and re.search(path, p) and status in (None, s))


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, and "100 Continue" for botocore's uploads

        def log_message(self, *args: object) -> None:
            pass

        def handle_any(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            fault = proxy.take(self.command, self.path)
            status, headers, payload = self.fail(fault) if fault and fault.status else self.forward(body)
            with proxy.lock:
                proxy.seen.append((self.command, self.path, status))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            if fault and not fault.status:  # status 0: cut the body off half-way and hang up
                self.wfile.write(payload[: len(payload) // 2])
                self.close_connection = True
            elif self.command != "HEAD":
                self.wfile.write(payload)

        def fail(self, fault: Fault) -> tuple[int, list[tuple[str, str]], bytes]:
            xml = (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}</Code>'
                f"<Message>injected {fault.code}</Message><RequestId>proxy</RequestId></Error>"
            ).encode()
            return fault.status, [("Content-Type", "application/xml"), ("Content-Length", str(len(xml)))], xml

        def forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
            conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            dropped = _HOP_BY_HOP | proxy.drop_headers
            headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
            headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            # A HEAD answer's Content-Length is the object's size, not this (empty) body's.
            length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(payload))
            conn.close()
            return resp.status, [*out, ("Content-Length", length or "0")], payload

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_any  # noqa: N815 - http.server's names

    return Handler


@pytest.fixture
def proxy(moto_url: str) -> Iterator[FaultProxy]:
    host, port = moto_url.removeprefix("http://").split(":")
    faults = FaultProxy(upstream=(host, int(port)))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(faults))
    server.daemon_threads = True
    faults.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield faults
    server.shutdown()
    server.server_close()


# --- the storage itself ---------------------------------------------------------------------------


def test_uris_keys_and_nesting(moto_url):
    storage = S3Storage("s3://scans/1950s/", endpoint_url=moto_url)
    assert (storage.bucket, storage.prefix, storage.uri) == ("scans", "1950s", "s3://scans/1950s")
    assert storage.uri_for("a/b.jpg") == "s3://scans/1950s/a/b.jpg"
    root = open_storage("s3://scans/")
    assert isinstance(root, S3Storage) and root.uri == "s3://scans" and root.uri_for("x.jpg") == "s3://scans/x.jpg"
    assert parse_uri("s3://scans") == ("scans", "")
    for bad in ("s3://", "s3:///x", "scans/x"):
        with pytest.raises(ValueError):
            parse_uri(bad)
    for typo in ("s3://scans//1950s", "s3://scans/1950s//box/"):  # not quietly another prefix
        with pytest.raises(ValueError, match="empty path segment: did you mean s3://scans/1950s"):
            parse_uri(typo)
    # nested_prefix compares URIs as strings: trailing slashes must not matter.
    assert nested_prefix(S3Storage("s3://scans/").uri, S3Storage("s3://scans/colour/").uri) == "colour/"
    assert nested_prefix(S3Storage("s3://scans/1950s").uri, S3Storage("s3://scans/1950s/out").uri) == "out/"
    assert nested_prefix(S3Storage("s3://scans/1950s").uri, S3Storage("s3://scans/1950s-colour").uri) == ""


def test_objects_round_trip(s3):
    storage = S3Storage("s3://colour/out/")
    storage.write_bytes("a/b.png", b"png bytes", "image/png")
    assert storage.read_bytes("a/b.png") == b"png bytes"
    head = s3.head_object(Bucket="colour", Key="out/a/b.png")
    assert head["ContentType"] == "image/png"
    info = storage.stat("a/b.png")
    assert info is not None and (info.key, info.size) == ("a/b.png", 9)
    assert info.etag == hashlib.md5(b"png bytes").hexdigest()  # quotes stripped
    assert info.mtime == pytest.approx(head["LastModified"].timestamp())
    assert [o.key for o in storage.list()] == ["a/b.png"]
    assert storage.stat("nope.png") is None
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("nope.png")
    with pytest.raises(UnsafeKeyError):
        storage.write_bytes("../escape.png", b"x")
    # A report link asked for longer than SigV4 allows is signed for the most it allows (S3
    # would refuse a longer one on every use).
    storage.write_bytes("r.html", b"<html>")
    assert "X-Amz-Expires=604800&" in storage.presign("r.html", 30 * 24 * 3600)
    assert "X-Amz-Expires=3600&" in storage.presign("r.html", 3600)
    storage.delete("a/b.png")
    storage.delete("a/b.png")  # already gone: no error
    storage.delete("r.html")
    assert keys(s3, "colour") == []


def test_listing_is_lazy_and_pages_past_1000_keys(s3, proxy):
    objects = {f"big/{i // 100:02d}/{i:05d}.jpg": b"%d" % i for i in range(1150)}
    objects |= {"big/": b"", "big/07/": b"", "big-other/x.jpg": b"x", "other/y.jpg": b"y"}  # markers, neighbours
    put_many(s3, "scans", objects)
    storage = S3Storage("s3://scans/big", endpoint_url=proxy.url)

    listing = storage.list()
    first = next(listing)
    assert proxy.count("GET", r"list-type=2") == 1  # the second page is not fetched yet
    rest = list(listing)
    assert proxy.count("GET", r"list-type=2") == 2
    found = [first, *rest]
    expected = sorted(k.removeprefix("big/") for k in objects if k.startswith("big/") and not k.endswith("/"))
    assert [o.key for o in found] == expected and len(found) == 1150
    assert all(o.etag == hashlib.md5(objects["big/" + o.key]).hexdigest() for o in found)
    assert [o.key for o in storage.list("03/")] == [k for k in expected if k.startswith("03/")]


def test_unsafe_keys_are_listed_so_that_planning_can_refuse_them(s3):
    unsafe = ["../evil.jpg", "a//b.jpg", "/lead.jpg", "back\\slash.jpg", "./dot.jpg", "x/../../y.jpg"]
    put_many(s3, "scans", {f"in/{k}": b"x" for k in [*unsafe, "ok.jpg"]})
    listed = {o.key for o in S3Storage("s3://scans/in").list()}
    assert listed == {*unsafe, "ok.jpg"}
    for key in unsafe:
        with pytest.raises(UnsafeKeyError):
            check_key(key)


def test_a_folder_marker_with_content_is_listed_as_a_problem(s3, tiny_model, prefect_api_url):
    from flows.colorize_archive import colorize_archive

    jpeg = encode(gray_image(40, 50), "JPEG")
    put_many(s3, "scans", {"in/": b"", "in/box/": b"", "in/photo.jpg/": jpeg, "in/ok.jpg": jpeg})
    listed = {o.key: o.problem for o in S3Storage("s3://scans/in").list()}
    assert listed.keys() == {"photo.jpg/", "ok.jpg"} and "holds" in listed["photo.jpg/"]
    summary = colorize_archive(source="s3://scans/in", dest="s3://colour/in", model=str(tiny_model))
    rows, _ = s3_csv(s3, "colour", f"in/manifests/{summary.run_id}.csv")
    assert _statuses(rows, "s3://scans/in/") == {"photo.jpg/": "failed", "ok.jpg": "colorized"}
    # The source prefix's own marker, holding bytes (a scan uploaded as "in2/"): a row, not nothing.
    put_many(s3, "scans", {"in2/": jpeg, "in2/ok.jpg": jpeg})
    summary = colorize_archive(source="s3://scans/in2", dest="s3://colour/in2", model=str(tiny_model))
    rows, _ = s3_csv(s3, "colour", f"in2/manifests/{summary.run_id}.csv")
    assert _statuses(rows, "s3://scans/in2/") == {"": "failed", "ok.jpg": "colorized"}
    assert "a key ending in '/' that holds" in rows.loc[rows["source_uri"] == "s3://scans/in2/", "reason"].item()
    # ... and that row moves with the rest when the scans do.
    put_many(s3, "scans", {"in3/ok.jpg": jpeg})
    from colorize.relocation import relocate_ledger

    moved = relocate_ledger(S3Storage("s3://colour/in2"), "s3://scans/in2", S3Storage("s3://scans/in3"))
    assert moved.rows == 2 and moved.written


def test_large_objects_go_up_in_parts(s3):
    storage = S3Storage("s3://colour", multipart_threshold=5 * MiB)
    big = os.urandom(11 * MiB + 17)
    storage.write_bytes("big.tif", big, "image/tiff")
    storage.write_bytes("small.tif", big[:MiB], "image/tiff")
    head = s3.head_object(Bucket="colour", Key="big.tif")
    assert head["ETag"].strip('"').endswith("-3") and head["ContentType"] == "image/tiff"  # 5 + 5 + 1 MiB parts
    assert "-" not in s3.head_object(Bucket="colour", Key="small.tif")["ETag"]
    assert storage.read_bytes("big.tif") == big
    assert s3.list_multipart_uploads(Bucket="colour").get("Uploads", []) == []


def test_transient_faults_are_retried_by_botocore(s3, proxy):
    storage = S3Storage("s3://scans/t", endpoint_url=proxy.url)
    proxy.inject("PUT", r"^/scans/t/a\.png", 503, "SlowDown", times=1)
    proxy.inject("PUT", r"^/scans/t/a\.png", 500, "InternalError", times=1)
    proxy.inject("GET", r"^/scans/t/a\.png", 503, "ServiceUnavailable", times=2)
    proxy.inject("GET", r"list-type=2", 502, "BadGateway", times=1)
    proxy.inject("HEAD", r"^/scans/t/a\.png", 504, "GatewayTimeout", times=1)

    storage.write_bytes("a.png", b"data", "image/png")
    assert storage.read_bytes("a.png") == b"data"
    assert [o.key for o in storage.list()] == ["a.png"]
    assert storage.stat("a.png") is not None
    assert proxy.count("PUT", r"a\.png", 200) == 1 and proxy.count("PUT", r"a\.png") == 3
    assert proxy.count("GET", r"^/scans/t/a\.png") == 3
    assert proxy.count("GET", r"list-type=2") == 2 and proxy.count("HEAD", r"a\.png") == 2


def _storage_error(fn, *words: str) -> str:
    with pytest.raises(StorageError) as caught:
        fn()
    message = str(caught.value)
    for word in words:
        assert word in message, message
    assert SECRET not in message and ACCESS_KEY not in message
    return message


def test_a_store_that_ignores_conditional_writes_is_named_when_a_lease_is_taken(s3, proxy, caplog):
    from colorize.lease import DestinationLease

    caplog.set_level(logging.WARNING, logger="colorize.lease")
    with DestinationLease(S3Storage("s3://colour/honoured"), "run-a") as lease:
        assert not lease.unguarded  # moto, as AWS, MinIO and Ceph, refuses the second create
    assert "ignored a conditional write" not in caplog.text

    proxy.drop_headers = {"if-none-match", "if-match"}  # a store that does not implement them
    with DestinationLease(S3Storage("s3://colour/ignored", endpoint_url=proxy.url), "run-b") as lease:
        assert lease.unguarded
    assert "s3://colour/ignored ignored a conditional write (If-None-Match)" in caplog.text


def test_permanent_faults_stop_with_the_bucket_and_the_operation(s3, proxy, moto_url, monkeypatch):
    missing = S3Storage("s3://no-such-bucket/x")
    _storage_error(lambda: list(missing.list()), "list_objects_v2", "'no-such-bucket'", "NoSuchBucket")
    _storage_error(lambda: missing.read_bytes("a.jpg"), "get_object", "'no-such-bucket'", "NoSuchBucket")
    _storage_error(lambda: missing.write_bytes("a.jpg", b"x"), "put_object", "'no-such-bucket'", "NoSuchBucket")

    s3.put_object(Bucket="scans", Key="p/a.jpg", Body=b"x")
    denied = S3Storage("s3://scans/p", endpoint_url=proxy.url)
    proxy.inject("GET", r"^/scans/p/a\.jpg", 403, "AccessDenied")
    _storage_error(lambda: denied.read_bytes("a.jpg"), "get_object", "'scans'", "AccessDenied", "IAM policy")
    assert proxy.count("GET", r"^/scans/p/a\.jpg") == 1  # not retried
    proxy.inject("PUT", r"^/scans/p/", 403, "AccessDenied")
    _storage_error(lambda: denied.write_bytes("b.jpg", b"x"), "put_object", "'scans'", "AccessDenied")
    proxy.inject("GET", r"list-type=2", 403, "InvalidAccessKeyId", times=1)
    _storage_error(lambda: list(denied.list()), "list_objects_v2", "InvalidAccessKeyId", "credentials")
    proxy.inject("GET", r"list-type=2", 403, "SignatureDoesNotMatch", times=1)
    _storage_error(lambda: list(denied.list()), "list_objects_v2", "SignatureDoesNotMatch")

    # A service that keeps failing: botocore's attempts, then a StorageError.
    flaky = S3Storage("s3://scans/p", endpoint_url=proxy.url, max_attempts=3)
    proxy.inject("HEAD", r"^/scans/p/a\.jpg", 503, "ServiceUnavailable")
    _storage_error(lambda: flaky.stat("a.jpg"), "head_object", "'scans'", "503")
    assert proxy.count("HEAD", r"a\.jpg") == 3, "\n".join(map(str, proxy.seen))

    # An archived object fails alone (OSError, recorded against that file), not the run.
    proxy.inject("GET", r"^/scans/p/cold\.jpg", 403, "InvalidObjectState")
    with pytest.raises(OSError, match="InvalidObjectState") as caught:
        denied.read_bytes("cold.jpg")
    assert not isinstance(caught.value, StorageError)
    s3.put_object(Bucket="scans", Key="p/long.jpg", Body=b"x" * 10_000)
    proxy.inject("GET", r"^/scans/p/long\.jpg", 0, "", times=1)  # a body cut off: botocore does not retry it
    with pytest.raises(OSError, match="body cut off") as caught:
        denied.read_bytes("long.jpg")
    assert not isinstance(caught.value, StorageError)

    unreachable = S3Storage("s3://scans/p", endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=2)
    _storage_error(lambda: list(unreachable.list()), "list_objects_v2", "'scans'", "EndpointConnectionError")

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    anonymous = boto3.session.Session().client("s3", endpoint_url=moto_url)
    _storage_error(lambda: S3Storage("s3://scans/p", client=anonymous).read_bytes("a.jpg"), "credentials")


def test_endpoint_comes_from_the_option_or_boto3s_environment(s3, moto_url, monkeypatch):
    s3.put_object(Bucket="scans", Key="e/a.jpg", Body=b"x")
    assert [o.key for o in S3Storage("s3://scans/e").list()] == ["a.jpg"]  # AWS_ENDPOINT_URL
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)  # the service-specific variable wins
    assert [o.key for o in S3Storage("s3://scans/e").list()] == ["a.jpg"]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", dead)
    assert [o.key for o in S3Storage("s3://scans/e", endpoint_url=moto_url).list()] == ["a.jpg"]  # the option wins
    _storage_error(lambda: list(S3Storage("s3://scans/e", max_attempts=1).list()), "EndpointConnectionError")


def test_models_load_from_a_folder_and_a_registry_in_s3(s3, tiny_model, moto_url):
    for name in ("generator.safetensors", "card.json"):
        s3.put_object(Bucket="models", Key=f"colorizer/v1/{name}", Body=(tiny_model / name).read_bytes())
    local = load_model(str(tiny_model))
    from_s3 = load_model("s3://models/colorizer/v1")
    assert from_s3.model_id == local.model_id
    assert load_model("s3://models/colorizer/v1/generator.safetensors").model_id == local.model_id

    registry = Registry("s3://models/registry/")
    version = registry.register(local.generator, local.card)
    registry.promote(version)
    assert resolve_model_spec("s3://models/registry") == "s3://models/registry/versions/v1"
    assert load_model("s3://models/registry").model_id.startswith("tiny-v1@")
    assert load_model(registry=("s3://models/registry")).model_id.startswith("tiny-v1@")

    # The registry commands take the endpoint as an option too (boto3's environment points nowhere here).
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    env.pop("AWS_ENDPOINT_URL_S3", None)
    listed = subprocess.run(
        [sys.executable, "-m", "colorize.cli", "models", "list", "--registry", "s3://models/registry",
         "--endpoint-url", moto_url], env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0 and listed.stdout.startswith("v1\tproduction\t"), listed.stderr


# --- whole runs -----------------------------------------------------------------------------------


@pytest.fixture
def run(prefect_api_url):
    from flows.colorize_archive import colorize_archive

    return colorize_archive


def _statuses(frame: pd.DataFrame, prefix: str) -> dict[str, str]:
    return {r.source_uri.removeprefix(prefix): r.status for r in frame.itertuples()}


def test_s3_to_s3_with_a_model_in_s3_then_a_rerun_that_skips_by_etag(run, s3, tmp_path, tiny_model, caplog):
    caplog.set_level(logging.INFO)
    expected = make_archive(tmp_path / "archive")
    # make_archive's own keys (one has a backslash, which S3 keeps as an ordinary character)
    sources = {f"1950s/{key}": (tmp_path / "archive" / key).read_bytes() for key in expected}
    jpeg = encode(gray_image(40, 50), "JPEG")
    traversal = {"1950s/../evil.jpg": jpeg, "1950s/a//b.jpg": jpeg, "1950s//lead.jpg": jpeg}
    outside = {"1950s-extra/x.jpg": jpeg, "1960s/y.jpg": jpeg}
    # Hidden names, as a Mac's upload leaves them: no rows, as in a local source.
    hidden = {"1950s/._a.jpg": b"\x00\x05\x16\x07AppleDouble resource fork", "1950s/.thumbnails/a.jpg": jpeg}
    # Keys S3 allows: a carriage return, which the manifests must quote, and a control character,
    # which the output's provenance (XML) cannot hold.
    awkward = {"1950s/cr\rname.jpg": jpeg, "1950s/bell\x07.jpg": jpeg}
    expected |= {"cr\rname.jpg": "colorized", "bell\x07.jpg": "failed"}
    put_many(s3, "scans", sources | traversal | outside | hidden | awkward)
    for name in ("generator.safetensors", "card.json"):
        s3.put_object(Bucket="models", Key=f"colorizer/v1/{name}", Body=(tiny_model / name).read_bytes())

    first = run(
        source="s3://scans/1950s/", dest="s3://colour/1950s/", model="s3://models/colorizer/v1",
        shard_size=4, batch_size=3,
    )  # fmt: skip
    rows, raw = s3_csv(s3, "colour", f"1950s/manifests/{first.run_id}.csv")
    statuses = _statuses(rows, "s3://scans/1950s/")
    assert statuses == expected | {"../evil.jpg": "failed", "a//b.jpg": "failed", "/lead.jpg": "failed"}
    by_key = {r.source_uri.removeprefix("s3://scans/1950s/"): r for r in rows.itertuples()}
    assert all("refused" in by_key[k].reason for k in ("../evil.jpg", "a//b.jpg", "/lead.jpg", "back\\slash.jpg"))
    assert "control character U+0007" in by_key["bell\x07.jpg"].reason
    etags = {o["Key"]: o["ETag"].strip('"') for o in s3.list_objects_v2(Bucket="scans", Prefix="1950s/")["Contents"]}
    assert all(by_key[k[len("1950s/") :]].source_etag == etags[k] for k in sources)

    colorized = sorted(k for k, s in expected.items() if s == "colorized")
    written = keys(s3, "colour")
    assert sorted(k for k in written if extension_format(k)) == [f"1950s/{k}" for k in colorized]
    assert {"1950s/manifest.csv", f"1950s/manifests/{first.run_id}.csv"} <= set(written)
    assert not [k for k in written if k.startswith(f"1950s/manifests/{first.run_id}/")]  # parts folded, removed
    assert keys(s3, "scans", "evil") == [] and len(keys(s3, "scans")) == len(
        sources | traversal | outside | hidden | awkward
    )
    for key in colorized:
        row = by_key[key]
        assert row.output_uri == f"s3://colour/1950s/{key}" and row.model_id.startswith("tiny@")
        out = decode_scan(s3.get_object(Bucket="colour", Key=f"1950s/{key}")["Body"].read())
        assert (out.width, out.height) == (int(row.width), int(row.height))
    assert s3.head_object(Bucket="colour", Key="1950s/a.jpg")["ContentType"] == "image/jpeg"
    assert s3.head_object(Bucket="colour", Key="1950s/nested/f.jp2")["ContentType"] == "image/jp2"

    second = run(source="s3://scans/1950s", dest="s3://colour/1950s", model="s3://models/colorizer/v1")
    n_failed = sum(s == "failed" for s in expected.values()) + len(traversal)
    assert second.counts == {"skipped_done": len(colorized), "skipped_color": 1, "failed": n_failed}
    again, raw_again = s3_csv(s3, "colour", f"1950s/manifests/{second.run_id}.csv")
    assert all("unchanged since last run" in r.reason for r in again.itertuples() if r.status == "skipped_done")
    ledger, raw_ledger = s3_csv(s3, "colour", "1950s/manifest.csv")
    assert ledger["source_uri"].is_unique and len(ledger) == len(statuses)

    for text in (raw, raw_again, raw_ledger):
        assert SECRET.encode() not in text and ACCESS_KEY.encode() not in text
    assert SECRET not in caplog.text and ACCESS_KEY not in caplog.text

    # The run report's link is presigned: it opens over plain HTTPS(/HTTP) with no credentials of
    # one's own, carries no secret key, and stops working when it expires.
    link = second.report_url
    assert link.startswith("http") and f"reports/{second.run_id}.html" in link and SECRET not in link
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in link  # SigV4: AWS refuses SigV2 links on newer buckets
    with urllib.request.urlopen(link, timeout=30) as response:
        assert b"<html" in response.read(2000).lower()


def test_local_to_s3_s3_to_local_and_dest_inside_the_source(run, s3, tmp_path, tiny_model, moto_url, monkeypatch):
    scans = {"one.png": encode(gray_image(60, 80), "PNG"), "sub/two.jpg": encode(gray_image(50, 40, seed=1), "JPEG")}
    for key, data in scans.items():
        write(tmp_path / "scans" / key, data)
    put_many(s3, "scans", {f"in/{k}": v for k, v in scans.items()})

    # local -> S3, with the endpoint given as an option (boto3's environment points nowhere); the
    # model is read from S3 through the same option.
    for name in ("generator.safetensors", "card.json"):
        s3.put_object(Bucket="models", Key=f"mixed/v1/{name}", Body=(tiny_model / name).read_bytes())
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    up = run(source=str(tmp_path / "scans"), dest="s3://colour/mixed/", model="s3://models/mixed/v1",
             endpoint_url=moto_url)  # fmt: skip
    assert up.counts == {"colorized": 2}
    rows, _ = s3_csv(s3, "colour", "mixed/manifest.csv")
    assert set(rows["output_uri"]) == {"s3://colour/mixed/one.png", "s3://colour/mixed/sub/two.jpg"}
    assert set(rows["source_uri"]) == {str(tmp_path / "scans" / k) for k in scans}
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)

    # S3 -> local
    down = run(source="s3://scans/in", dest=str(tmp_path / "out"), model=str(tiny_model))
    assert down.counts == {"colorized": 2}
    local_rows = pd.read_csv(tmp_path / "out" / "manifest.csv", dtype=str, keep_default_na=False)
    assert set(local_rows["source_uri"]) == {f"s3://scans/in/{k}" for k in scans}
    assert all(local_rows["source_etag"] != "")
    for key in scans:
        assert decode_scan((tmp_path / "out" / key).read_bytes()).width == decode_scan(scans[key]).width

    # S3 -> S3 inside the source prefix: the outputs are never taken for scans, now or on the rerun.
    inside = run(source="s3://scans/in", dest="s3://scans/in/colour", model=str(tiny_model))
    rerun = run(source="s3://scans/in/", dest="s3://scans/in/colour/", model=str(tiny_model))
    assert inside.counts == {"colorized": 2} and rerun.counts == {"skipped_done": 2}
    assert {"in/colour/one.png", "in/colour/sub/two.jpg"} <= set(keys(s3, "scans", "in/colour/"))


def test_a_denied_source_stops_the_run_without_a_flood_of_failed_rows(run, s3, proxy, tiny_model, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    put_many(s3, "scans", {f"locked/s{i}.png": encode(gray_image(30, 30, seed=i), "PNG") for i in range(6)})
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    proxy.inject("GET", r"^/scans/locked/", 403, "AccessDenied")  # object reads; listing still works

    with pytest.raises(StorageError) as caught:
        run(source="s3://scans/locked", dest="s3://colour/locked", model=str(tiny_model), shard_size=2)
    message = str(caught.value)
    assert "get_object" in message and "'scans'" in message and "AccessDenied" in message
    failed_rows = [
        key
        for key in keys(s3, "colour", "locked/manifests/")
        if (s3_csv(s3, "colour", key)[0]["status"] == "failed").any()
    ]
    assert failed_rows == [] and keys(s3, "colour", "locked/s") == []
    assert proxy.count("GET", r"^/scans/locked/s\d") <= 6  # each read tried once at most, never retried
    assert SECRET not in caplog.text and SECRET not in message

    # A missing destination bucket stops the run at its start (taking the lease), before any work.
    with pytest.raises(StorageError, match="put_object on bucket 'no-dest'.*manifests/lease.json.*NoSuchBucket"):
        run(source="s3://scans/locked", dest="s3://no-dest/x", model=str(tiny_model))


def test_cli_fails_fast_on_a_missing_bucket(s3, tmp_path, tiny_model, cli_env):
    write(tmp_path / "scans" / "a.png", encode(gray_image(30, 30), "PNG"))
    args = [sys.executable, "-m", "colorize.cli", "run", "--model", str(tiny_model)]
    started = time.monotonic()
    done = subprocess.run(
        [*args, "s3://no-such-bucket/1950s/", str(tmp_path / "out")],
        env=cli_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    assert "list_objects_v2" in done.stderr and "'no-such-bucket'" in done.stderr and "NoSuchBucket" in done.stderr
    assert SECRET not in done.stdout + done.stderr and ACCESS_KEY not in done.stdout + done.stderr
    assert not (tmp_path / "out" / "manifest.csv").exists()
    assert time.monotonic() - started < 120


def test_a_source_naming_one_object_is_refused_not_taken_for_an_empty_prefix(run, s3, tmp_path, tiny_model):
    s3.put_object(Bucket="scans", Key="single/scan0.jpg", Body=encode(gray_image(40, 50), "JPEG"))
    with pytest.raises(StorageError, match="s3://scans/single/scan0.jpg is one file, not a folder of scans"):
        run(source="s3://scans/single/scan0.jpg", dest=str(tmp_path / "out"), model=str(tiny_model))
    assert not (tmp_path / "out").exists()


def test_an_archive_uploaded_to_s3_is_relocated_and_checked_by_content(run, s3, tmp_path, tiny_model):
    from typer.testing import CliRunner

    from colorize.cli import app

    scans = {"one.png": encode(gray_image(60, 80), "PNG"), "sub/two.jpg": encode(gray_image(50, 40, seed=1), "JPEG")}
    for key, data in scans.items():
        write(tmp_path / "scans" / key, data)
    first = run(source=str(tmp_path / "scans"), dest="s3://colour/archive", model=str(tiny_model))
    assert first.counts == {"colorized": 2}
    made = {k: s3.get_object(Bucket="colour", Key=f"archive/{k}")["Body"].read() for k in scans}
    put_many(s3, "scans", {f"uploaded/{k}": v for k, v in scans.items()})  # the archive, now in S3

    refused = run(source="s3://scans/uploaded", dest="s3://colour/archive", model=str(tiny_model))
    assert refused.counts == {"failed": 2}
    moved = CliRunner().invoke(app, ["relocate", "s3://colour/archive", str(tmp_path / "scans"), "s3://scans/uploaded"])
    assert moved.exit_code == 0, moved.output
    # The ledger knew them by mtime, S3 gives an ETag: their content decides, and the ledger then
    # holds their ETags, so the night after skips them by ETag alone.
    after = run(source="s3://scans/uploaded", dest="s3://colour/archive", model=str(tiny_model))
    assert after.counts == {"skipped_done": 2}
    rows, _ = s3_csv(s3, "colour", f"archive/manifests/{after.run_id}.csv")
    assert all("content unchanged (same sha256)" in r for r in rows["reason"])
    assert all(rows["source_etag"] != "")
    again = run(source="s3://scans/uploaded", dest="s3://colour/archive", model=str(tiny_model))
    rows, _ = s3_csv(s3, "colour", f"archive/manifests/{again.run_id}.csv")
    assert again.counts == {"skipped_done": 2} and all("unchanged since last run" in r for r in rows["reason"])
    assert {k: s3.get_object(Bucket="colour", Key=f"archive/{k}")["Body"].read() for k in scans} == made
