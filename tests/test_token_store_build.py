"""Building token stores: the serial builder and the Beam command equal today's in-process
tokenization (token_cache, reader="direct", one process) document for document and report for
report; a store built by 1 Beam worker equals one built by 2, byte for byte; a build killed half
way leaves no manifest, is refused, and a rerun completes it; foreign directories are refused; a
store in an S3 bucket (moto on the loopback) equals the local one."""
from __future__ import annotations

import gzip
import io
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mellama_jax import fs
from mellama_jax.data.clinical.dedup import DedupConfig, Deduplicator
from mellama_jax.data.config import SAMPLES_DIR, demo_data_config, source_config
from mellama_jax.data.sources.report import DataError
from mellama_jax.data.store import build
from mellama_jax.data.store.format import (MANIFEST, check_store_source, part_path, read_manifest, shard_paths,
                                           split_rule_sha256)
from mellama_jax.data.token_cache import load_source_tokens
from mellama_jax.tokenizer import load_tokenizer

from storage_servers import s3, s3_server  # noqa: E402,F401  (pytest fixtures: moto on the loopback)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(SAMPLES_DIR, "tokenizer.model")
WORDS = ("patient fever cough aspirin warfarin cancer cell death signaling growth pain chest test treatment "
         "drug effect mechanism abstract note diagnosis pneumonia infarction myocardial acute heart failure "
         "sepsis kidney liver dose trial cohort outcome risk score blood pressure glucose insulin").split()


def _text(rng: random.Random, n: int = 60) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def _pubmed(articles: list[tuple[str, str]]) -> str:
    body = "".join(
        f"<PubmedArticle><MedlineCitation>{f'<PMID>{pmid}</PMID>' if pmid else ''}<Article>"
        f"<ArticleTitle>Title {pmid or 'none'}</ArticleTitle><Abstract><AbstractText>{text}</AbstractText>"
        f"</Abstract></Article></MedlineCitation></PubmedArticle>" for pmid, text in articles)
    return f'<?xml version="1.0"?><PubmedArticleSet>{body}</PubmedArticleSet>'


def write_corpus(root: str) -> dict:
    """Three sources over 7 files: jsonl (an excluded id, an exact and a near duplicate across files,
    a malformed line), text paragraphs (a paragraph repeated in another file), PubMed XML (.xml and
    .xml.gz, an article without a PMID)."""
    rng = random.Random(0)
    os.makedirs(os.path.join(root, "web"))
    os.makedirs(os.path.join(root, "notes"))
    os.makedirs(os.path.join(root, "pubmed"))
    web = [[{"id": f"w{f}-{i}", "text": _text(rng)} for i in range(12)] for f in range(3)]
    web[1][3]["text"] = web[0][2]["text"]                           # exact duplicate, next file
    near = web[0][5]["text"].split()
    near[7] = "zebra"
    web[2][4]["text"] = " ".join(near)                              # near duplicate, two files on
    web[2][6]["text"] = web[2][1]["text"].upper()                   # exact after normalisation
    for f, docs in enumerate(web):
        lines = [json.dumps(d) for d in docs]
        if f == 1:
            lines.insert(5, '{"id": "broken", "text": ')            # a malformed line
        with open(os.path.join(root, "web", f"part-{f}.jsonl"), "w") as fh:
            fh.write("\n".join(lines) + "\n")
    with open(os.path.join(root, "exclude.txt"), "w") as fh:
        fh.write("# decontaminated\nw0-4\nw2-9\n")
    paras = [[_text(rng, 30) for _ in range(6)] for _ in range(2)]
    paras[1][2] = paras[0][0]
    for f, ps in enumerate(paras):
        with open(os.path.join(root, "notes", f"n{f}.txt"), "w") as fh:
            fh.write("\n\n".join(ps) + "\n")
    arts = [(str(1000 + i), _text(rng, 40)) for i in range(8)]
    with open(os.path.join(root, "pubmed", "a.xml"), "w") as fh:
        fh.write(_pubmed(arts[:4] + [("", "no pmid here")]))
    with gzip.open(os.path.join(root, "pubmed", "b.xml.gz"), "wt") as fh:
        fh.write(_pubmed(arts[4:] + [("1001", arts[1][1])]))
    return {"root": root, "exclude": os.path.join(root, "exclude.txt")}


def make_config(tmp_path, corpus: dict, dedup: str = "near", max_bad_fraction: float = 0.3):
    c = demo_data_config()
    c.data_dir = str(tmp_path / "data")
    c.reader = "direct"
    c.cache_tokenized = False
    c.tokenize_threads = 1
    c.max_bad_fraction = max_bad_fraction
    r = corpus["root"]
    c.sources = {
        "web": source_config([os.path.join(r, "web", "*.jsonl")], "jsonl", eval_fraction=0.3, dedup=dedup,
                             exclude_ids=corpus["exclude"]),
        "notes": source_config([os.path.join(r, "notes", "*.txt")], "text", eval_fraction=0.25,
                               text_split="paragraph", dedup=dedup),
        "pubmed": source_config([os.path.join(r, "pubmed", "*")], "pubmed_xml", eval_fraction=0.3, dedup=dedup),
    }
    c.mixture = {"web": 1.0, "notes": 1.0, "pubmed": 1.0}
    return c


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(str(tmp_path_factory.mktemp("corpus")))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TOKENIZER)


def store_docs(store: str, manifest: dict, source: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A source's split as one (tokens, offsets) pair: its shards concatenated in file order."""
    tokens, offsets, base = [], [np.zeros(1, np.int64)], 0
    for shard in manifest["sources"][source]["shards"]:
        tp, op = shard_paths(store, source, split, shard)
        t, o = np.load(io.BytesIO(fs.read_bytes(tp))), np.load(io.BytesIO(fs.read_bytes(op)))
        assert t.dtype == np.int32 and o.dtype == np.int64 and o[0] == 0 and o[-1] == len(t)
        tokens.append(t)
        offsets.append(o[1:] + base)
        base += len(t)
    return np.concatenate(tokens), np.concatenate(offsets)


def store_files(store: str, manifest: dict) -> dict[str, bytes]:
    """Every shard and part record a manifest names, by relative path, plus the manifest without
    its `created` and `builder` fields."""
    out = {}
    for name, entry in manifest["sources"].items():
        for shard in entry["shards"]:
            for split in ("train", "eval"):
                for p in shard_paths(store, name, split, shard):
                    out[p[len(store):]] = fs.read_bytes(p)
            out[part_path(store, name, shard)[len(store):]] = fs.read_bytes(part_path(store, name, shard))
    m = json.loads(fs.read_text(fs.join(store, MANIFEST)))
    m.pop("created")
    m.pop("builder")
    out["manifest"] = json.dumps(m, sort_keys=True).encode()
    return out


def local_tree(store: str) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), store) for d, _, fs_ in os.walk(store) for f in fs_}


def expected_tree(manifest: dict) -> set[str]:
    out = {"MANIFEST.json", "BUILDING.json"}
    for name, entry in manifest["sources"].items():
        for shard in entry["shards"]:
            out |= {f"{name}/{split}/{shard}.{kind}.npy" for split in ("train", "eval") for kind in ("tokens", "offsets")}
            out.add(f"{name}/parts/{shard}.json")
    return out


# --- dedup: keys/decide is check ---------------------------------------------------------------------------
def test_dedup_keys_then_decide_is_check():
    rng = random.Random(1)
    texts = [_text(rng) for _ in range(30)]
    texts += [texts[3], texts[7].upper(), " ".join(texts[9].split()[:-1] + ["zebra"])]
    rng.shuffle(texts)
    for near in (False, True):
        a, b = Deduplicator(DedupConfig(near=near)), Deduplicator(DedupConfig(near=near))
        keys = [b.keys(t) for t in texts]  # all keys first (as parallel workers would), then decide
        want = [a.check(t) for t in texts]
        assert [b.decide(k) for k in keys] == want
        assert want.count("exact_duplicate") == 2 and want.count("near_duplicate") == (1 if near else 0)
        assert a.stats() == b.stats()


# --- the serial builder equals today's in-process path -------------------------------------------------------
@pytest.mark.parametrize("dedup", ["none", "exact", "near"])
def test_serial_build_equals_in_process_tokens_and_reports(tmp_path, corpus, tokenizer, dedup):
    cfg = make_config(tmp_path, corpus, dedup)
    store = str(tmp_path / "store")
    manifest = build.build_store_serial(cfg, tokenizer, store)
    assert read_manifest(store) == manifest
    assert local_tree(store) == expected_tree(manifest)
    assert manifest["sources"]["web"]["shards"] == ["00000", "00001", "00002"]
    for name in ("web", "notes", "pubmed"):
        docs, report = load_source_tokens(name, cfg, tokenizer, 0, 1)
        entry = manifest["sources"][name]
        assert entry["report"] == report.to_dict()
        assert entry["split_sha256"] == split_rule_sha256(name, cfg.sources[name])
        for split in ("train", "eval"):
            tokens, offsets = store_docs(store, manifest, name, split)
            assert np.array_equal(tokens, np.asarray(docs[split].tokens))
            assert np.array_equal(offsets, np.asarray(docs[split].offsets))
            assert entry["splits"][split]["docs"] == docs[split].num_docs > 0
            assert sum(entry["splits"][split]["shard_tokens"]) == docs[split].num_tokens
    dropped = manifest["sources"]["web"]["report"]["dropped"]
    assert dropped.get("excluded_id") == 2
    assert dropped.get("exact_duplicate", 0) == (2 if dedup != "none" else 0)
    assert dropped.get("near_duplicate", 0) == (1 if dedup == "near" else 0)
    assert manifest["sources"]["web"]["report"]["bad"] == {"malformed_json": 1}
    assert manifest["sources"]["pubmed"]["report"]["bad"] == {"missing_field": 1}
    assert manifest["sources"]["pubmed"]["report"]["dropped"].get("exact_duplicate", 0) == (dedup != "none")
    assert manifest["tokenizer"] == {"sha256": tokenizer.sha256(), "vocab_size": tokenizer.vocab_size,
                                     "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id}


def test_serial_build_killed_half_way_is_refused_then_resumed(tmp_path, corpus, tokenizer, monkeypatch):
    cfg = make_config(tmp_path, corpus)
    store, clean = str(tmp_path / "store"), str(tmp_path / "clean")
    real = build.tokenize_file
    calls = []

    def dies_after_first(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(build, "tokenize_file", dies_after_first)
    with pytest.raises(KeyboardInterrupt):
        build.build_store_serial(cfg, tokenizer, store)
    monkeypatch.setattr(build, "tokenize_file", real)
    assert not os.path.exists(os.path.join(store, MANIFEST))
    with pytest.raises(DataError, match=rf"{store}/MANIFEST.json missing.*incomplete.*rerun the build"):
        read_manifest(store)
    first = part_path(store, "notes", 0)  # sources build in name order: notes is first
    assert os.path.isfile(first) and not os.path.exists(part_path(store, "notes", 1))
    before = os.stat(first).st_mtime_ns
    manifest = build.build_store_serial(cfg, tokenizer, store)  # the rerun completes it ...
    assert os.stat(first).st_mtime_ns == before                 # ... without redoing the finished file
    assert store_files(store, manifest) == store_files(clean, build.build_store_serial(cfg, tokenizer, clean))
    assert local_tree(store) == expected_tree(manifest)


def test_refuses_foreign_complete_and_other_builds(tmp_path, corpus, tokenizer):
    cfg = make_config(tmp_path, corpus, dedup="none")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(build.StoreExistsError, match=r"1 entries this builder did not create \(notes.txt\)"):
            build.build_store_serial(cfg, tokenizer, str(foreign), overwrite=overwrite)
    assert os.listdir(foreign) == ["notes.txt"]

    store = str(tmp_path / "store")
    first = build.build_store_serial(cfg, tokenizer, store)
    with pytest.raises(build.StoreExistsError, match="complete already.*--overwrite"):
        build.build_store_serial(cfg, tokenizer, store)
    os.remove(os.path.join(store, MANIFEST))  # as if interrupted, then rerun with another config
    other = make_config(tmp_path, corpus, dedup="none")
    other.sources["web"].eval_fraction = 0.5
    spec = build.spec_sha256(build.source_dicts(other), tokenizer.sha256())
    with pytest.raises(build.StoreExistsError, match=rf"another build \(spec sha256 [0-9a-f]{{64}}, this build's is {spec}"):
        build.build_store_serial(other, tokenizer, store)
    second = build.build_store_serial(other, tokenizer, store, overwrite=True)
    assert second["sources"]["web"]["split_sha256"] != first["sources"]["web"]["split_sha256"]
    assert local_tree(store) == expected_tree(second)


def test_too_much_bad_input_writes_no_manifest(tmp_path, corpus, tokenizer):
    cfg = make_config(tmp_path, corpus, dedup="none", max_bad_fraction=0.0)
    store = str(tmp_path / "store")
    with pytest.raises(DataError, match=r"source 'pubmed': 1 of 10 items were bad"):
        build.build_store_serial(cfg, tokenizer, store)
    assert not os.path.exists(os.path.join(store, MANIFEST))


def test_store_checks_name_both_hashes(tmp_path, corpus, tokenizer):
    cfg = make_config(tmp_path, corpus, dedup="none")
    store = str(tmp_path / "store")
    manifest = build.build_store_serial(cfg, tokenizer, store, sources=["notes"])
    assert list(manifest["sources"]) == ["notes"]
    src = cfg.sources["notes"]
    check_store_source(manifest, "notes", src, tokenizer.sha256(), store)
    with pytest.raises(DataError, match=rf"tokenizer sha256 {tokenizer.sha256()}, but this run's tokenizer has sha256 f00d"):
        check_store_source(manifest, "notes", src, "f00d", store)
    changed = dict(src.to_dict(), eval_fraction=0.5)
    want = split_rule_sha256("notes", changed)
    with pytest.raises(DataError, match=rf"'notes' was built with split/filter sha256 "
                                        rf"{manifest['sources']['notes']['split_sha256']}, but .* gives {want}"):
        check_store_source(manifest, "notes", changed, tokenizer.sha256(), store)
    with pytest.raises(DataError, match=r"has no source 'web'"):
        check_store_source(manifest, "web", cfg.sources["web"], tokenizer.sha256(), store)
    # exclude_ids counts by content, not by path
    copy = tmp_path / "copy.txt"
    copy.write_bytes(open(corpus["exclude"], "rb").read())
    web = cfg.sources["web"].to_dict()
    assert split_rule_sha256("web", dict(web, exclude_ids=str(copy))) == split_rule_sha256("web", web)
    copy.write_text("w0-4\n")
    assert split_rule_sha256("web", dict(web, exclude_ids=str(copy))) != split_rule_sha256("web", web)


def test_read_manifest_refuses_other_formats(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "mellama-token-store", "version": 2}))
    with pytest.raises(DataError, match=r"MANIFEST.json: format 'mellama-token-store' version 2; expected .* version 1"):
        read_manifest(str(tmp_path))


# --- S3 ------------------------------------------------------------------------------------------------------
def test_store_in_s3_equals_local(tmp_path, corpus, tokenizer, s3):
    cfg = make_config(tmp_path, corpus, dedup="exact")
    local = build.build_store_serial(cfg, tokenizer, str(tmp_path / "store"))
    url = s3.url("stores/a")
    remote = build.build_store_serial(cfg, tokenizer, url)
    assert read_manifest(url) == remote
    assert store_files(url, remote) == store_files(str(tmp_path / "store"), local)
    with pytest.raises(build.StoreExistsError, match=rf"token store {url} is complete already"):
        build.build_store_serial(cfg, tokenizer, url)


# --- Beam ------------------------------------------------------------------------------------------------------
def test_beam_direct_runner_equals_serial(tmp_path, corpus, tokenizer, monkeypatch):
    from mellama_jax.cli.beam_store import run_beam

    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # run_beam extends it
    cfg = make_config(tmp_path, corpus, dedup="near")
    serial = build.build_store_serial(cfg, tokenizer, str(tmp_path / "serial"))
    store = str(tmp_path / "beam")
    manifest = run_beam(cfg, tokenizer, store, ["--runner", "DirectRunner", "--direct_num_workers", "1"], command="t")
    assert manifest["builder"] == {"command": "t", "runner": "DirectRunner", "workers": 1}
    assert store_files(store, manifest) == store_files(str(tmp_path / "serial"), serial)
    assert local_tree(store) == expected_tree(manifest)


def _cli(store: str, corpus: dict, *beam_args: str, env: dict | None = None, serial: bool = False,
         **popen) -> subprocess.Popen:
    r = corpus["root"]
    spec = (f"web=jsonl:{r}/web/*.jsonl;notes=text:{r}/notes/*.txt;pubmed=pubmed_xml:{r}/pubmed/*")
    cmd = [sys.executable, "-m", "mellama_jax.cli.tokenize_beam", "--config", "configs/pretrain.py:demo",
           "--sources_spec", spec, "--config.data.max_bad_fraction=0.3",
           "--config.data.sources.web.eval_fraction=0.3", "--config.data.sources.web.dedup=near",
           f"--config.data.sources.web.exclude_ids={corpus['exclude']}",
           "--config.data.sources.notes.eval_fraction=0.25", "--config.data.sources.notes.text_split=paragraph",
           "--config.data.sources.notes.dedup=near", "--config.data.sources.pubmed.eval_fraction=0.3",
           "--config.data.sources.pubmed.dedup=near", "--output", store]
    cmd += ["--serial"] if serial else ["--", "--runner", "DirectRunner", *beam_args]
    env = dict(os.environ, **(env or {}))
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def test_cli_serial_build_and_refusal(tmp_path, corpus, tokenizer):
    """The command line as README gives it (flags, --sources_spec, --config.data.* overrides, exit
    codes); --serial keeps it fast."""
    store = str(tmp_path / "cli")
    os.makedirs(store)
    open(os.path.join(store, "x.bin"), "w").close()
    proc = _cli(store, corpus, serial=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "1 entries this builder did not create (x.bin)" in out
    os.remove(os.path.join(store, "x.bin"))
    proc = _cli(store, corpus, serial=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    serial = build.build_store_serial(make_config(tmp_path, corpus), tokenizer, str(tmp_path / "serial"))
    docs = sum(s["splits"][sp]["docs"] for s in serial["sources"].values() for sp in ("train", "eval"))
    assert f"tokenize_beam: 3 sources, 7 files, {docs} documents" in out and "serial, 1 worker(s)" in out
    assert store_files(store, read_manifest(store)) == store_files(str(tmp_path / "serial"), serial)


_MULTI = ("--direct_num_workers", "2", "--direct_running_mode", "multi_processing")


@pytest.mark.slow
def test_beam_two_worker_processes_equal_one_and_serial(tmp_path, corpus, tokenizer):
    serial = build.build_store_serial(make_config(tmp_path, corpus), tokenizer, str(tmp_path / "serial"))
    want = store_files(str(tmp_path / "serial"), serial)
    for workers in ("1", "2"):
        store = str(tmp_path / f"beam{workers}")
        proc = _cli(store, corpus, "--direct_num_workers", workers, "--direct_running_mode", "multi_processing")
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
        assert f"3 sources, 7 files, {sum(s['splits'][sp]['docs'] for s in serial['sources'].values() for sp in ('train', 'eval'))} documents" in out
        manifest = read_manifest(store)
        assert manifest["builder"]["workers"] == int(workers)
        assert store_files(store, manifest) == want


_SLOW_AFTER_FIRST = """
import time
from mellama_jax.data.store import build
_real, _calls = build.tokenize_file, []
def _slow(*a, **k):  # each worker process finishes one file, then stalls until it is killed
    if _calls:
        time.sleep(600)
    _calls.append(1)
    return _real(*a, **k)
build.tokenize_file = _slow
"""


@pytest.mark.slow
def test_beam_run_killed_half_way_leaves_no_manifest_and_a_rerun_completes_it(tmp_path, corpus, tokenizer):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_SLOW_AFTER_FIRST)  # every worker process loads it
    store = str(tmp_path / "beam")
    proc = _cli(store, corpus, *_MULTI, env={"PYTHONPATH": f"{hook}{os.pathsep}{ROOT}"}, start_new_session=True)
    try:
        deadline = time.time() + 300
        parts = [part_path(store, s, i) for s, n in (("web", 3), ("notes", 2), ("pubmed", 2)) for i in range(n)]
        while not any(os.path.exists(p) for p in parts):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.time() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its worker processes (their own session)
        proc.wait()
    assert not os.path.exists(os.path.join(store, MANIFEST))
    with pytest.raises(DataError, match="MANIFEST.json missing.*incomplete"):
        read_manifest(store)
    done = [p for p in parts if os.path.exists(p)]
    assert 1 <= len(done) < 7
    stamps = {p: os.stat(p).st_mtime_ns for p in done}
    rerun = _cli(store, corpus, *_MULTI)
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, out[-3000:]
    assert {p: os.stat(p).st_mtime_ns for p in done} == stamps  # finished files were not redone
    manifest = read_manifest(store)
    serial = build.build_store_serial(make_config(tmp_path, corpus), tokenizer, str(tmp_path / "serial"))
    assert store_files(store, manifest) == store_files(str(tmp_path / "serial"), serial)
    assert local_tree(store) == expected_tree(manifest)
