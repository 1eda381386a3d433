"""Disk-backed token storage: .npy appends, memmapped caches, batches unchanged by the storage, old
.npz caches, and bounded memory while tokenizing a large synthetic source (measured in a subprocess)."""
import glob
import hashlib
import json
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mellama_jax.data.config import demo_data_config, source_config
from mellama_jax.data.pipeline import build_train_pipeline
from mellama_jax.data.sources.report import DataError
from mellama_jax.data.token_store import HEADER_BYTES, SplitWriter, load_split, split_files

KEYS = ("inputs", "targets", "positions", "segment_ids", "loss_mask", "source_ids")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# sha256[:16] of the batches below, produced by the pipeline BEFORE the token store existed (flat
# in-RAM arrays, commit 2b951d8) on the bundled demo corpus. If the demo samples or tokenizer are
# changed on purpose, regenerate them with the pre-change code, not with this one.
GOLDEN = {("concat", 32, 0, 1): "d5067c5047136f89", ("pack", 32, 0, 1): "01adab6107e017ec",
          ("concat", 128, 1, 2): "aa5f2fc75633d704", ("pack", 64, 1, 2): "770c6104790e1b96"}


def _cfg(data_dir, packing, seq_len, cache=True):
    c = demo_data_config()
    c.data_dir, c.reader, c.packing, c.seq_len, c.cache_tokenized = str(data_dir), "direct", packing, seq_len, cache
    return c


def _batches(p):
    out = [p.batch(s) for s in list(range(20)) + [300, 1000]]
    for n in p.source_names:
        out += p.eval_batches(n, 2)
    return out


def _digest(batches):
    h = hashlib.sha256()
    for b in batches:
        for k in KEYS:
            h.update(np.ascontiguousarray(b[k]).tobytes())
    return h.hexdigest()[:16]


def _is_file_backed(a):
    """True when `a` (or the array it views) is an np.memmap / mmap, not an in-RAM copy."""
    while a is not None:
        if isinstance(a, np.memmap) or type(a).__name__ == "mmap":
            return True
        a = getattr(a, "base", None)
    return False


# --------------------------------------------------------------------------------------------------
def test_split_writer_round_trip_and_header(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 32000, rng.integers(1, 50), dtype=np.int32) for _ in range(300)]
    w = SplitWriter(str(tmp_path), "train")
    for i in range(0, 300, 37):  # chunks of documents
        chunk = docs[i:i + 37]
        offs = np.concatenate([[0], np.cumsum([len(d) for d in chunk])])
        w.append(np.concatenate(chunk), offs)
    w.close()
    e = SplitWriter(str(tmp_path), "eval")  # an empty split
    e.close()
    tokens, offsets = load_split(str(tmp_path), "train")
    assert isinstance(tokens, np.memmap) and isinstance(offsets, np.memmap)
    assert tokens.dtype == np.int32 and offsets.dtype == np.int64
    assert np.array_equal(tokens, np.concatenate(docs))
    assert np.array_equal(offsets, np.concatenate([[0], np.cumsum([len(d) for d in docs])]))
    # Plain np.load (no mmap) reads the same files: they are ordinary .npy.
    assert np.array_equal(np.load(split_files(str(tmp_path), "train")[0]), np.concatenate(docs))
    et, eo = load_split(str(tmp_path), "eval")
    assert len(et) == 0 and eo.tolist() == [0]
    # The fixed-size header has room for any realistic length.
    from mellama_jax.data.token_store import _npy_header
    assert len(_npy_header(np.int32, 10**15)) == HEADER_BYTES == 128
    # A truncated token file is reported, not silently mis-read.
    path = split_files(str(tmp_path), "train")[0]
    raw = open(path, "rb").read()
    from mellama_jax.data.token_store import _npy_header as hdr
    with open(path, "wb") as f:
        f.write(hdr(np.int32, len(tokens) - 3) + raw[HEADER_BYTES:HEADER_BYTES + 4 * (len(tokens) - 3)])
    with pytest.raises(ValueError, match="offsets run 0..*truncated"):
        load_split(str(tmp_path), "train")


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_batches_identical_across_storage_and_to_pre_change_pipeline(tmp_path, key):
    packing, seq_len, host, count = key
    kw = dict(global_batch_size=4 * count, process_index=host, process_count=count)
    fresh = build_train_pipeline(_cfg(tmp_path / "d", packing, seq_len), **kw)        # builds the cache
    cached = build_train_pipeline(_cfg(tmp_path / "d", packing, seq_len), **kw)       # maps the cache
    uncached = build_train_pipeline(_cfg(tmp_path / "u", packing, seq_len, cache=False), **kw)
    a, b, c = _batches(fresh), _batches(cached), _batches(uncached)
    for x, y, z in zip(a, b, c):
        for k in KEYS:
            assert np.array_equal(x[k], y[k]) and np.array_equal(x[k], z[k]), k
    assert _digest(a) == GOLDEN[key]
    assert fresh.state() == cached.state() == uncached.state()
    assert fresh.stats().keys() == cached.stats().keys()
    # The cache holds .npy files only, no temp dir is left, and the uncached run left nothing on disk.
    caches = sorted(glob.glob(str(tmp_path / "d" / "tokenized" / "*")))
    assert len(caches) == 3 and all(os.path.isfile(os.path.join(d, "train.tokens.npy")) for d in caches)
    assert not glob.glob(str(tmp_path / "d" / "tokenized" / "*.tmp*"))
    assert not glob.glob(str(tmp_path / "d" / "tokenized" / "*" / "*.npz"))
    assert os.listdir(tmp_path / "u" / "tokenized") == []


def test_loaded_token_arrays_are_memmaps_and_rows_view_them(tmp_path):
    for cache in (True, True, False):  # miss (build), hit, uncached
        for packing in ("concat", "pack"):
            p = build_train_pipeline(_cfg(tmp_path, packing, 64, cache), global_batch_size=2)
            for s, name in enumerate(p.source_names):
                for split in ("train", "eval"):
                    d = p._docs[name][split]
                    assert isinstance(d.tokens, np.memmap) and isinstance(d.offsets, np.memmap)
                    assert not d.tokens.flags.writeable
                    if cache:
                        assert os.path.dirname(d.tokens.filename).startswith(str(tmp_path / "tokenized"))
                rows = p._rows[s]
                # Rows read the mapped array itself (a view; no copy of the token stream was made).
                assert _is_file_backed(rows.tokens) and np.shares_memory(rows.tokens, p._docs[name]["train"].tokens)


def test_old_npz_cache_is_rebuilt_not_crashed_on(tmp_path):
    cfg = _cfg(tmp_path, "pack", 32)
    ref = _batches(build_train_pipeline(cfg, global_batch_size=4))
    # Turn every cache dir into the pre-change layout: report.json + <split>.npz.
    for d in glob.glob(str(tmp_path / "tokenized" / "*")):
        for split in ("train", "eval"):
            t, o = load_split(d, split)
            np.savez(os.path.join(d, f"{split}.npz"), tokens=np.array(t), offsets=np.array(o))
            del t, o
            for f in split_files(d, split):
                os.remove(f)
    p = build_train_pipeline(cfg, global_batch_size=4)
    got = _batches(p)
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(ref, got) for k in KEYS)
    assert isinstance(p._docs["general"]["train"].tokens, np.memmap)
    assert not glob.glob(str(tmp_path / "tokenized" / "*" / "*.npz"))  # replaced by the new format
    assert not [d for d in os.listdir(tmp_path / "tokenized") if ".stale" in d or ".tmp" in d]


def test_failed_build_leaves_no_cache_or_temp_files(tmp_path):
    good = [json.dumps({"text": f"doc {i}"}) for i in range(20)]
    (tmp_path / "bad.jsonl").write_text("\n".join(good + ["{oops"] * 3) + "\n")
    for cache in (True, False):
        cfg = _cfg(tmp_path / "d", "concat", 16, cache)
        cfg.sources.general = source_config([str(tmp_path / "bad.jsonl")], "jsonl", eval_fraction=0.0)
        with pytest.raises(DataError, match="3 of 23 items were bad"):
            build_train_pipeline(cfg, global_batch_size=2)
        left = [d for d in os.listdir(tmp_path / "d" / "tokenized") if not d.startswith(("biomedical", "clinical"))]
        assert left == [], left
        assert not glob.glob(str(tmp_path / "d" / "tokenized" / "*.tmp*"))


# --------------------------------------------------------------------------------------------------
# Peak memory while tokenizing a large source
# --------------------------------------------------------------------------------------------------
_RSS_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {repo!r})
    import numpy as np
    from mellama_jax.data import token_cache
    from mellama_jax.data.config import demo_data_config, source_config
    from mellama_jax.tokenizer import load_tokenizer

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    chunk_docs = {chunk_docs}
    if chunk_docs:
        token_cache.ENCODE_CHUNK = chunk_docs
    cfg = demo_data_config()
    cfg.data_dir, cfg.reader, cfg.max_bad_fraction = {data_dir!r}, "direct", 0.0
    cfg.sources.big = source_config([{path!r}], "jsonl", eval_fraction=0.0)
    tok = load_tokenizer(cfg.tokenizer_path)
    tok.encode_batch(["warm up the tokenizer"] * 64)
    before = status("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
    docs, report = token_cache.load_source_tokens("big", cfg, tok, 0, 1)
    peak = status("VmHWM")
    d = docs["train"]
    first = [d.tokens[d.offsets[i]:d.offsets[i + 1]].tolist() for i in range(3)]
    print(json.dumps({{"before": before, "peak": peak, "tokens": d.num_tokens, "docs": d.num_docs,
                       "memmap": isinstance(d.tokens, np.memmap), "first": first}}))
""")


def _write_corpus(path, n_docs, seed=0):
    """JSONL of generated documents (random medical-ish words; no real text)."""
    rng = random.Random(seed)
    words = ("patient presented with acute hypertension metformin daily cardiac tumor cells study "
             "results mg dose trial cohort renal failure insulin serum levels were increased decreased "
             "significantly compared control group therapy outcome").split()
    pool = [" ".join(rng.choice(words) + (str(rng.randint(0, 999)) if rng.random() < 0.1 else "")
                     for _ in range(rng.randint(60, 140))) for _ in range(1000)]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n_docs):
            f.write(json.dumps({"id": f"d{i}", "text": pool[i % len(pool)]}) + "\n")
    return pool


def _measure(tmp_path, n_docs, chunk_docs):
    path = str(tmp_path / "big.jsonl")
    pool = _write_corpus(path, n_docs)
    script = _RSS_SCRIPT.format(repo=REPO, chunk_docs=chunk_docs, data_dir=str(tmp_path / "data"), path=path)
    env = dict(os.environ, XLA_FLAGS="")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    from mellama_jax.tokenizer import load_tokenizer
    tok = load_tokenizer(demo_data_config().tokenizer_path)
    assert res["first"] == [tok.encode(pool[i], bos=True, eos=True) for i in range(3)]
    assert res["memmap"] and res["docs"] == n_docs
    growth = res["peak"] - res["before"]
    array_bytes = 4 * res["tokens"]
    print(f"tokens={res['tokens']} array={array_bytes / 2**20:.1f} MiB peak RSS growth="
          f"{growth / 2**20:.1f} MiB ({100 * growth / array_bytes:.1f}%)")
    return growth, array_bytes


def test_tokenizing_memory_is_bounded_by_a_chunk_not_the_source(tmp_path):
    """~9.5M tokens with small encode chunks (256 documents): RSS growth stays far below the 38 MB
    token array (the pre-change pipeline held the array twice over, plus Python lists)."""
    growth, array_bytes = _measure(tmp_path, 40_000, 256)
    assert growth < 0.4 * array_bytes


@pytest.mark.slow
def test_tokenizing_40m_tokens_with_default_chunks_stays_bounded(tmp_path):
    """~40M tokens (160 MB of int32) with the default encode chunk."""
    growth, array_bytes = _measure(tmp_path, 170_000, 0)
    assert array_bytes > 120e6 and growth < 0.4 * array_bytes
