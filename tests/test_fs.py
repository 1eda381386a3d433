"""mellama_jax.fs against local disk, a real S3 server (moto) and a fault-injecting proxy in front of it.

The error classification is checked on the exceptions s3fs/aiohttp/botocore really raise for each
fault on the wire, not on hand-made ones, so an upgrade that changes them fails here.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from storage_servers import fault_proxy, gcs, gcs_server, s3, s3_auth, s3_server  # noqa: E402,F401

from mellama_jax import fs  # noqa: E402

BLOB = bytes(range(256)) * 40 + b"tail"  # 10,244 bytes: many 1 KiB blocks and a short last one


# --- local paths keep the builtin behaviour --------------------------------------------------------
def test_local_roundtrip_glob_listdir_and_stat_key(tmp_path):
    root = str(tmp_path)
    fs.write_text(fs.join(root, "a", "x.txt"), "one\ntwo\n")
    fs.write_bytes(fs.join(root, "a", "b", "y.xml.gz"), b"\x1f\x8b")
    fs.write_bytes(fs.join(root, "z1.xml.gz"), b"z")
    assert fs.read_text(os.path.join(root, "a", "x.txt")) == "one\ntwo\n"
    assert list(fs.iter_lines(os.path.join(root, "a", "x.txt"))) == ["one\n", "two\n"]
    assert fs.glob(os.path.join(root, "**", "*.xml.gz")) == [os.path.join(root, "a", "b", "y.xml.gz"),
                                                            os.path.join(root, "z1.xml.gz")]
    assert fs.glob(os.path.join(root, "z?.xml.gz")) == [os.path.join(root, "z1.xml.gz")]
    assert fs.listdir(root) == ["a", "z1.xml.gz"]
    assert fs.isdir(os.path.join(root, "a")) and not fs.isfile(os.path.join(root, "a"))
    assert fs.read_range(os.path.join(root, "a", "x.txt"), 4, 7) == b"two"
    path = os.path.join(root, "a", "x.txt")
    st = os.stat(path)
    assert fs.stat_key(path) == (st.st_size, str(int(st.st_mtime)))
    assert fs.read_text("file://" + path) == "one\ntwo\n"
    assert not os.path.exists(path + f".tmp{os.getpid()}")  # the atomic write left no temporary


def test_url_helpers_join_dirname_basename():
    assert fs.is_url("s3://b/k") and fs.is_url("gs://b") and not fs.is_url("file:///x") and not fs.is_url("/x")
    assert fs.join("s3://b/", "p/", "/f.txt") == "s3://b/p/f.txt"
    assert fs.dirname("gs://b/p/f.txt") == "gs://b/p" and fs.basename("gs://b/p/f.txt") == "f.txt"


# --- the same API against S3 ----------------------------------------------------------------------
def test_s3_glob_isdir_listdir_and_roundtrip(s3):
    for key in ("pubmed/a.xml.gz", "pubmed/sub/b.xml.gz", "pubmed/c1.txt", "pubmed/c22.txt", "top.xml.gz"):
        s3.put(key, key.encode())
    assert fs.glob(s3.url("**/*.xml.gz")) == [s3.url("pubmed/a.xml.gz"), s3.url("pubmed/sub/b.xml.gz"),
                                              s3.url("top.xml.gz")]
    assert fs.glob(s3.url("pubmed/**/*.xml.gz")) == [s3.url("pubmed/a.xml.gz"), s3.url("pubmed/sub/b.xml.gz")]
    assert fs.glob(s3.url("pubmed/c?.txt")) == [s3.url("pubmed/c1.txt")]
    assert fs.glob(s3.url("pubmed/c1.txt")) == [s3.url("pubmed/c1.txt")]  # no wildcard: the object itself
    assert fs.glob(s3.url("pubmed/*.csv")) == []
    assert fs.isdir(s3.url("pubmed")) and fs.isdir(s3.url("pubmed/")) and fs.isdir(s3.url("pubmed/sub"))
    assert not fs.isdir(s3.url("nothing-here")) and not fs.isdir(s3.url("pubmed/a.xml.gz"))
    assert fs.isfile(s3.url("pubmed/a.xml.gz")) and not fs.isfile(s3.url("pubmed"))
    assert fs.exists(s3.url("top.xml.gz")) and not fs.exists(s3.url("top.xml"))
    assert fs.listdir(s3.url("pubmed")) == ["a.xml.gz", "c1.txt", "c22.txt", "sub"]

    url = s3.url("out/table.json")
    fs.write_text(url, '{"a": 1}\n')
    assert fs.read_text(url) == '{"a": 1}\n' and fs.size(url) == 9
    with fs.open(s3.url("out/lines.txt"), "w") as f:
        f.write("first\nsecond\n")
    with fs.open(s3.url("out/lines.txt"), "r") as f:
        assert f.readlines() == ["first\n", "second\n"]
    assert list(fs.iter_lines(s3.url("out/lines.txt"))) == ["first\n", "second\n"]
    fs.remove(url)
    assert not fs.exists(url)


def test_s3_put_get_and_local_copy(s3, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(BLOB)
    fs.put_file(str(src), s3.url("blobs/b.bin"))
    dst = tmp_path / "got.bin"
    fs.get_file(s3.url("blobs/b.bin"), str(dst))
    assert dst.read_bytes() == BLOB
    copied = fs.local_copy(s3.url("blobs/b.bin"), str(tmp_path / "dir"))
    assert copied == str(tmp_path / "dir" / "b.bin") and open(copied, "rb").read() == BLOB
    assert fs.local_copy(str(src), str(tmp_path / "dir")) == str(src)  # local: itself, no copy


def test_s3_stat_key_changes_when_the_object_is_rewritten(s3):
    url = s3.put("k.txt", b"same size A")
    first = fs.stat_key(url)
    assert first[0] == 11 and first[1]
    assert fs.stat_key(url) == first
    s3.put("k.txt", b"same size B")
    assert fs.stat_key(url)[0] == 11 and fs.stat_key(url) != first


def test_s3_ranged_streaming_reads_many_blocks(s3, fault_proxy, monkeypatch):
    monkeypatch.setattr(fs, "_READ_BLOCK", 1024)
    url = s3.put("big.bin", BLOB)
    with fs.open(url, "rb") as f:
        assert f.read(10) == BLOB[:10]
        f.seek(5000)
        assert f.read(3000) == BLOB[5000:8000]
        f.seek(0)
        before = len(fault_proxy.log)
        assert f.read() == BLOB
        gets = [p for m, p, what in fault_proxy.log[before:] if m == "GET"]
        assert len(gets) == 11  # one ranged GET per 1 KiB block: neither one huge GET nor 8 KiB ones
        f.seek(0)
        before = len(fault_proxy.log)
        assert f.read(4000) == BLOB[:4000]
        assert len(fault_proxy.log) - before == 4  # read(n) is cut into blocks too
    assert fs.read_range(url, 1000, 1010) == BLOB[1000:1010]
    with pytest.raises(fs.StorageError, match=r"big\.bin \[10000:20000\]: got 244 bytes"):
        fs.read_range(url, 10000, 20000)


def test_s3_text_mode_lines_across_block_boundaries(s3, monkeypatch):
    monkeypatch.setattr(fs, "_READ_BLOCK", 64)
    text = "".join(f"line {i} é ü {'x' * (i % 17)}\n" for i in range(200))  # multi-byte chars cross blocks
    url = s3.put("t.txt", text.encode("utf-8"))
    assert list(fs.iter_lines(url)) == text.splitlines(keepends=True)


# --- faults: retried to identical bytes, or a clear error naming the URL ----------------------------
@pytest.mark.parametrize("kind", ["500", "drop", "reset"])
def test_faults_on_gets_are_retried_to_identical_bytes(s3, fault_proxy, monkeypatch, kind):
    monkeypatch.setattr(fs, "_READ_BLOCK", 1024)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # botocore retries once, then fs.with_retries
    url = s3.put("big.bin", BLOB)
    fault_proxy.inject(kind, method="GET", count=6, every=2, path_contains="big.bin")
    with fs.open(url, "rb") as f:
        assert f.read() == BLOB
    assert fs.read_bytes(url) == BLOB
    assert fault_proxy.injected == 6


def test_faults_on_listing_and_stat_are_retried(s3, fault_proxy, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3.put("d/a.txt", b"a")
    fault_proxy.inject("500", method="GET", count=2, path_contains="list-type")
    fault_proxy.inject("reset", method="HEAD", count=2)
    assert fs.glob(s3.url("d/*.txt")) == [s3.url("d/a.txt")]
    assert fs.size(s3.url("d/a.txt")) == 1
    assert fault_proxy.injected == 4


def test_a_fault_that_never_ends_is_an_error_naming_the_url(s3, fault_proxy, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("MELLAMA_FS_RETRIES", "3")
    url = s3.put("x.bin", b"0123456789")
    fault_proxy.inject("500", method="GET", count=None)
    with pytest.raises(fs.StorageError, match=rf"{url}: read: still failing after 3 attempts: OSError"):
        fs.read_bytes(url)
    assert fault_proxy.injected == 3


def _raw_error(call):
    """The exception the client library raises (no fs.with_retries around it)."""
    with pytest.raises(Exception) as info:
        call()
    return info.value


def test_transient_classification_on_the_exceptions_the_clients_raise(s3, fault_proxy, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    url = s3.put("c.bin", BLOB)
    s3fs = fs._filesystem(url)
    key = url[len("s3://"):]
    seen = {}
    # Unlimited faults, cleared after each: the HTTP stack silently retries a request once on a
    # pooled connection that was reset.
    for kind, method, call in (("500", "GET", lambda: s3fs.cat_file(key)),
                               ("drop", "GET", lambda: s3fs.cat_file(key)),
                               ("reset", "GET", lambda: s3fs.cat_file(key, start=0, end=10)),
                               ("500", "HEAD", lambda: s3fs.info(key)),
                               ("403", "GET", lambda: s3fs.cat_file(key))):
        fault_proxy.inject(kind, method=method, count=None)
        seen[kind if method == "GET" else f"{kind} head"] = _raw_error(call)
        fault_proxy.clear()
    seen["missing"] = _raw_error(lambda: s3fs.cat_file(key + ".nope"))
    seen["no bucket"] = _raw_error(lambda: s3fs.cat_file("no-such-bucket-zz/k"))
    names = {k: type(v).__name__ for k, v in seen.items()}
    assert names == {"500": "OSError", "drop": "ClientPayloadError", "reset": "ConnectionClosedError",
                     "500 head": "OSError", "403": "PermissionError", "missing": "FileNotFoundError",
                     "no bucket": "FileNotFoundError"}, names
    transient = {k: fs._is_transient(v) for k, v in seen.items()}
    assert transient == {"500": True, "drop": True, "reset": True, "500 head": True, "403": False,
                         "missing": False, "no bucket": False}
    assert fs._error_code(seen["403"]) == "InvalidAccessKeyId"
    assert fs._error_code(seen["no bucket"]) == "NoSuchBucket"


def test_gcsfs_answers_are_classified_by_their_status():
    """gcsfs raises its own HttpError (with the status) and OSError("Forbidden: ...") for a 403."""
    from gcsfs.retry import HttpError, validate_response
    raised = {}
    for status in (401, 403, 429, 500, 503):
        try:
            validate_response(status, b'{"error": {"message": "x"}}', "b/k")
        except Exception as err:  # noqa: BLE001 - the types gcsfs raises are what is checked
            raised[status] = err
    assert isinstance(raised[401], HttpError) and isinstance(raised[503], HttpError)
    assert str(raised[403]).startswith("Forbidden")
    assert {s: fs._is_transient(e) for s, e in raised.items()} == {401: False, 403: False, 429: True,
                                                                   500: True, 503: True}
    assert "check the credentials (GOOGLE_APPLICATION_CREDENTIALS" in fs._describe("gs://b/k: read", raised[403])


def test_missing_object_and_bucket_name_the_url(s3):
    with pytest.raises(fs.StorageError, match=rf"^{s3.url('nope.txt')}: read: no such object$"):
        fs.read_bytes(s3.url("nope.txt"))
    with pytest.raises(fs.StorageError, match=rf"^{s3.url('nope.txt')}: no such object$"):
        fs.size(s3.url("nope.txt"))
    with pytest.raises(fs.StorageError, match=r"^s3://no-such-bucket-zz/\*\.gz: no such bucket s3://no-such-bucket-zz$"):
        fs.glob("s3://no-such-bucket-zz/*.gz")
    with pytest.raises(fs.StorageError, match=r"^s3://no-such-bucket-zz/a: read: no such bucket$"):
        fs.read_bytes("s3://no-such-bucket-zz/a")
    with pytest.raises(fs.StorageError, match=r"nope\.bin \[0:4\]: no such object"):
        fs.read_range(s3.url("nope.bin"), 0, 4)
    with pytest.raises(fs.StorageError, match=r"nope\.bin: no such object"):
        fs.open(s3.url("nope.bin"), "rb")
    assert issubclass(fs.StorageError, OSError)


def test_wrong_credentials_name_the_url_and_hint_at_credentials(s3_auth, monkeypatch):
    s3_auth.use(monkeypatch, good=True)
    url = s3_auth.url("data/a.txt")
    assert fs.read_bytes(url) == b"alpha\nbeta\n"
    s3_auth.use(monkeypatch, good=False)
    for call, what in ((lambda: fs.read_bytes(url), f"{url}: read"),
                       (lambda: fs.size(url), f"{url}: stat"),
                       (lambda: fs.glob(s3_auth.url("data/*.txt")), f"{s3_auth.url('data/*.txt')}: list")):
        with pytest.raises(fs.StorageError) as info:
            call()
        msg = str(info.value)
        assert msg.startswith(f"{what}: access refused (") and "check the credentials (AWS_ACCESS_KEY_ID" in msg
        assert "wrong-secret" not in msg
    # A refused key is permanent: raised at the first attempt, not retried.
    with pytest.raises(fs.StorageError) as info:
        fs.read_bytes(url)
    assert not fs._is_transient(info.value.__cause__)


def test_gcs_emulator_roundtrip_glob_and_missing(gcs):
    gcs.put("corpus/a.txt", "alpha\n")
    gcs.put("corpus/sub/b.txt", "beta\n")
    assert fs.glob(gcs.url("corpus/**/*.txt")) == [gcs.url("corpus/a.txt"), gcs.url("corpus/sub/b.txt")]
    assert fs.read_text(gcs.url("corpus/sub/b.txt")) == "beta\n"
    assert fs.read_range(gcs.url("corpus/a.txt"), 1, 4) == b"lph"
    assert fs.isdir(gcs.url("corpus")) and fs.listdir(gcs.url("corpus")) == ["a.txt", "sub"]
    before = fs.stat_key(gcs.url("corpus/a.txt"))
    gcs.put("corpus/a.txt", "ALPHA\n")
    assert fs.stat_key(gcs.url("corpus/a.txt")) != before
    with pytest.raises(fs.StorageError, match=rf"^{gcs.url('corpus/none.txt')}: read: no such object$"):
        fs.read_bytes(gcs.url("corpus/none.txt"))
    with pytest.raises(fs.StorageError, match=r"^gs://no-such-bucket-zz/\*\.txt: no such bucket gs://no-such-bucket-zz$"):
        fs.glob("gs://no-such-bucket-zz/*.txt")
