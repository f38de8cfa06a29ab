"""S3 (and S3-compatible) storage: one bucket prefix as a storage root.

The only module that imports boto3. Credentials come from boto3's default chain (environment,
profile, SSO, container or instance role); the endpoint from ``endpoint_url``, else from what
boto3 itself reads (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, the profile), else AWS.

Faults are sorted into three kinds, because they call for different reactions:

- a missing object on read: :class:`FileNotFoundError` (that file is recorded as failed);
- a fault of the storage itself, which would fail every file the same way (no such bucket,
  access denied, bad credentials, an endpoint that stays unreachable or keeps failing after
  botocore's retries): :class:`~colorize.storage.StorageError`, which stops the run;
- anything else about one object (e.g. an archived object, a body cut off mid-read, which
  botocore does not retry): :class:`OSError` naming the object, recorded against that file.

Transient faults (5xx, throttling, dropped connections) are retried by botocore itself (standard
retry mode) before any of this applies. Messages carry the bucket, the key and S3's error code and
message, never request headers or anything from the credentials.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, NoReturn

import boto3.session
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)

from colorize.storage import ObjectInfo, StorageError, check_key

log = logging.getLogger(__name__)

MiB = 1024 * 1024
PRESIGN_MAX_SECONDS = 7 * 24 * 3600  # SigV4's limit on a presigned link's lifetime
# Below this, one PutObject; above, a multipart upload by boto3's transfer manager. S3 takes up
# to 5 GiB in one PUT, but a multipart upload retries a failed part, not the whole object.
DEFAULT_MULTIPART_THRESHOLD = 64 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's smallest part (all but the last)
# Attempts per request (the first try included), with botocore's exponential backoff and jitter
# between them: at most ~6 s of back-off in all for 5xx answers and dropped connections, ~70 s
# when S3 says to slow down, before a fault counts as permanent and stops the run.
DEFAULT_MAX_ATTEMPTS = 8

# Error codes that say the bucket, the credentials or the permissions are wrong: every other
# object would fail the same way, so the run stops instead of recording each file as failed.
# Throttling codes are here too: they reach us only once botocore's retries are spent.
FATAL_CODES = frozenset({
    "AccessDenied", "AllAccessDisabled", "AccountProblem", "AuthorizationHeaderMalformed",
    "ExpiredToken", "InvalidAccessKeyId", "InvalidBucketName", "InvalidToken", "NoSuchBucket",
    "PermanentRedirect", "RequestTimeTooSkewed", "SignatureDoesNotMatch", "TokenRefreshRequired",
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
})  # fmt: skip
# Faults of one object that S3 answers with a status that would otherwise read as fatal (an
# archived object is a 403): that file fails, the run goes on.
_OBJECT_CODES = frozenset({"InvalidObjectState", "KeyTooLongError", "EntityTooLarge", "InvalidRange"})
# A HEAD has no body, so a missing object there is just "404".
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_HINTS = {
    "NoSuchBucket": "check the bucket name and the endpoint",
    "AccessDenied": "check the IAM policy (README, section S3)",
    "AllAccessDisabled": "check the IAM policy (README, section S3)",
    "InvalidAccessKeyId": "check the credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE) and the endpoint",
    "SignatureDoesNotMatch": "check the credentials (AWS_SECRET_ACCESS_KEY / AWS_PROFILE)",
    "ExpiredToken": "the session credentials have expired; renew them",
    "PermanentRedirect": "the bucket is in another region; set AWS_DEFAULT_REGION",
    "RequestTimeTooSkewed": "this machine's clock is off; synchronise it",
}
_CREDENTIAL_ERRORS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError, ProfileNotFound)

_session_lock = threading.Lock()
_session: boto3.session.Session | None = None


def parse_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` -> ``("bucket", "some/prefix")``; the prefix may be empty."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an S3 URI: {uri!r} (expected s3://bucket/prefix)")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"S3 URI {uri!r} names no bucket (expected s3://bucket/prefix)")
    prefix = prefix.removesuffix("/")
    if prefix.startswith("/") or "//" in prefix:
        # S3 keys may hold them, but no key a run reads or writes does (storage.check_key): a typo.
        tidy = "/".join(p for p in prefix.split("/") if p)
        raise ValueError(f"S3 URI {uri!r} has an empty path segment: did you mean s3://{bucket}/{tidy}?")
    return bucket, prefix


def client_config(max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Config:
    """botocore's own retries (standard mode: 5xx, throttling, dropped connections) and timeouts."""
    return Config(
        # total_max_attempts counts the first try; botocore's older "max_attempts" key counts retries only.
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=10,
        read_timeout=60,
        # Two thread pools of up to 8 (process.io_workers) share one client, plus upload parts.
        max_pool_connections=32,
        # botocore presigns with SigV2 in some regions (us-east-1 among them), which AWS refuses on
        # buckets made since 2020; the report's link must be SigV4, as every request already is.
        signature_version="s3v4",
    )


def _new_client(endpoint_url: str | None, max_attempts: int) -> Any:
    """An S3 client from one session per process, so credentials are resolved (and refreshed) once.

    Creating clients from one session is not thread-safe, hence the lock; the clients themselves are.
    """
    global _session
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        # endpoint_url=None lets botocore apply AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / the profile.
        return _session.client("s3", endpoint_url=endpoint_url, config=client_config(max_attempts))


class S3Storage:
    """Objects under ``s3://bucket/prefix``, addressed by keys relative to the prefix.

    Args:
        uri: ``s3://bucket`` or ``s3://bucket/prefix`` (a trailing ``/`` makes no difference).
        endpoint_url: an S3-compatible endpoint (MinIO, Ceph, R2, ...); None for boto3's own choice.
        client: an S3 client to use instead of making one (tests, custom sessions).
        multipart_threshold: objects of at least this many bytes are uploaded in parts.
        max_attempts: attempts per request (the first included) before a fault counts as permanent.
    """

    def __init__(
        self,
        uri: str,
        endpoint_url: str | None = None,
        client: Any = None,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ):
        self.bucket, self.prefix = parse_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self._root = f"{self.prefix}/" if self.prefix else ""
        self._client = client if client is not None else _new_client(endpoint_url, max_attempts)
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=max(multipart_threshold, MIN_PART_SIZE),
            max_concurrency=4,
        )

    def __repr__(self) -> str:
        return f"S3Storage({self.uri!r})"

    def _key(self, key: str) -> str:
        """The full object key of a checked relative key."""
        return self._root + check_key(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix``, in S3's key order, one page (1000 keys) fetched at a time.

        Keys are yielded as S3 has them, unsafe ones included (``a//b``, ``..``), so that the caller
        can refuse and record them. Empty "folder" markers (keys ending in ``/``) are left out; one
        that holds bytes is listed with its problem, since it may be a scan uploaded under a bad name.
        """
        full_prefix = self._root + prefix
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full_prefix)
        with self._faults("list_objects_v2", full_prefix, what="prefix"):
            for page in pages:
                for obj in page.get("Contents", ()):
                    info = self._info(obj["Key"][len(self._root) :], obj)
                    if not obj["Key"].endswith("/"):
                        yield info
                    elif info.size:  # the prefix's own marker too (key ""): bytes there are someone's
                        yield replace(info, problem=f"a key ending in '/' that holds {info.size} bytes: a folder "
                                      "marker with content, or a file uploaded without a name")  # fmt: skip

    @staticmethod
    def _info(key: str, meta: dict[str, Any]) -> ObjectInfo:
        """ObjectInfo from a listing entry (Size, ETag) or a HEAD response (ContentLength, ETag)."""
        size = meta["Size"] if "Size" in meta else meta["ContentLength"]
        return ObjectInfo(key=key, size=int(size), mtime=meta["LastModified"].timestamp(), etag=meta["ETag"].strip('"'))

    def root_is_file(self) -> bool:
        """Whether the URI names one object (``s3://b/box/scan.jpg``), not a prefix of them."""
        if not self.prefix:
            return False
        try:
            with self._faults("head_object", self.prefix):
                self._client.head_object(Bucket=self.bucket, Key=self.prefix)
        except FileNotFoundError:
            return False
        return True

    def stat(self, key: str) -> ObjectInfo | None:
        """HEAD the object; None when S3 answers 404 (a HEAD has no error body, so a missing bucket
        reads as a missing object here: the listing, which every run starts with, tells them apart)."""
        full = self._key(key)
        try:
            with self._faults("head_object", full):
                head = self._client.head_object(Bucket=self.bucket, Key=full)
        except FileNotFoundError:
            return None
        return self._info(key, head)

    def read_bytes(self, key: str) -> bytes:
        full = self._key(key)
        with self._faults("get_object", full):
            body = self._client.get_object(Bucket=self.bucket, Key=full)["Body"]
        try:
            return body.read()
        except BotoCoreError as err:
            # botocore retries requests, not a body cut off half-way: this file fails, the run goes on.
            raise OSError(f"S3 get_object on bucket '{self.bucket}' (key '{full}'): body cut off: {err}") from None

    def write_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """One PUT, or a multipart upload from ``multipart_threshold`` bytes: whole objects only.

        S3 makes an object visible only when its PUT or its multipart upload completes, so readers
        see the old object or the new one; a failed multipart upload is aborted by boto3.
        """
        full = self._key(key)
        if len(data) < self._transfer.multipart_threshold:
            with self._faults("put_object", full):
                self._client.put_object(Bucket=self.bucket, Key=full, Body=data, ContentType=content_type)
            return
        with self._faults("upload_fileobj", full):
            self._client.upload_fileobj(
                io.BytesIO(data), self.bucket, full, ExtraArgs={"ContentType": content_type}, Config=self._transfer
            )

    def delete(self, key: str) -> None:
        full = self._key(key)
        with self._faults("delete_object", full):
            self._client.delete_object(Bucket=self.bucket, Key=full)  # S3 answers 204 for a missing key too

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object and its ETag (conditional requests compare ETags)."""
        full = self._key(key)
        try:
            with self._faults("get_object", full):
                got = self._client.get_object(Bucket=self.bucket, Key=full)
                return got["Body"].read(), str(got["ETag"])
        except FileNotFoundError:
            return None

    def write_if(
        self, key: str, data: bytes, version: str | None, content_type: str = "application/octet-stream"
    ) -> str | None:
        """A conditional PUT (``If-None-Match: *`` or ``If-Match: <ETag>``), which S3 applies atomically."""
        full = self._key(key)
        condition = {"IfMatch": version} if version is not None else {"IfNoneMatch": "*"}
        args = {"Bucket": self.bucket, "Key": full, "Body": data, "ContentType": content_type, **condition}
        put = self._conditional("put_object", full, lambda: self._client.put_object(**args))
        return None if put is None else str(put["ETag"])

    def delete_if(self, key: str, version: str) -> bool:
        """A conditional DELETE (``If-Match: <ETag>``: AWS S3 since 2025, MinIO, Ceph)."""
        full = self._key(key)
        try:
            deleted = self._conditional(
                "delete_object", full, lambda: self._client.delete_object(Bucket=self.bucket, Key=full, IfMatch=version)
            )
        except FileNotFoundError:
            return False
        return deleted is not None

    def _conditional(self, operation: str, key: str, request: Callable[[], Any]) -> Any:
        """``request()``'s answer, or None when S3 says its condition did not hold (412) or another
        conditional request on the key was in progress (409)."""
        with self._faults(operation, key):
            try:
                return request()
            except ClientError as err:
                if _status(err) in (409, 412):
                    return None
                raise

    def sweep_temp(self) -> int:
        """Nothing to sweep: an object appears only whole (one PUT, or a completed multipart upload).
        Parts of multipart uploads cut off by a kill are S3's to expire: a bucket lifecycle rule
        (``AbortIncompleteMultipartUpload``), see the README's S3 section."""
        return 0

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._root}{key}"

    def presign(self, key: str, expires_in: int) -> str:
        """A time-limited HTTPS GET link to one object (for run reports opened in a browser).

        Such a link is a bearer capability by design: it carries the access key ID (never the
        secret) and, under temporary credentials, the session token, and works for anyone until it
        expires. SigV4 caps ``expires_in`` at 7 days: a longer one is given 7 (S3 refuses a link
        signed for longer, on every use); a session token's own expiry may come first.
        """
        full = self._key(key)
        if expires_in > PRESIGN_MAX_SECONDS:
            log.warning("a presigned link lasts at most 7 days (SigV4): %s s asked, 604800 given", expires_in)
        with self._faults("generate_presigned_url", full):
            return str(self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": full},
                ExpiresIn=min(int(expires_in), PRESIGN_MAX_SECONDS),
            ))  # fmt: skip

    @contextmanager
    def _faults(self, operation: str, key: str, what: str = "key") -> Iterator[None]:
        """Translate boto3's exceptions into ours (see the module docstring)."""
        where = f"S3 {operation} on bucket '{self.bucket}' ({what} '{key}')"
        try:
            yield
        except ClientError as err:
            _raise_client_error(where, err)
        except _CREDENTIAL_ERRORS as err:
            raise StorageError(
                f"{where} failed: no usable AWS credentials ({type(err).__name__}); "
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            ) from None
        except (ConnectionError, HTTPClientError) as err:
            raise StorageError(
                f"{where} failed after retries: {type(err).__name__}: {err}; "
                "check the endpoint (--endpoint-url / AWS_ENDPOINT_URL) and the network"
            ) from None
        except BotoCoreError as err:
            raise StorageError(f"{where} failed: {type(err).__name__}: {err}") from None


def _status(err: ClientError) -> int:
    """The HTTP status S3 answered with (0 when the error carries none)."""
    return int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _raise_client_error(where: str, err: ClientError) -> NoReturn:
    """FileNotFoundError for a missing object, StorageError for a fault of the storage, else OSError."""
    # Only the error's code and message are used: S3's error body for a bad signature also
    # carries the access key id and the string to sign, which have no place in a message.
    error = err.response.get("Error", {})
    code = str(error.get("Code") or "")
    message = str(error.get("Message") or "")
    status = _status(err)
    detail = f"{code or status}: {message}".rstrip(": ")
    # `from None` everywhere: the chained ClientError would only repeat this, less clearly.
    if code in _MISSING_CODES:
        raise FileNotFoundError(f"{where}: no such object") from None
    if code not in _OBJECT_CODES and (code in FATAL_CODES or status in (301, 401, 403, 429) or status >= 500):
        hint = _HINTS.get(code) or ("the service kept failing after retries" if status >= 500 else "")
        raise StorageError(f"{where} failed: {detail}" + (f"; {hint}" if hint else "")) from None
    raise OSError(f"{where} failed: {detail}") from None
