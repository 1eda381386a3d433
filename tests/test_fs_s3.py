"""Sources, exclusion lists, tokenizers and benchmark files in a bucket read exactly as from local disk.

Against a real S3 server on the loopback (moto) and a proxy that injects 500s and dropped
connections: the batches of the training pipeline are bit-identical to the local run, faults are
retried (and counted), and a missing object, bucket or credential ends in an error naming the URL.
"""
import gzip
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import eval_fixtures as F  # noqa: E402
from storage_servers import fault_proxy, gcs, gcs_server, s3, s3_auth, s3_server  # noqa: E402,F401

from mellama_jax import fs  # noqa: E402
from mellama_jax.data.config import SAMPLES_DIR, demo_data_config  # noqa: E402
from mellama_jax.data.pipeline import build_train_pipeline  # noqa: E402
from mellama_jax.data.sources.report import DataError  # noqa: E402
from mellama_jax.eval.tasks import TASKS, resolve_path  # noqa: E402
from mellama_jax.eval.tasks.ner import load_i2b2  # noqa: E402
from mellama_jax.tokenizer import load_tokenizer  # noqa: E402

KEYS = ("inputs", "targets", "positions", "segment_ids", "loss_mask", "source_ids")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6


def _corpus(tmp_path) -> str:
    """The demo sources (PubMed XML and .xml.gz, PMC JSONL and text, MIMIC-style CSV, general JSONL)
    and an exclusion list, in one local tree that is uploaded as it is."""
    root = tmp_path / "corpus"
    for sub in ("pubmed", "pmc", "clinical", "general"):
        shutil.copytree(os.path.join(SAMPLES_DIR, sub), root / sub)
    with open(root / "general" / "general_sample.jsonl", encoding="utf-8") as f:
        n_lines = sum(1 for _ in f)
    (root / "exclude_general.txt").write_text(
        "# two documents left out\n" + "".join(f"general_sample.jsonl:{i}\n" for i in (2, n_lines - 1)))
    return str(root)


def _cfg(root: str, data_dir: str):
    """demo_data_config with every source (and general's exclude_ids) under `root`, local or a URL."""
    c = demo_data_config()
    for src in c.sources.values():
        src.paths = tuple(fs.join(root, os.path.relpath(p, SAMPLES_DIR)) for p in src.paths)
    c.sources.general.exclude_ids = fs.join(root, "exclude_general.txt")
    c.data_dir = data_dir
    c.reader = "direct"
    c.seq_len = 64
    return c


def _batches(cfg, steps: int = STEPS) -> list[dict]:
    p = build_train_pipeline(cfg, global_batch_size=4, process_index=0, process_count=1)
    return [p.batch(s) for s in range(steps)], p


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for step, (x, y) in enumerate(zip(a, b)):
        for k in KEYS:
            assert np.array_equal(x[k], y[k]), f"step {step}: {k} differs"


@pytest.fixture
def local_run(tmp_path):
    root = _corpus(tmp_path)
    batches, pipe = _batches(_cfg(root, str(tmp_path / "local-data")))
    return root, batches, pipe


def test_sources_in_a_bucket_give_the_local_batches(s3, local_run, tmp_path, monkeypatch):
    root, local, local_pipe = local_run
    url = s3.upload_tree(root, "corpus")
    monkeypatch.setattr(fs, "_READ_BLOCK", 16 << 10)  # the larger files take several ranged GETs
    remote, pipe = _batches(_cfg(url, str(tmp_path / "remote-data")))
    _assert_same(local, remote)
    assert pipe.source_names == local_pipe.source_names == ["biomedical", "clinical", "general"]
    assert not local[0]["inputs"].tolist() == local[1]["inputs"].tolist()  # not vacuous


def test_faults_on_gets_are_retried_to_the_same_batches(s3, fault_proxy, local_run, tmp_path, monkeypatch):
    root, local, _ = local_run
    url = s3.upload_tree(root, "corpus")
    monkeypatch.setattr(fs, "_READ_BLOCK", 16 << 10)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # botocore retries once, then fs.with_retries
    fault_proxy.inject("500", method="GET", count=4, every=3, path_contains="/corpus/")
    fault_proxy.inject("drop", method="GET", count=4, every=4, path_contains="/corpus/")
    fault_proxy.inject("reset", method="HEAD", count=2, every=5, path_contains="/corpus/")
    remote, _ = _batches(_cfg(url, str(tmp_path / "remote-data")))
    _assert_same(local, remote)
    assert fault_proxy.injected == 10, fault_proxy.log
    assert all(f.fired == f.count for f in fault_proxy.faults)


def test_a_glob_matching_nothing_and_a_missing_bucket_name_the_url(s3, tmp_path):
    s3.put("corpus/general/a.jsonl", '{"text": "x"}\n')
    cfg = _cfg(s3.url("corpus"), str(tmp_path / "d"))
    cfg.sources.general.exclude_ids = ""
    pattern = s3.url("corpus/pubmed/*.xml*")
    with pytest.raises(DataError, match=re.escape(f"data.sources.biomedical.paths: glob '{pattern}' matches "
                                                  "no file")):
        build_train_pipeline(cfg, global_batch_size=4)
    cfg = _cfg("s3://no-such-bucket-zz/corpus", str(tmp_path / "d"))
    with pytest.raises(DataError, match=r"glob 's3://no-such-bucket-zz/corpus/pubmed/\*\.xml\*': "
                                        r".*no such bucket s3://no-such-bucket-zz"):
        build_train_pipeline(cfg, global_batch_size=4)


def test_a_missing_exclude_ids_object_names_the_url(s3, local_run, tmp_path):
    root, _, _ = local_run
    url = s3.upload_tree(root, "corpus")
    cfg = _cfg(url, str(tmp_path / "d"))
    cfg.sources.general.exclude_ids = s3.url("corpus/nope.txt")
    with pytest.raises((DataError, fs.StorageError), match=re.escape(s3.url("corpus/nope.txt"))):
        build_train_pipeline(cfg, global_batch_size=4)


def test_wrong_credentials_name_the_url(s3_auth, monkeypatch, tmp_path):
    s3_auth.use(monkeypatch, good=False)
    cfg = _cfg(s3_auth.url("corpus"), str(tmp_path / "d"))
    with pytest.raises(DataError, match=re.escape(f"glob '{s3_auth.url('corpus/pubmed/')}") + r".*access refused .*"
                                        r"check the credentials \(AWS_ACCESS_KEY_ID"):
        build_train_pipeline(cfg, global_batch_size=4)


def test_a_gzip_object_is_gunzipped_over_ranged_reads(s3, monkeypatch):
    from mellama_jax.data.sources.readers import open_binary
    text = "".join(f"line {i}\n" for i in range(3000)).encode()
    url = s3.put("z/t.txt.gz", gzip.compress(text))
    monkeypatch.setattr(fs, "_READ_BLOCK", 1024)
    with open_binary(url) as f:
        assert f.read() == text


def test_a_truncated_gzip_object_is_reported_like_a_local_one(s3, tmp_path):
    from mellama_jax.data.sources.readers import read_file
    from mellama_jax.data.sources.report import BadInputReport
    data = gzip.compress(b"".join(b'{"text": "document %d"}\n' % i for i in range(2000)))[:-400]
    local = tmp_path / "cut.jsonl.gz"
    local.write_bytes(data)
    url = s3.put("cut.jsonl.gz", data)
    src = {"format": "jsonl"}
    reports = {}
    for where, path in (("local", str(local)), ("remote", url)):
        reports[where] = BadInputReport("s")
        docs = list(read_file("s", src, path, reports[where]))
        reports[where] = (len(docs), reports[where].to_dict()["truncations"][0]["unread_fraction"])
    assert reports["local"] == reports["remote"] and reports["local"][0] > 0


def test_an_object_still_failing_after_the_retries_is_an_error_not_a_truncated_file(s3, fault_proxy,
                                                                                    monkeypatch):
    """fs.StorageError is an OSError, which the readers count as a corrupt gzip stream; it must not
    be counted (and, with allow_truncated, skipped): it is raised, naming the URL."""
    from mellama_jax.data.sources.readers import read_file
    from mellama_jax.data.sources.report import BadInputReport
    monkeypatch.setattr(fs, "_READ_BLOCK", 1024)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("MELLAMA_FS_RETRIES", "2")
    url = s3.put("g.jsonl.gz", gzip.compress(os.urandom(6000).hex().encode()))
    fault_proxy.inject("500", method="GET", count=None, path_contains="g.jsonl.gz")
    report = BadInputReport("s")
    report.allow_truncated = True
    with pytest.raises(fs.StorageError, match=re.escape(f"{url} [0:1024]: still failing after 2 attempts")):
        list(read_file("s", {"format": "jsonl"}, url, report))
    assert report.to_dict()["truncations"] == []


def test_a_prepared_clinical_corpus_in_a_bucket_reads_as_local(s3, tmp_path):
    """PREPARED.json read from the bucket: its shards, in its order, and a missing shard refused."""
    import io as _io
    from mellama_jax.data.prepare_clinical import prepare
    from mellama_jax.data.sources.readers import iter_documents
    from mellama_jax.data.sources.report import BadInputReport
    out = str(tmp_path / "prepared")
    prepare([os.path.join(SAMPLES_DIR, "clinical", "NOTEEVENTS_sample.csv")], out, log=_io.StringIO())
    url = s3.upload_tree(out, "prepared")
    docs = {}
    for where, path in (("local", out), ("s3", url)):
        src = {"paths": (path,), "format": "prepared_clinical", "require_prepared": True}
        docs[where] = list(iter_documents("clinical", src, BadInputReport("clinical")))
    assert docs["s3"] == docs["local"] and len(docs["local"]) > 5
    shard = next(n for n in sorted(os.listdir(out)) if n.startswith("notes-"))
    s3.client.delete_object(Bucket=s3.bucket, Key=f"prepared/{shard}")
    with pytest.raises(DataError, match=re.escape(f"{url}/PREPARED.json: shard files missing: ['{shard}']")):
        list(iter_documents("clinical", {"paths": (url,), "format": "prepared_clinical"}, BadInputReport("c")))


def test_a_tokenizer_in_a_bucket_is_the_local_one(s3, tmp_path):
    s3.put("tok/tokenizer.model", open(os.path.join(SAMPLES_DIR, "tokenizer.model"), "rb").read())
    s3.put("tok/tokenizer_config.json", open(os.path.join(SAMPLES_DIR, "tokenizer_config.json"), "rb").read())
    local = load_tokenizer(os.path.join(SAMPLES_DIR, "tokenizer.model"))
    for url in (s3.url("tok/tokenizer.model"), s3.url("tok"), s3.url("tok/")):
        remote = load_tokenizer(url)
        assert remote.sha256() == local.sha256() and not fs.is_url(remote.model_path)
        assert (remote.add_bos, remote.add_eos) == (local.add_bos, local.add_eos)
        assert remote.encode("Aspirin lowers fever.") == local.encode("Aspirin lowers fever.")
    with pytest.raises(FileNotFoundError, match=re.escape(f"{s3.url('empty')}: no tokenizer files")):
        load_tokenizer(s3.url("empty"))


def test_benchmark_files_in_a_bucket_load_as_local_ones(s3, tmp_path):
    local_dir = str(tmp_path / "bench")
    paths = F.write_all(local_dir)
    with open(paths["medqa"], "rb") as f:  # one gzipped file too
        (tmp_path / "gz").mkdir()
        (tmp_path / "gz" / "medqa.jsonl.gz").write_bytes(gzip.compress(f.read()))
    os.makedirs(os.path.join(local_dir, "i2b2_dir"))
    shutil.copy(paths["i2b2"], os.path.join(local_dir, "i2b2_dir", "record-1.xml"))
    url = s3.upload_tree(local_dir, "bench")
    for name, spec in TASKS.items():
        remote_path = resolve_path(spec, url, None)
        assert remote_path == fs.join(url, os.path.relpath(paths[name], local_dir))
        assert spec.load(remote_path) == spec.load(paths[name]), name
    gz = s3.put("gz/medqa.jsonl.gz", (tmp_path / "gz" / "medqa.jsonl.gz").read_bytes())
    assert TASKS["medqa"].load(gz) == TASKS["medqa"].load(str(tmp_path / "gz" / "medqa.jsonl.gz"))
    assert load_i2b2(fs.join(url, "i2b2_dir")) == load_i2b2(os.path.join(local_dir, "i2b2_dir"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_path(TASKS["medqa"], None, s3.url("bench/nope.jsonl"))


def test_a_parquet_benchmark_file_in_a_bucket(s3, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mellama_jax.eval.tasks.common import read_records
    table = pa.table({"question": ["q1", "q2"], "answer": ["a", "b"]})
    pq.write_table(table, tmp_path / "t.parquet")
    url = s3.put("p/t.parquet", (tmp_path / "t.parquet").read_bytes())
    assert list(read_records(url)) == list(read_records(str(tmp_path / "t.parquet")))


def test_a_source_in_the_gcs_emulator_reads_as_local(gcs, tmp_path):
    from mellama_jax.data.sources.readers import expand_paths, read_file
    from mellama_jax.data.sources.report import BadInputReport
    root = _corpus(tmp_path)
    url = gcs.upload_tree(root, "corpus")
    docs = {}
    for where, base in (("local", root), ("gcs", url)):
        files = expand_paths("b", [fs.join(base, "pubmed", "*.xml*"), fs.join(base, "pmc", "*")], "auto")
        assert [fs.basename(f) for f in files] == ["PMC9100001.txt", "PMC9100002.txt", "PMC9100003.txt",
                                                   "pmc_sample.jsonl", "pubmed_sample_0001.xml",
                                                   "pubmed_sample_0002.xml.gz"]
        docs[where] = [d for f in files for d in read_file("b", {"format": "auto"}, f, BadInputReport("b"))]
    assert docs["gcs"] == docs["local"] and len(docs["local"]) > 20


def test_launch_ends_with_one_line_naming_the_url_and_exit_4(s3, tmp_path):
    """The data error reaches launch.py as one line on stderr, not a traceback."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    missing = s3.url("corpus/nothing/*.jsonl")
    r = subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), "--config",
                        os.path.join(REPO, "configs", "pretrain.py") + ":demo", "--workdir", str(tmp_path / "w"),
                        f"--config.data.sources_spec=general=jsonl:{missing}:1.0", "--config.train.steps=1", "--config.optim.warmup_steps=0"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert r.returncode == 4, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("launch.py: ") and f"glob '{missing}' matches no file" in last, r.stderr[-2000:]
