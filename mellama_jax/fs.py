"""One filesystem layer for every path the project reads or writes: local paths, gs:// and s3://.

Why one layer: a corpus, a token store or a benchmark file may live on local disk, in a GCS bucket next
to the TPUs or in S3 next to the GPUs, and every reader should take any of them. Local paths keep the
builtin fast path (os, open, glob: memory maps and O_NOFOLLOW stay possible); a URL with a scheme
goes through fsspec (gcsfs for gs://, s3fs for s3://, which are the maintained clients), so
credentials come from where those clients look: Application Default Credentials for GCS (and
STORAGE_EMULATOR_HOST for an emulator), the AWS environment variables, profiles and instance roles
for S3, AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 for an S3-compatible store (MinIO, Ceph, R2).

Every remote call is retried with exponential backoff on transient errors (dropped connections,
timeouts, 5xx answers that outlive botocore's own retries; s3fs's retry loop is turned off so the
layers do not multiply); a missing object or bucket, a refused credential or a bad URL is not
transient and raises `StorageError` at once, naming the URL (and, for a refused key, where
credentials come from). Nothing is ever skipped silently. Attempts: $MELLAMA_FS_RETRIES (6); first
backoff: $MELLAMA_FS_RETRY_DELAY seconds (0.2). Remote reads are ranged (`open(url, "rb")` gives a
buffered file over ranged GETs of at most one block each, each retried), so a reader can stream a
file of any size and resume mid-file after a fault.
Remote writes go to a local temporary file and are uploaded on close (an object appears whole or not
at all).
"""
from __future__ import annotations

import glob as _glob
import io
import os
import random
import re
import shutil
import tempfile
import threading
import time
from typing import Any, Callable, Iterator, TypeVar

__all__ = ["StorageError", "is_url", "join", "dirname", "basename", "open", "read_bytes", "read_text",
           "write_bytes", "write_text", "read_range", "read_head", "glob", "exists", "isfile", "isdir", "size",
           "stat_key", "makedirs", "listdir", "put_file", "get_file", "remove", "local_copy",
           "with_retries", "reset", "iter_lines", "RETRY_ATTEMPTS_ENV", "RETRY_DELAY_ENV"]

T = TypeVar("T")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
RETRY_ATTEMPTS_ENV = "MELLAMA_FS_RETRIES"  # attempts per remote call (default 6)
RETRY_DELAY_ENV = "MELLAMA_FS_RETRY_DELAY"  # first backoff in seconds (default 0.2; tests use 0.01)
_READ_BLOCK = 8 << 20                      # bytes per ranged GET of a streamed remote file
_lock = threading.Lock()
_filesystems: dict[str, Any] = {}


class StorageError(OSError):
    """A path that cannot be read or written (missing, refused, or still failing after retries)."""


def is_url(path: str) -> bool:
    """True for `scheme://...` other than file://, which is a local path."""
    m = _SCHEME.match(str(path))
    return bool(m) and m.group(1).lower() != "file"


def _local(path: str) -> str:
    path = str(path)
    if path.startswith("file://"):
        path = path[len("file://"):]
    return os.path.expanduser(path)


def _protocol(url: str) -> str:
    return _SCHEME.match(url).group(1).lower()


def join(base: str, *parts: str) -> str:
    """`base/part/...` for local paths and URLs alike."""
    if not is_url(base):
        return os.path.join(base, *parts)
    out = str(base).rstrip("/")
    for p in parts:
        out = f"{out}/{str(p).strip('/')}"
    return out


def dirname(path: str) -> str:
    if not is_url(path):
        return os.path.dirname(path)
    head, _, _ = str(path).rstrip("/").rpartition("/")
    return head


def basename(path: str) -> str:
    return str(path).rstrip("/").rpartition("/")[2] if is_url(path) else os.path.basename(path)


# --- the remote clients ----------------------------------------------------------------------
def _filesystem(url: str):
    """The fsspec filesystem for a URL's scheme (one per scheme and process; `reset()` drops them)."""
    proto = _protocol(url)
    with _lock:
        fs = _filesystems.get(proto)
        if fs is None:
            try:
                import fsspec  # the remote path only: local runs never import it
            except ImportError as err:  # pragma: no cover - fsspec is a pinned dependency
                raise StorageError(f"{url}: reading {proto}:// needs fsspec (pip install fsspec)") from err
            try:
                # skip_instance_cache: credentials and endpoints are read now, not from an instance
                # another library made with other settings.
                # s3fs retries=1: its own retry loop would multiply with botocore's and ours (a
                # dead endpoint took minutes to report); botocore's retries (AWS_MAX_ATTEMPTS,
                # AWS_RETRY_MODE) and with_retries remain.
                fs = fsspec.filesystem(proto, skip_instance_cache=True, use_listings_cache=False)
                if proto in ("s3", "s3a"):
                    fs.retries = 1  # a class attribute in s3fs, not a constructor argument
            except (ImportError, ValueError) as err:
                raise StorageError(f"{url}: no filesystem for {proto}:// ({err}); gs:// needs gcsfs, "
                                   "s3:// needs s3fs") from None
            _filesystems[proto] = fs
        return fs


def reset() -> None:
    """Forget the remote clients, so that changed credentials or endpoints are read again."""
    with _lock:
        _filesystems.clear()


def _strip(url: str) -> str:
    return str(url).split("://", 1)[1]


def _with_scheme(url_like: str, proto: str) -> str:
    return url_like if _SCHEME.match(url_like) else f"{proto}://{url_like}"


_CREDENTIAL_CODES = ("NoCredentialsError", "PartialCredentialsError", "InvalidAccessKeyId",
                     "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken",
                     "DefaultCredentialsError", "RefreshError", "AllAccessDisabled")
_PERMANENT_NAMES = _CREDENTIAL_CODES + ("NoSuchBucket", "NoSuchKey", "InvalidBucketName",
                                        "ParamValidationError", "InvalidRange")
_TRANSIENT_CLASSES = {"ClientConnectionError", "ServerDisconnectedError", "ClientPayloadError",
                      "ClientOSError", "ServerTimeoutError", "EndpointConnectionError",
                      "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
                      "ResponseStreamingError", "IncompleteReadError", "IncompleteRead",
                      "ResponseParserError", "FSTimeoutError", "TransportError", "ChunkedEncodingError",
                      "ProtocolError", "ServiceUnavailable", "InternalServerError", "TooManyRequests",
                      "BadGateway", "GatewayTimeout", "ProxyError"}


def _chain(err: BaseException) -> Iterator[BaseException]:
    """err and the exceptions it was raised from (s3fs keeps botocore's ClientError as the cause)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _error_code(err: BaseException) -> str | None:
    """The storage service's error code (S3's `InvalidAccessKeyId`, `NoSuchBucket`, ...) if known."""
    for e in _chain(err):
        response = getattr(e, "response", None)
        if isinstance(response, dict) and response.get("Error", {}).get("Code"):
            return str(response["Error"]["Code"])
    return None


def _http_status(err: BaseException) -> int | None:
    """The HTTP status behind an error (botocore's response, gcsfs's HttpError.code, aiohttp's .status)."""
    for e in _chain(err):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status:
                return int(status)
        # Only answers from a server: aiohttp's parser errors carry a `code` of 400 for a cut body.
        names = {c.__name__ for c in type(e).__mro__}
        value = getattr(e, "code", None) if "HttpError" in names else (
            getattr(e, "status", None) if "ClientResponseError" in names else None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    return None


def _is_credentials(err: BaseException) -> bool:
    text = " ".join(f"{type(e).__name__} {e}" for e in _chain(err))
    return (isinstance(err, PermissionError) or _http_status(err) in (401, 403)
            or any(name in text for name in _CREDENTIAL_CODES) or str(err).startswith("Forbidden"))


def _is_transient(err: BaseException) -> bool:
    """Whether retrying could help: dropped connections, timeouts and 5xx/408/429 answers do; a
    missing object, a refused credential or a malformed request does not."""
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                        FileExistsError, ValueError, TypeError, KeyError)):
        return False
    code = _error_code(err)
    if code in _PERMANENT_NAMES or _is_credentials(err):
        return False
    text = " ".join(f"{type(e).__name__} {e}" for e in _chain(err))
    if any(name in text for name in _PERMANENT_NAMES):
        return False
    status = _http_status(err)
    if status is not None and status >= 400:
        return status >= 500 or status in (408, 429)
    if code in ("InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling"):
        return True
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    names = {c.__name__ for e in _chain(err) for c in type(e).__mro__}
    if names & _TRANSIENT_CLASSES:
        return True
    if isinstance(err, OSError):
        # s3fs turns 5xx into OSError(EREMOTEIO); other OSErrors that name a 4xx code are permanent.
        return not re.search(r"\b4\d\d\b", text) or bool(re.search(r"\b(408|429)\b", text))
    return False


def _credentials_hint(what: str) -> str:
    if what.startswith("gs://"):
        return "check the credentials (GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth application-default login`)"
    return ("check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the instance "
            "role; AWS_ENDPOINT_URL for an S3-compatible store)")


def _describe(what: str, err: BaseException) -> str:
    """The message of a permanent failure: what is missing or refused, and what to check."""
    code = _error_code(err)
    if code == "NoSuchBucket":
        return f"{what}: no such bucket"
    if isinstance(err, FileNotFoundError):
        return f"{what}: no such object"
    if _is_credentials(err):
        return f"{what}: access refused ({code + ', ' if code else ''}{_short(err)}); {_credentials_hint(what)}"
    return f"{what}: {_short(err)}"


def with_retries(fn: Callable[[], T], *, what: str, attempts: int | None = None,
                 base_delay: float | None = None, max_delay: float = 10.0) -> T:
    """fn() retried with jittered exponential backoff while it fails transiently; `what` (the URL and
    the operation) names the object in the error raised once the attempts are spent or at a
    permanent failure. Attempts default to $MELLAMA_FS_RETRIES (6), the first delay to
    $MELLAMA_FS_RETRY_DELAY (0.2 s)."""
    attempts = int(os.environ.get(RETRY_ATTEMPTS_ENV, "6")) if attempts is None else int(attempts)
    if base_delay is None:
        base_delay = float(os.environ.get(RETRY_DELAY_ENV, "0.2"))
    for i in range(max(1, attempts)):
        try:
            return fn()
        except StorageError:
            raise
        except Exception as err:  # noqa: BLE001 - classified below; nothing is swallowed
            if not _is_transient(err):
                raise StorageError(_describe(what, err)) from err
            if i + 1 >= attempts:
                raise StorageError(f"{what}: still failing after {attempts} attempts: {_short(err)}") from err
            delay = min(max_delay, base_delay * 2 ** i) * (0.5 + random.random() / 2)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _short(err: BaseException) -> str:
    msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {msg[:300]}" if msg else type(err).__name__


# --- reading -----------------------------------------------------------------------------------
class _RangedReader(io.RawIOBase):
    """A remote object as a raw, seekable file: each read is one ranged GET, retried on its own."""

    def __init__(self, url: str):
        self.url, self._fs, self._pos = url, _filesystem(url), 0
        self._size = size(url)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + int(offset))
        return self._pos

    def readinto(self, b) -> int:
        # At most one block per GET: the unit that is retried after a fault stays bounded.
        start = self._pos
        end = min(self._size, start + min(len(b), _READ_BLOCK))
        if start >= end:
            return 0
        data = read_range(self.url, start, end)
        n = len(data)
        b[:n] = data
        self._pos += n
        return n


    def readall(self) -> bytes:
        # RawIOBase.readall would read DEFAULT_BUFFER_SIZE (8 KiB) per call: one GET per 8 KiB.
        parts = []
        while self._pos < self._size:
            end = min(self._size, self._pos + _READ_BLOCK)
            parts.append(read_range(self.url, self._pos, end))
            self._pos = end
        return b"".join(parts)


class _UploadOnClose(io.BufferedWriter):
    """Writes go to a local temporary file; close() uploads it (retried), so the object appears whole."""

    def __init__(self, url: str):
        fd, self._tmp = tempfile.mkstemp(prefix="mellama-upload-")
        super().__init__(io.FileIO(fd, "wb"))
        self.url = url

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()
            put_file(self._tmp, self.url)
        finally:
            try:
                os.unlink(self._tmp)
            except OSError:
                pass


def open(path: str, mode: str = "rb", encoding: str | None = None, errors: str | None = None,
         newline: str | None = None):  # noqa: A001 - the builtin's name, on purpose
    """A file object for a local path or a URL. Modes: r, rb, w, wb (text modes wrap the binary one)."""
    if mode not in ("r", "rb", "w", "wb", "rt", "wt"):
        raise ValueError(f"fs.open({path!r}): unsupported mode {mode!r}")
    binary = "b" in mode
    if not is_url(path):
        import builtins
        if binary:
            return builtins.open(_local(path), mode)
        return builtins.open(_local(path), mode, encoding=encoding or "utf-8", errors=errors, newline=newline)
    if mode.startswith("r"):
        raw = io.BufferedReader(_RangedReader(path), buffer_size=_READ_BLOCK)
    else:
        raw = _UploadOnClose(path)
    if binary:
        return raw
    return io.TextIOWrapper(raw, encoding=encoding or "utf-8", errors=errors, newline=newline)


def read_range(path: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of a file or object (one ranged GET for a URL, retried)."""
    if not is_url(path):
        import builtins
        with builtins.open(_local(path), "rb") as f:
            f.seek(start)
            return f.read(max(0, end - start))
    if end <= start:
        return b""
    fs = _filesystem(path)
    data = with_retries(lambda: fs.cat_file(_strip(path), start=start, end=end), what=f"{path} [{start}:{end}]")
    if len(data) != end - start:
        raise StorageError(f"{path} [{start}:{end}]: got {len(data)} bytes; the object changed or was cut short")
    return data


def read_head(path: str, n: int) -> bytes:
    """The first n bytes of a file or object (fewer when it is shorter): magic-number checks
    without fetching a whole read block."""
    if not is_url(path):
        import builtins
        with builtins.open(_local(path), "rb") as f:
            return f.read(n)
    return read_range(path, 0, min(int(n), size(path)))


def read_bytes(path: str) -> bytes:
    if not is_url(path):
        with open(path, "rb") as f:
            return f.read()
    fs = _filesystem(path)
    return with_retries(lambda: fs.cat_file(_strip(path)), what=f"{path}: read")


def read_text(path: str, encoding: str = "utf-8") -> str:
    return read_bytes(path).decode(encoding)


# --- writing -----------------------------------------------------------------------------------
def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file or object. Local writes go to a temporary name renamed into place, so a
    reader never sees half a file; an object PUT is atomic already."""
    if not is_url(path):
        local = _local(path)
        os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
        tmp = f"{local}.tmp{os.getpid()}"
        import builtins
        with builtins.open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, local)
        return
    fs = _filesystem(path)
    with_retries(lambda: fs.pipe_file(_strip(path), data), what=f"{path}: write")


def write_text(path: str, text: str, encoding: str = "utf-8") -> None:
    write_bytes(path, text.encode(encoding))


def put_file(local_path: str, url: str) -> None:
    """Upload (or, for a local destination, copy) one file."""
    if not is_url(url):
        dst = _local(url)
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
        shutil.copyfile(local_path, dst)
        return
    fs = _filesystem(url)
    with_retries(lambda: fs.put_file(local_path, _strip(url)), what=f"{url}: upload")


def get_file(url: str, local_path: str) -> None:
    """Download (or copy) one file to a local path."""
    os.makedirs(os.path.dirname(os.path.abspath(local_path)), exist_ok=True)
    if not is_url(url):
        shutil.copyfile(_local(url), local_path)
        return
    fs = _filesystem(url)
    tmp = f"{local_path}.tmp{os.getpid()}"  # a failed download leaves no half file under the real name
    try:
        with_retries(lambda: fs.get_file(_strip(url), tmp), what=f"{url}: download")
        os.replace(tmp, local_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def local_copy(path: str, directory: str) -> str:
    """A local path holding `path`'s content: itself when local, else a download into `directory`."""
    if not is_url(path):
        return _local(path)
    dst = os.path.join(directory, basename(path))
    get_file(path, dst)
    return dst


def makedirs(path: str) -> None:
    """Create a local directory (object stores have no directories: a no-op for URLs)."""
    if not is_url(path):
        os.makedirs(_local(path), exist_ok=True)


def remove(path: str) -> None:
    """Delete one file or object the caller created."""
    if not is_url(path):
        os.unlink(_local(path))
        return
    fs = _filesystem(path)
    with_retries(lambda: fs.rm_file(_strip(path)), what=f"{path}: delete")


# --- listing and metadata ------------------------------------------------------------------------
def glob(pattern: str, files_only: bool = False) -> list[str]:
    """Sorted paths matching a glob (`**` recursive); URLs come back with their scheme. With
    files_only, directories (and object-store prefixes) are left out, from the one listing (no
    request per match). A URL whose bucket does not exist is a StorageError, not an empty list."""
    if not is_url(pattern):
        found = sorted(_glob.glob(_local(pattern), recursive=True))
        return [p for p in found if os.path.isfile(p)] if files_only else found
    fs, proto = _filesystem(pattern), _protocol(pattern)
    if not any(c in _strip(pattern) for c in "*?["):
        info = _info(pattern)
        if info is None:
            _require_bucket(pattern)
            return []
        return [pattern] if info.get("type") == "file" or not files_only else []
    try:
        found = with_retries(lambda: fs.glob(_strip(pattern), detail=True), what=f"{pattern}: list")
    except StorageError as err:
        if isinstance(err.__cause__, FileNotFoundError):
            _require_bucket(pattern)  # gcsfs reports a missing bucket as a missing object: say which
        raise
    if not found:
        _require_bucket(pattern)
    return sorted(_with_scheme(p, proto) for p, info in found.items()
                  if not files_only or info.get("type") == "file")


def _require_bucket(url: str) -> None:
    """StorageError naming the URL when its bucket does not exist (an empty listing is otherwise
    indistinguishable from a typo in the bucket's name)."""
    bucket = f"{_protocol(url)}://{_strip(url).split('/', 1)[0]}"
    if _info(bucket) is None:
        raise StorageError(f"{url}: no such bucket {bucket}")


def _info(url: str) -> dict | None:
    fs = _filesystem(url)

    def call():
        try:
            return fs.info(_strip(url))
        except FileNotFoundError:
            return None
    return with_retries(call, what=f"{url}: stat")


def exists(path: str) -> bool:
    if not is_url(path):
        return os.path.exists(_local(path))
    return _info(path) is not None


def isfile(path: str) -> bool:
    if not is_url(path):
        return os.path.isfile(_local(path))
    info = _info(path)
    return info is not None and info.get("type") == "file"


def isdir(path: str) -> bool:
    """A local directory, or a URL prefix holding at least one object."""
    if not is_url(path):
        return os.path.isdir(_local(path))
    info = _info(path.rstrip("/"))
    return info is not None and info.get("type") == "directory"


def size(path: str) -> int:
    if not is_url(path):
        return os.path.getsize(_local(path))
    info = _info(path)
    if info is None:
        raise StorageError(f"{path}: no such object")
    return int(info["size"])


def stat_key(path: str) -> tuple[int, str]:
    """(size, version) of a file for cache keys and fingerprints: the mtime of a local file, the
    ETag / generation / checksum of an object (which changes when the object is rewritten)."""
    if not is_url(path):
        local = _local(path)
        return os.path.getsize(local), str(int(os.path.getmtime(local)))
    info = _info(path)
    if info is None:
        raise StorageError(f"{path}: no such object")
    version = next((str(info[k]) for k in ("ETag", "etag", "generation", "md5Hash", "crc32c", "LastModified",
                                          "mtime", "updated") if info.get(k)), "")
    return int(info["size"]), version.strip('"')


def listdir(path: str) -> list[str]:
    """Names (not paths) directly under a local directory or URL prefix, sorted."""
    if not is_url(path):
        return sorted(os.listdir(_local(path)))
    fs = _filesystem(path)
    entries = with_retries(lambda: fs.ls(_strip(path).rstrip("/"), detail=False), what=f"{path}: list")
    return sorted(str(e).rstrip("/").rpartition("/")[2] for e in entries)


def iter_lines(path: str, encoding: str = "utf-8") -> Iterator[str]:
    """Lines of a text file or object, streamed."""
    with open(path, "r", encoding=encoding) as f:
        yield from f
