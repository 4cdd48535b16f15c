"""Results on object storage (s3:// and S3-compatible stores: MinIO, Ceph, SeaweedFS, R2).

Object stores are not file systems: no rename, no folders, no locks. What this project
relies on instead (docs/results.md, docs/cluster.md):
- a single PUT (or a completed multipart upload) is atomic, so every file is written once,
  whole, at its final key (ucrn.fileio.atomic_write);
- conditional writes (`If-None-Match: *`, `If-Match: ETAG`), which S3 and most compatible
  stores support, make the one-driver lease (search/lock.py) a real compare-and-swap;
- a store that is down, a bucket that is missing or credentials that are refused are found
  by a probe before anything starts, in bounded time, and said in one line.

Credentials come only from the environment (AWS_ACCESS_KEY_ID, AWS_PROFILE, ...) or the
instance profile; a URI carrying them is refused (ucrn.fileio.open_uri). The endpoint of a
store other than AWS: AWS_ENDPOINT_URL, or the URI's `?endpoint_override=...`.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ucrn.errors import UsageError
from ucrn.fileio import (
    ANSWER_S,
    NoAnswer,
    answered,
    child_uri,
    display_uri,
    is_uri,
    normalize_uri,
    open_uri,
    redact,
)

PROBE_S = ANSWER_S  # the longest a storage check may take before "not answering"
_CAUSES = (  # (what the AWS SDK says, what it means for the user)
    (("NO_SUCH_BUCKET", "NoSuchBucket", "bucket does not exist"), "the bucket does not exist"),
    (("ACCESS_DENIED", "AccessDenied", "INVALID_ACCESS_KEY_ID", "InvalidAccessKeyId",
      "SIGNATURE_DOES_NOT_MATCH", "SignatureDoesNotMatch", "Forbidden", "403"),
     "access denied (credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
     "AWS_PROFILE or the instance profile)"),
    (("NETWORK_CONNECTION", "Could not connect", "Couldn't connect", "timed out",
      "Connection refused", "EndpointConnectionError", "ConnectTimeout"),
     "the endpoint is not answering"),
)


def endpoint(uri: str) -> str:
    """Where requests for `uri` go, for messages."""
    if urlsplit(uri).scheme != "s3":
        return f"the {urlsplit(uri).scheme}:// store"
    query = dict(parse_qsl(urlsplit(uri).query))
    return redact(query.get("endpoint_override") or os.environ.get("AWS_ENDPOINT_URL_S3")
                  or os.environ.get("AWS_ENDPOINT_URL") or "the provider's default endpoint")


def cause(exc: BaseException) -> str:
    """An SDK error as one short reason (without the secrets an SDK's text may repeat)."""
    text = redact(" ".join(str(exc).split()))
    for needles, meaning in _CAUSES:
        if any(n in text for n in needles):
            return meaning
    return text[:300]


def check_remote(uri: str, flag: str = "--storage", timeout: float | None = None) -> None:
    """Write and delete a probe object under `uri`, in bounded time; one line naming the
    cause (missing bucket, access denied, endpoint not answering) otherwise."""
    timeout = PROBE_S if timeout is None else timeout
    where = f"{flag} {display_uri(uri)}"
    no_answer = f"{where}: the endpoint ({endpoint(uri)}) did not answer within {timeout:.0f} s"
    try:
        fs, root = open_uri(uri)
    except ValueError as e:
        raise UsageError(f"{flag} {e}") from None
    except NoAnswer:
        raise UsageError(no_answer) from None

    def probe() -> None:
        name = f".write-probe-{uuid.uuid4().hex}"
        if fs.type_name == "s3":  # boto3: pyarrow's delete leaves a folder marker behind
            obj = ConditionalObject(uri, f"{root.rstrip('/')}/{name}")
            try:
                obj.client.head_bucket(Bucket=obj.bucket)
            except Exception as e:
                if obj._code(e) in ("404", "NoSuchBucket", "NotFound"):
                    raise OSError("NO_SUCH_BUCKET") from None
                raise
            obj.put({"probe": True})
            obj.client.delete_object(Bucket=obj.bucket, Key=obj.key)
        else:
            with fs.open_output_stream(f"{root.rstrip('/')}/{name}") as f:
                f.write(b"ok")
            fs.delete_file(f"{root.rstrip('/')}/{name}")

    try:
        answered(probe, timeout)
    except NoAnswer:
        raise UsageError(no_answer) from None
    except Exception as e:  # noqa: BLE001 - classified here, in one line
        why = cause(e)
        if why == "the endpoint is not answering":
            why = f"the endpoint ({endpoint(uri)}) is not answering"
        raise UsageError(f"{where}: cannot write there: {why}") from None


class Unsupported(Exception):
    """The store does not do conditional writes (or boto3 is missing)."""


class ConditionalObject:
    """One object on S3 read with its ETag and written only if it is as expected: the
    compare-and-swap that the one-driver lease needs."""

    def __init__(self, uri: str, path: str | None = None):
        """`uri` names the store (scheme, endpoint); `path` is the object's bucket/key as
        pyarrow resolved it (default: read off the URI), so that the lease of a folder is
        one key however the folder's URI was spelt."""
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise Unsupported("boto3 is not installed") from None
        if not is_uri(uri):
            raise Unsupported("a local folder has no conditional writes")
        parts = urlsplit(normalize_uri(uri))  # one spelling, one key (ValueError: refused)
        if parts.scheme != "s3":
            raise Unsupported(f"{parts.scheme}:// has no conditional writes here")
        query = dict(parse_qsl(parts.query))
        url = query.get("endpoint_override")
        if url and "://" not in url:
            url = f"{query.get('scheme', 'https')}://{url}"
        if path is None:
            path = f"{parts.netloc}{parts.path}"
        self.bucket, _, self.key = path.lstrip("/").partition("/")
        self.client = boto3.client(
            "s3", endpoint_url=url, region_name=query.get("region"),
            config=Config(connect_timeout=5, read_timeout=20,
                          retries={"max_attempts": 3, "mode": "standard"}))
        self._errors = self.client.exceptions

    def _code(self, e: Exception) -> str:
        return str((getattr(e, "response", None) or {}).get("Error", {}).get("Code", ""))

    def _call(self, fn: Any, **kw: Any) -> Any:
        try:
            return fn(Bucket=self.bucket, Key=self.key, **kw)
        except Exception as e:
            code = self._code(e)
            if code in ("NotImplemented", "InvalidArgument"):
                raise Unsupported(f"the store refused a conditional request ({code})") from None
            raise

    def read(self) -> tuple[dict[str, Any] | None, str | None]:
        """(the JSON object, its ETag), or (None, None) when there is none."""
        try:
            r = self._call(self.client.get_object)
        except Exception as e:
            if self._code(e) in ("NoSuchKey", "404"):
                return None, None
            raise
        try:
            body = json.loads(r["Body"].read(1 << 16).decode())
        except (UnicodeDecodeError, ValueError):
            body = {}
        return (body if isinstance(body, dict) else {}), r["ETag"]

    def put(self, body: dict[str, Any], *, if_absent: bool = False,
            if_etag: str | None = None) -> str | None:
        """Write the object; None when the condition failed (someone else wrote it)."""
        cond = {"IfNoneMatch": "*"} if if_absent else {"IfMatch": if_etag} if if_etag else {}
        try:
            r = self._call(self.client.put_object, Body=json.dumps(body).encode(),
                           ContentType="application/json", **cond)
        except Exception as e:
            if self._code(e) in ("PreconditionFailed", "ConditionalRequestConflict", "412",
                                 "409"):
                return None
            raise
        return r["ETag"]

    def delete(self, etag: str) -> bool:
        try:
            self._call(self.client.delete_object, IfMatch=etag)
        except Exception as e:
            if self._code(e) in ("PreconditionFailed", "NoSuchKey", "404", "412"):
                return False
            raise
        return True


def ray_storage(location: str, key: str = "storage_path") -> dict[str, Any]:
    """Ray's storage arguments for a folder or URI: a URI becomes a pyarrow filesystem and
    its path, so that Ray gets the endpoint (`?endpoint_override=...`) and never a query
    string inside the paths it builds."""
    if not is_uri(location):
        return {key: location}
    fs, path = open_uri(location)
    return {key: path, "storage_filesystem": fs}


def join(location: str, *names: str) -> str:
    """A folder or URI with names appended; a URI in its one spelling (normalize_uri), so
    that what is recorded and shown of STORAGE/NAME is the same however it was typed."""
    return child_uri(normalize_uri(location), *names) if is_uri(location) else "/".join(
        [location.rstrip("/"), *names])
