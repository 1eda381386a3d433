"""Training from a token store (data.token_store): the same batches as the in-process path at one
process, the same global batches on 1, 2 or 4 processes (and across a resume between them), the
refusals of a store that does not fit the run, and a remote store on a real S3 server (moto) that
reads only the blocks the batches touch."""
import json
import os
import shutil
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mellama_jax import fs  # noqa: E402
from storage_servers import fault_proxy, gcs, gcs_server, s3, s3_server  # noqa: E402,F401  (pytest fixtures)
from mellama_jax.data.config import SAMPLES_DIR, demo_data_config, source_config  # noqa: E402
from mellama_jax.data.pipeline import TrainPipeline, build_train_pipeline  # noqa: E402
from mellama_jax.data.sources.report import DataError  # noqa: E402
from mellama_jax.data.store.build import build_store_serial  # noqa: E402
from mellama_jax.data.store.reader import ShardedTokens, open_token_store  # noqa: E402
from mellama_jax.data.store.row_source import StoreRows  # noqa: E402
from mellama_jax.tokenizer import load_tokenizer  # noqa: E402

KEYS = ("inputs", "targets", "positions", "segment_ids", "loss_mask", "source_ids")
STEPS = 40


def _cfg(data_dir, packing="concat", seq_len=32, **kw):
    c = demo_data_config()
    c.data_dir = str(data_dir)
    c.reader = "direct"  # the in-process reference: the readers, not tfds
    c.packing = packing
    c.seq_len = seq_len
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def _same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in KEYS) and set(a) == set(b)


def _concat(batches):
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    """The bundled demo corpora (3 sources, 8 files) built into a store by the serial builder."""
    root = tmp_path_factory.mktemp("store")
    cfg = _cfg(root / "data")
    tok = load_tokenizer(cfg.tokenizer_path)
    build_store_serial(cfg, tok, str(root / "store"))
    return {"root": root, "store": str(root / "store"), "data_dir": str(root / "data"), "tokenizer": tok}


def _pipelines(demo_store, packing, gbs=8, **kw):
    """(in-process at one process, the store at one process) over the same config."""
    ref = build_train_pipeline(_cfg(demo_store["data_dir"], packing, **kw), global_batch_size=gbs,
                               tokenizer=demo_store["tokenizer"])
    store = build_train_pipeline(_cfg(demo_store["data_dir"], packing, token_store=demo_store["store"], **kw),
                                 global_batch_size=gbs, tokenizer=demo_store["tokenizer"])
    return ref, store


# --------------------------------------------------------------------------- the reader itself
def test_sharded_tokens_slice_across_shards_like_one_array(demo_store):
    store = open_token_store(demo_store["store"])
    docs = store.docs("biomedical", "train")
    assert isinstance(docs.tokens, ShardedTokens) and len(store.manifest["sources"]["biomedical"]["shards"]) > 1
    whole = np.asarray(docs.tokens)
    assert whole.dtype == np.int32 and whole.shape == docs.tokens.shape == (docs.num_tokens,)
    assert docs.offsets.dtype == np.int64 and docs.offsets[0] == 0 and docs.offsets[-1] == len(whole)
    bounds = np.cumsum(store.manifest["sources"]["biomedical"]["splits"]["train"]["shard_tokens"])[:-1]
    for a, b in [(0, 5), (int(bounds[0]) - 3, int(bounds[0]) + 4), (int(bounds[0]) - 2, int(bounds[-1]) + 2),
                 (len(whole) - 7, len(whole)), (10, 10), (len(whole) - 2, len(whole) + 100)]:
        got = docs.tokens[a:b]
        assert got.dtype == np.int32 and np.array_equal(got, whole[a:b]), (a, b)
    assert int(docs.tokens[-1]) == int(whole[-1]) and np.array_equal(np.tile(docs.tokens, 2), np.tile(whole, 2))
    # every document is [BOS] ... [EOS]
    tok = demo_store["tokenizer"]
    assert (whole[docs.offsets[:-1]] == tok.bos_id).all() and (whole[docs.offsets[1:] - 1] == tok.eos_id).all()


# --------------------------------------------------------------- equivalence at one process
@pytest.mark.parametrize("packing", ["concat", "pack"])
def test_store_batches_equal_in_process_batches_at_one_process(demo_store, packing):
    ref, store = _pipelines(demo_store, packing)
    assert ref.source_names == store.source_names == ["biomedical", "clinical", "general"]
    assert store.global_order and not ref.global_order
    for step in range(STEPS):
        assert _same(ref.batch(step), store.batch(step)), step
    for name in ref.source_names:
        a, b = ref.eval_batches(name, 3), store.eval_batches(name, 3)
        assert len(a) == len(b) == 3 and all(_same(x, y) for x, y in zip(a, b)), name
    skip = ("load_seconds", "store_shards", "data/store/")
    sa = {k: v for k, v in ref.stats().items() if not any(s in k for s in skip)}
    sb = {k: v for k, v in store.stats().items() if not any(s in k for s in skip)}
    assert sa == sb
    assert ref.epoch_rows() == store.epoch_rows() and ref.steps_for_epochs(2.0) == store.steps_for_epochs(2.0)


def test_store_equals_in_process_under_a_target_budget_and_max_docs(demo_store):
    target = 8 * 32 * 200 * 5.0  # this 200-step run stands for one 5 times longer
    c_ref = _cfg(demo_store["data_dir"], "pack", target_budget_tokens=target)
    c_store = _cfg(demo_store["data_dir"], "pack", target_budget_tokens=target, token_store=demo_store["store"])
    ref = build_train_pipeline(c_ref, global_batch_size=8, tokenizer=demo_store["tokenizer"], train_steps=200)
    store = build_train_pipeline(c_store, global_batch_size=8, tokenizer=demo_store["tokenizer"], train_steps=200)
    assert 0 < store.budget_fraction < 1
    assert all(_same(ref.batch(s), store.batch(s)) for s in range(STEPS))
    assert ref.repetition() == store.repetition()
    seen = np.array([1000, 50, 300], np.int64)
    assert ref.repetition_so_far(seen) == store.repetition_so_far(seen)
    # the first N documents of each split, as the in-process path keeps them
    ref, store = _pipelines(demo_store, "concat", max_docs_per_source=7)
    assert store.stats()["data/biomedical/train_docs"] == 7
    assert all(_same(ref.batch(s), store.batch(s)) for s in range(STEPS))
    assert all(_same(x, y) for x, y in zip(ref.eval_batches("general", 2), store.eval_batches("general", 2)))


# ------------------------------------------------------------------- any number of processes
@pytest.mark.parametrize("packing", ["concat", "pack"])
def test_global_batches_identical_on_1_2_4_processes_and_resume_across_them(demo_store, packing):
    stages = "10:clinical=4,general=1"
    cfg = _cfg(demo_store["data_dir"], packing, token_store=demo_store["store"], mixture_stages=stages)
    tok = demo_store["tokenizer"]
    gbs = 8
    one = build_train_pipeline(cfg, global_batch_size=gbs, tokenizer=tok)
    full = [one.batch(s) for s in range(STEPS)]
    evals = {n: one.eval_batches(n, 2) for n in one.source_names}
    by_p = {}
    for count in (2, 4):
        procs = by_p[count] = [build_train_pipeline(cfg, global_batch_size=gbs, process_index=p,
                                                    process_count=count, tokenizer=tok) for p in range(count)]
        assert all(p.local_batch == gbs // count for p in procs)
        for step in range(STEPS):
            assert _same(_concat([p.batch(step) for p in procs]), full[step]), (count, step)
        for n in one.source_names:
            got = [_concat(list(b)) for b in zip(*[p.eval_batches(n, 2) for p in procs])]
            assert len(got) == 2 and all(_same(x, y) for x, y in zip(got, evals[n])), (count, n)
        # what train/ sums over processes is the one-process figure, never counted count times
        for step in (1, 9, 10, 23, STEPS):
            rows = sum(p.stage_row_counts(step)[1] for p in procs)
            assert np.array_equal(rows, one.stage_row_counts(step)[1]), (count, step)
            assert {p.stage_row_counts(step)[0] for p in procs} == {one.stage_row_counts(step)[0]}
        assert sum(p.epoch_rows() for p in procs) == one.epoch_rows()
        assert {p.steps_for_epochs(1.5, one.epoch_rows()) for p in procs} == {one.steps_for_epochs(1.5)}
        assert all(p.steps_for_epochs(1.5) == one.steps_for_epochs(1.5) for p in procs)
        assert all(p.state() == one.state() and p.fingerprint() == one.fingerprint() for p in procs)
    # a checkpoint written on 2 processes resumes on 4 (and on 1): the same batches continue
    saved = json.loads(json.dumps(by_p[2][0].state()))
    assert "process_count" not in json.dumps(saved)
    k = 17
    resumed = [build_train_pipeline(cfg, global_batch_size=gbs, process_index=p, process_count=4, tokenizer=tok)
               for p in range(4)]
    for p in resumed:
        p.restore(saved)
    assert all(_same(_concat([p.batch(s) for p in resumed]), full[s]) for s in range(k, STEPS))
    one_again = build_train_pipeline(cfg, global_batch_size=gbs, tokenizer=tok)
    one_again.restore(saved)
    assert _same(one_again.batch(k), full[k])


def test_host_local_order_is_unchanged_and_refuses_another_process_count(demo_store):
    """Without a store the in-process path keeps its host-local draws (a resume on another host
    count is refused), and neither mode resumes the other's checkpoint on 2 hosts."""
    cfg = _cfg(demo_store["data_dir"], "concat")
    tok = demo_store["tokenizer"]
    two = [build_train_pipeline(cfg, global_batch_size=8, process_index=p, process_count=2, tokenizer=tok)
           for p in range(2)]
    assert not two[0].global_order and "row_order" not in two[0].state()
    four = build_train_pipeline(cfg, global_batch_size=8, process_index=0, process_count=4, tokenizer=tok)
    with pytest.raises(DataError, match="rows"):
        four.restore(two[0].state())
    store = build_train_pipeline(_cfg(demo_store["data_dir"], "concat", token_store=demo_store["store"]),
                                 global_batch_size=8, tokenizer=tok)
    with pytest.raises(DataError, match="row_order"):
        store.restore(two[0].state())
    with pytest.raises(DataError, match="rows"):  # host-local rows of 2 hosts are not the global rows
        two[0].restore(store.state())


def test_resume_against_another_store_is_refused_and_a_copy_is_accepted(demo_store, tmp_path):
    tok = demo_store["tokenizer"]
    a = build_train_pipeline(_cfg(demo_store["data_dir"], "concat", token_store=demo_store["store"]),
                             global_batch_size=8, tokenizer=tok)
    copy = str(tmp_path / "copy")
    shutil.copytree(demo_store["store"], copy)
    b = build_train_pipeline(_cfg(demo_store["data_dir"], "concat", token_store=copy), global_batch_size=8,
                             tokenizer=tok)
    b.restore(json.loads(json.dumps(a.state())))  # same content elsewhere (a bucket copy): same rows
    assert a.fingerprint()["token_store_sha256"] == b.fingerprint()["token_store_sha256"]
    # a store built from other input files (same counts here, other content): refused
    manifest_file = os.path.join(copy, "MANIFEST.json")
    manifest = json.load(open(manifest_file))
    manifest["sources"]["general"]["files"][0]["sha256"] = "0" * 64
    json.dump(manifest, open(manifest_file, "w"))
    c = build_train_pipeline(_cfg(demo_store["data_dir"], "concat", token_store=copy), global_batch_size=8,
                             tokenizer=tok)
    assert c.state()["rows"] == a.state()["rows"]
    with pytest.raises(DataError, match="token_store"):
        c.restore(json.loads(json.dumps(a.state())))


# --------------------------------------------------------------------------- refusals
def test_no_source_file_is_read_and_nothing_is_tokenized_with_a_store(demo_store, tmp_path, monkeypatch):
    cfg = _cfg(tmp_path / "data", "pack", token_store=demo_store["store"])
    for name in cfg.sources:  # the corpora are not on this machine: only the store is
        cfg.sources[name].paths = (str(tmp_path / "gone" / name / "*.jsonl"),)
    import mellama_jax.data.pipeline as pipeline_mod
    import mellama_jax.data.token_cache as token_cache_mod

    def refuse(*a, **k):
        raise AssertionError("the token cache was used with a token store")
    monkeypatch.setattr(pipeline_mod, "load_source_tokens", refuse)
    monkeypatch.setattr(token_cache_mod, "_tokenize_texts", refuse)
    p = build_train_pipeline(cfg, global_batch_size=8, tokenizer=demo_store["tokenizer"])
    ref = build_train_pipeline(_cfg(demo_store["data_dir"], "pack", token_store=demo_store["store"]),
                               global_batch_size=8, tokenizer=demo_store["tokenizer"])
    assert all(_same(p.batch(s), ref.batch(s)) for s in range(10))
    fp = p.fingerprint()  # provenance from the manifest, not from the (absent) files
    assert fp["token_store"] == demo_store["store"] and set(fp["sources"]) == set(p.source_names)
    assert not os.path.exists(tmp_path / "data")


def test_store_with_another_tokenizer_is_refused_naming_both_hashes(demo_store, tmp_path):
    from mellama_jax.data.train_tokenizer import train_tokenizer

    general = os.path.join(SAMPLES_DIR, "general")
    texts = [open(os.path.join(general, f)).read() for f in sorted(os.listdir(general))]
    other = load_tokenizer(train_tokenizer(texts, str(tmp_path / "tok"), vocab_size=600))
    cfg = _cfg(demo_store["data_dir"], "concat", token_store=demo_store["store"])
    with pytest.raises(DataError) as err:
        build_train_pipeline(cfg, global_batch_size=8, tokenizer=other)
    msg = str(err.value)
    assert demo_store["tokenizer"].sha256() in msg and other.sha256() in msg and demo_store["store"] in msg


def test_store_with_another_split_rule_is_refused_naming_both_hashes(demo_store):
    from mellama_jax.data.store.format import split_rule_sha256

    cfg = _cfg(demo_store["data_dir"], "concat", token_store=demo_store["store"])
    built = split_rule_sha256("clinical", cfg.sources.clinical)
    cfg.sources.clinical.eval_fraction = 0.2
    with pytest.raises(DataError) as err:
        build_train_pipeline(cfg, global_batch_size=8, tokenizer=demo_store["tokenizer"])
    msg = str(err.value)
    assert "'clinical'" in msg and built in msg and split_rule_sha256("clinical", cfg.sources.clinical) in msg


def test_incomplete_store_and_missing_source_are_refused(demo_store, tmp_path):
    half = str(tmp_path / "half")
    shutil.copytree(demo_store["store"], half)
    os.remove(os.path.join(half, "MANIFEST.json"))
    with pytest.raises(DataError, match=f"token store {half}: .*MANIFEST.json missing.*incomplete"):
        build_train_pipeline(_cfg(demo_store["data_dir"], token_store=half), global_batch_size=8,
                             tokenizer=demo_store["tokenizer"])
    cfg = _cfg(demo_store["data_dir"], token_store=demo_store["store"])
    cfg.sources.notes = source_config([str(tmp_path / "notes.jsonl")], "jsonl")
    cfg.mixture.notes = 1.0
    with pytest.raises(DataError, match="has no source 'notes'"):
        build_train_pipeline(cfg, global_batch_size=8, tokenizer=demo_store["tokenizer"])
    # a shard that does not match the manifest (cut short, or from another build) names the file
    cut = str(tmp_path / "cut")
    shutil.copytree(demo_store["store"], cut)
    shard = os.path.join(cut, "general", "train", "00000.tokens.npy")
    arr = np.load(shard)
    np.save(shard, arr[:-5])
    with pytest.raises(DataError, match="00000.tokens.npy: holds .* tokens but the manifest says"):
        build_train_pipeline(_cfg(demo_store["data_dir"], token_store=cut), global_batch_size=8,
                             tokenizer=demo_store["tokenizer"])


def test_config_keys_are_validated():
    from configs.pretrain import get_config
    from configs.sft import get_config as get_sft_config
    from mellama_jax.config_validation import ConfigError, validate_config

    c = get_config("demo")
    c.data.token_store = "s3://bucket/store"
    validate_config(c)
    c.data.store_cache_mb = 0
    with pytest.raises(ConfigError, match="config.data.store_cache_mb=0"):
        validate_config(c)
    c = get_config("tiny")  # synthetic tokens
    c.data.token_store = "/stores/x"
    with pytest.raises(ConfigError, match="config.data.token_store is set but config.data.synthetic=True"):
        validate_config(c)
    c = get_sft_config("tiny")
    c.data.token_store = "/stores/x"
    with pytest.raises(ConfigError, match="config.data.token_store='/stores/x' is a pretraining setting"):
        validate_config(c)


def test_an_sft_row_source_refuses_a_token_store(demo_store):
    from mellama_jax.data.pipeline import DocumentRows

    cfg = _cfg(demo_store["data_dir"], token_store=demo_store["store"])
    with pytest.raises(DataError, match="data.token_store=.* is a pretraining setting"):
        TrainPipeline(cfg, global_batch_size=8, process_index=0, process_count=1,
                      tokenizer=demo_store["tokenizer"], row_source=DocumentRows("concat"))


# ------------------------------------------------------------------------- a real training run
def _metrics(workdir):
    out = []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            out.append({k: v for k, v in rec.items()
                        if k in ("step", "loss", "grad_norm") or k.startswith("eval/") or k.endswith("/tokens")})
    return out


@pytest.mark.slow  # two compiles of the tiny model (~30 s on 2 cores); the batch tests above are the fast check
def test_a_training_run_from_the_store_has_the_in_process_losses(demo_store, tmp_path):
    from configs.pretrain import get_config
    from mellama_jax.config_validation import validate_config
    from mellama_jax.train import loop

    def config(**data):
        c = get_config("demo")
        c.model.preset = "tiny"
        c.data.seq_len, c.data.reader, c.data.data_dir = 32, "direct", demo_store["data_dir"]
        c.train.steps, c.train.global_batch_size, c.train.log_every = 4, 8, 1
        c.train.eval_every, c.train.eval_batches, c.train.checkpoint_every = 2, 1, 0
        c.optim.warmup_steps = 2
        for k, v in data.items():
            c.data[k] = v
        return c

    ref = config()
    loop.run(ref, str(tmp_path / "ref"))
    store = config(token_store=demo_store["store"])
    for name in store.data.sources:
        store.data.sources[name].paths = (str(tmp_path / "absent" / name),)
    validate_config(store)
    loop.run(store, str(tmp_path / "store"))
    a, b = _metrics(tmp_path / "ref"), _metrics(tmp_path / "store")
    assert len(a) >= 4 and a == b
    assert any("eval/general/loss" in r for r in a)


# ------------------------------------------------------------------- a remote store (S3, moto)
@pytest.mark.parametrize("packing", ["concat", "pack"])
def test_a_store_in_s3_gives_the_local_batches(demo_store, s3, packing):
    url = s3.upload_tree(demo_store["store"], "stores/demo")
    tok = demo_store["tokenizer"]
    local = build_train_pipeline(_cfg(demo_store["data_dir"], packing, token_store=demo_store["store"]),
                                 global_batch_size=8, tokenizer=tok)
    remote = build_train_pipeline(_cfg(demo_store["data_dir"], packing, token_store=url, store_cache_mb=1),
                                  global_batch_size=8, tokenizer=tok)
    assert all(_same(local.batch(s), remote.batch(s)) for s in range(20))
    for name in local.source_names:
        assert all(_same(x, y) for x, y in zip(local.eval_batches(name, 2), remote.eval_batches(name, 2)))
    stats = remote.stats()
    assert stats["data/store/bytes_fetched"] > 0 and stats["data/store/cache_capacity"] == 1 << 20
    remote.restore(json.loads(json.dumps(local.state())))  # the same store content, in a bucket
    with pytest.raises(DataError, match=r"token store s3://.*/stores/none: .*MANIFEST.json missing"):
        build_train_pipeline(_cfg(demo_store["data_dir"], packing, token_store=url.replace("demo", "none")),
                             global_batch_size=8, tokenizer=tok)
    s3.client.delete_object(Bucket=s3.bucket, Key="stores/demo/general/train/00000.offsets.npy")
    with pytest.raises(fs.StorageError, match=r"s3://.*/stores/demo/general/train/00000.offsets.npy"):
        build_train_pipeline(_cfg(demo_store["data_dir"], packing, token_store=url), global_batch_size=8,
                             tokenizer=tok)


def test_a_remote_store_reads_only_the_blocks_the_batches_touch(demo_store, s3, tmp_path):
    """A store ~40x the cache: a few steps fetch a bounded number of bytes (the blocks of the rows
    drawn, the document index, the headers), and give the local store's batches."""
    rng = np.random.default_rng(0)
    words = open(os.path.join(SAMPLES_DIR, "general", sorted(os.listdir(os.path.join(SAMPLES_DIR, "general")))[0])
                 ).read().split()
    corpus = tmp_path / "big.jsonl"
    with open(corpus, "w") as f:
        for i in range(300):
            f.write(json.dumps({"id": f"d{i}", "text": " ".join(rng.choice(words, 1500))}) + "\n")
    cfg = _cfg(tmp_path / "data", "concat", seq_len=64)
    cfg.sources = {"big": source_config([str(corpus)], "jsonl", eval_fraction=0.01)}
    cfg.mixture = {"big": 1.0}
    local_dir = str(tmp_path / "store")
    tok = demo_store["tokenizer"]
    manifest = build_store_serial(cfg, tok, local_dir)
    url = s3.upload_tree(local_dir, "big")
    store_bytes = sum(os.path.getsize(os.path.join(r, f)) for r, _, fl in os.walk(local_dir) for f in fl)
    n_docs = sum(manifest["sources"]["big"]["splits"][s]["docs"] for s in ("train", "eval"))
    block, cache, steps, batch = 8 << 10, 64 << 10, 3, 4
    cfg.token_store = url
    remote = TrainPipeline(cfg, global_batch_size=batch, process_index=0, process_count=1, tokenizer=tok,
                           row_source=StoreRows(url, "concat", cache_bytes=cache, block_bytes=block))
    cfg.token_store = local_dir
    local = build_train_pipeline(cfg, global_batch_size=batch, tokenizer=tok)
    assert all(_same(local.batch(s), remote.batch(s)) for s in range(steps))
    stats = remote.row_source.store.stats()
    index_bytes = 8 * (n_docs + 2) + 2 * 128  # offsets files of both splits with their headers
    bound = steps * batch * 2 * block + index_bytes + 4096  # each row spans at most 2 blocks; 1 header GET
    assert 0 < stats["bytes_fetched"] <= bound, (stats, bound)
    assert store_bytes > 30 * cache and stats["bytes_fetched"] * 8 < store_bytes
    assert stats["cache_bytes"] <= cache and stats["cache_misses"] <= steps * batch * 2


def test_dropped_connections_and_500s_are_retried_and_the_batches_are_the_same(demo_store, s3, fault_proxy):
    """Shard reads through a proxy that answers 500 to some GETs and drops the connection on others."""
    url = s3.upload_tree(demo_store["store"], "stores/faulty")  # uploaded past the proxy
    tok = demo_store["tokenizer"]
    local = build_train_pipeline(_cfg(demo_store["data_dir"], "pack", token_store=demo_store["store"]),
                                 global_batch_size=8, tokenizer=tok)
    fault_proxy.inject("500", count=3, every=2, path_contains=".tokens.npy")
    fault_proxy.inject("drop", count=2, every=3, path_contains=".npy")
    remote = TrainPipeline(_cfg(demo_store["data_dir"], "pack", token_store=url), global_batch_size=8,
                           process_index=0, process_count=1, tokenizer=tok,
                           row_source=StoreRows(url, "pack", cache_bytes=64 << 10, block_bytes=4 << 10))
    assert all(_same(local.batch(s), remote.batch(s)) for s in range(20))
    assert fault_proxy.injected == 5


def test_perplexity_texts_are_built_into_the_store_and_evaluated_as_in_process(tmp_path):
    """data.perplexity_texts (an eval-only source training adds) is built like any source, so a run
    from the store evaluates it exactly as the in-process run does."""
    texts = os.path.join(SAMPLES_DIR, "general", "*.jsonl")
    cfg = _cfg(tmp_path / "data", perplexity_texts=(texts,))
    tok = load_tokenizer(cfg.tokenizer_path)
    build_store_serial(cfg, tok, str(tmp_path / "store"))
    assert "general_text" in open_token_store(str(tmp_path / "store")).source_names
    ref = build_train_pipeline(cfg, global_batch_size=4, tokenizer=tok)
    got = build_train_pipeline(_cfg(tmp_path / "data", perplexity_texts=(texts,), token_store=str(tmp_path / "store")),
                               global_batch_size=4, tokenizer=tok)
    want, have = ref.eval_batches("general_text", 3), got.eval_batches("general_text", 3)
    assert len(want) == len(have) == 3 and all(_same(a, b) for a, b in zip(want, have))
    assert all(_same(ref.batch(s), got.batch(s)) for s in range(5))


def test_sources_in_a_bucket_built_on_beam_into_a_bucket_store_train_like_local_files(tmp_path, s3, monkeypatch):
    """The whole path in S3: the demo corpora uploaded to the bucket, tokenized on Beam's DirectRunner
    into a store in the bucket, and read back for training: the batches of the local in-process run."""
    from mellama_jax.cli.beam_store import run_beam

    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # run_beam extends it
    corpora = s3.upload_tree(SAMPLES_DIR, "corpora")
    cfg = _cfg(tmp_path / "data")
    for src in cfg.sources.values():
        src.paths = tuple(p.replace(SAMPLES_DIR, corpora) for p in src.paths)
        assert all(p.startswith("s3://") for p in src.paths)
    tok = load_tokenizer(cfg.tokenizer_path)
    store = s3.url("stores/beam")
    manifest = run_beam(cfg, tok, store, ["--runner", "DirectRunner", "--direct_num_workers", "1"])
    assert all(f["path"].startswith("s3://") for s in manifest["sources"].values() for f in s["files"])
    ref = build_train_pipeline(_cfg(tmp_path / "local"), global_batch_size=8, tokenizer=tok)
    got = build_train_pipeline(_cfg(tmp_path / "data", token_store=store), global_batch_size=8, tokenizer=tok)
    assert all(_same(ref.batch(s), got.batch(s)) for s in range(10))
    for name in ref.source_names:
        assert all(_same(a, b) for a, b in zip(ref.eval_batches(name, 2), got.eval_batches(name, 2)))


def test_a_store_in_the_gcs_emulator_gives_the_local_batches(demo_store, gcs):
    url = gcs.upload_tree(demo_store["store"], "stores/demo")
    assert url.startswith("gs://")
    tok = demo_store["tokenizer"]
    local = build_train_pipeline(_cfg(demo_store["data_dir"], token_store=demo_store["store"]),
                                 global_batch_size=8, tokenizer=tok)
    remote = build_train_pipeline(_cfg(demo_store["data_dir"], token_store=url, store_cache_mb=1),
                                  global_batch_size=8, tokenizer=tok)
    assert all(_same(local.batch(s), remote.batch(s)) for s in range(10))
    assert remote.stats()["data/store/bytes_fetched"] > 0
