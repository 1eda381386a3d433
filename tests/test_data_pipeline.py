"""The training pipeline: mixture fractions, determinism, resume, host disjointness, packing masks
(through the model's attention mask and the model itself), errors for empty sources, tfds path."""
import json
from collections import Counter

import numpy as np
import pytest

from mellama_jax.data.config import demo_data_config, source_config
from mellama_jax.data.pipeline import build_train_pipeline
from mellama_jax.data.rows import pack_rows
from mellama_jax.data.sources.report import DataError
from mellama_jax.data.token_store import TokenizedDocs
from mellama_jax.tokenizer import load_tokenizer

KEYS = ("inputs", "targets", "positions", "segment_ids", "loss_mask", "source_ids")


def _cfg(tmp_path, packing="concat", seq_len=32, reader="direct", **kw):
    c = demo_data_config()
    c.data_dir = str(tmp_path / "data")
    c.reader = reader
    c.packing = packing
    c.seq_len = seq_len
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def _same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in KEYS)


@pytest.mark.parametrize("packing", ["concat", "pack"])
def test_mixture_fractions_over_1000_batches(tmp_path, packing):
    p = build_train_pipeline(_cfg(tmp_path, packing, seq_len=16), global_batch_size=8, process_index=0,
                             process_count=1)
    assert p.source_names == ["biomedical", "clinical", "general"]
    counts = np.zeros(3)
    for step in range(1000):
        b = p.batch(step)
        real = b["loss_mask"] > 0
        counts += np.bincount(b["source_ids"][real], minlength=3)
        assert (b["source_ids"][~real] == -1).all()
    frac = counts / counts.sum()
    np.testing.assert_allclose(frac, [15 / 20, 1 / 20, 4 / 20], atol=0.02)


def test_same_seed_same_batches_resume_and_seed_change(tmp_path):
    cfg = _cfg(tmp_path, "pack")
    a = build_train_pipeline(cfg, global_batch_size=4, process_index=0, process_count=1)
    full = [a.batch(s) for s in range(600)]
    b = build_train_pipeline(cfg, global_batch_size=4, process_index=0, process_count=1)
    assert all(_same(x, b.batch(s)) for s, x in enumerate(full[:50]))
    # A run resumed at step k (fresh process state, nothing consumed before k) sees the same batches.
    for k in (1, 257, 513):  # across the prefix-count cache stride
        resumed = build_train_pipeline(cfg, global_batch_size=4, process_index=0, process_count=1)
        resumed.restore(json.loads(json.dumps(a.state())))
        assert all(_same(full[s], resumed.batch(s)) for s in range(k, k + 40))
    # Batches are not all the same, and another seed changes them.
    assert not _same(full[0], full[1])
    cfg2 = _cfg(tmp_path, "pack", seed=1)
    c = build_train_pipeline(cfg2, global_batch_size=4, process_index=0, process_count=1)
    assert not all(_same(full[s], c.batch(s)) for s in range(5))
    with pytest.raises(DataError, match="seed"):
        c.restore(a.state())


def _doc_set(p, split="train"):
    out = set()
    for name in p.source_names:
        d = p._docs[name][split]
        out |= {(name, d.tokens[d.offsets[i]:d.offsets[i + 1]].tobytes()) for i in range(d.num_docs)}
    return out


def _doc_counts(p, split="train"):
    """Multiset of (source, document tokens): the demo corpus holds a few identical documents (short
    clinical notes equal after de-identification), so host disjointness is checked on counts."""
    out = Counter()
    for name in p.source_names:
        d = p._docs[name][split]
        out.update((name, d.tokens[d.offsets[i]:d.offsets[i + 1]].tobytes()) for i in range(d.num_docs))
    return out


@pytest.mark.parametrize("packing", ["concat", "pack"])
def test_two_hosts_see_disjoint_data(tmp_path, packing):
    cfg = _cfg(tmp_path, packing, seq_len=64)
    hosts = [build_train_pipeline(cfg, global_batch_size=8, process_index=i, process_count=2) for i in range(2)]
    single = build_train_pipeline(cfg, global_batch_size=8, process_index=0, process_count=1)
    d0, d1 = _doc_counts(hosts[0]), _doc_counts(hosts[1])
    assert d0 and d1 and d0 + d1 == _doc_counts(single)  # every document on exactly one host
    assert _doc_counts(hosts[0], "eval") + _doc_counts(hosts[1], "eval") == _doc_counts(single, "eval")
    # The windows the hosts train on never overlap either.
    rows = [set(), set()]
    for h, p in enumerate(hosts):
        assert p.local_batch == 4
        for step in range(30):
            b = p.batch(step)
            for j in range(4):
                m = b["segment_ids"][j] > 0
                rows[h].add((int(b["source_ids"][j][m][0]), b["inputs"][j][m].tobytes()))
    assert not (rows[0] & rows[1])


def _row_documents(b, j):
    """Document index of each position of row j, found independently of segment_ids: a new document
    starts where the position counter restarts at 0."""
    pos = b["positions"][j]
    real = b["loss_mask"][j] > 0
    doc = np.cumsum(pos == 0)
    return np.where(real, doc, 0)


def test_packing_never_attends_across_documents(tmp_path):
    from mellama_jax.model.attention import make_attention_mask

    p = build_train_pipeline(_cfg(tmp_path, "pack", seq_len=256), global_batch_size=8, process_index=0,
                             process_count=1)
    bos = p.tokenizer.bos_id
    seen_multi = 0
    for step in range(20):
        b = p.batch(step)
        mask = np.asarray(make_attention_mask(b["segment_ids"], b["segment_ids"]))[:, 0]
        for j in range(b["inputs"].shape[0]):
            doc = _row_documents(b, j)
            real = doc > 0
            i_idx, k_idx = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
            expected = (doc[:, None] == doc[None, :]) & real[:, None] & real[None, :] & (k_idx <= i_idx)
            assert np.array_equal(mask[j], expected), (step, j)
            seen_multi += len(np.unique(doc[real])) > 1
            # The loss mask is exactly the real tokens; padding carries segment 0 and source -1.
            assert np.array_equal(b["loss_mask"][j] > 0, b["segment_ids"][j] > 0)
            assert (b["source_ids"][j][~real] == -1).all() and (b["positions"][j][~real] == 0).all()
            # A BOS inside a segment would mean two documents were merged into one segment.
            assert not (real[1:] & (b["inputs"][j][1:] == bos) & (b["positions"][j][1:] > 0)).any()
            # Within a segment, targets are the next inputs.
            same = real[:-1] & (doc[:-1] == doc[1:])
            assert np.array_equal(b["targets"][j][:-1][same], b["inputs"][j][1:][same])
    assert seen_multi > 10  # rows really hold several documents


def test_packed_row_logits_equal_documents_alone():
    """Through the model: a packed row gives each document the logits it gets when run alone."""
    jax = pytest.importorskip("jax")
    from mellama_jax.model.llama import Llama, init_params
    from mellama_jax.model.presets import get_preset

    tok = load_tokenizer(demo_data_config().tokenizer_path)
    texts = ["Patient with sepsis started on vancomycin.", "The water cycle is easy.",
             "BP 140/90, HR 88.", "Metformin reduced HbA1c in adults with type 2 diabetes."]
    docs = TokenizedDocs.from_lists([tok.encode(t, bos=True, eos=True) for t in texts])
    rows = pack_rows(docs, 48)
    assert rows.num_rows == 2
    out = {k: np.zeros((2, 48), np.float32 if k == "loss_mask" else np.int32) for k in KEYS}
    for i in range(2):
        rows.write(i, out, i, 0)
    cfg = get_preset("tiny").replace(vocab_size=tok.vocab_size)
    model = Llama(cfg)
    params = init_params(cfg, jax.random.PRNGKey(0))
    packed = np.asarray(model.apply({"params": params}, out["inputs"], positions=out["positions"],
                                    segment_ids=out["segment_ids"]))
    # Each document alone, right-padded to 48 in one batch (causal attention: the padding after a
    # document cannot change its logits; default positions and segment ids).
    pieces = [(j, np.flatnonzero(out["segment_ids"][j] == seg)) for j in range(2)
              for seg in range(1, out["segment_ids"][j].max() + 1)]
    assert len(pieces) == 4
    alone_in = np.zeros((4, 48), np.int32)
    for i, (j, idx) in enumerate(pieces):
        alone_in[i, :len(idx)] = out["inputs"][j][idx]
    alone = np.asarray(model.apply({"params": params}, alone_in))
    for i, (j, idx) in enumerate(pieces):
        np.testing.assert_allclose(packed[j, idx], alone[i, :len(idx)], atol=2e-4, rtol=2e-4)
    # And the check has teeth: without segment ids the second document of a row sees the first.
    leaky = np.asarray(model.apply({"params": params}, out["inputs"]))
    i = next(i for i, (_, idx) in enumerate(pieces) if idx[0] > 0)  # a document not first in its row
    j, idx = pieces[i]
    assert not np.allclose(leaky[j, idx], alone[i, :len(idx)], atol=1e-3)


def test_concat_rows_cover_the_stream(tmp_path):
    p = build_train_pipeline(_cfg(tmp_path, "concat", seq_len=32), global_batch_size=2, process_index=0,
                             process_count=1)
    rows = p._rows[0]
    stream = rows.tokens
    got = np.concatenate([stream[i * 32 + 1: i * 32 + 33] for i in range(rows.num_rows)])
    assert np.array_equal(got, stream[1: rows.num_rows * 32 + 1])  # each token a target exactly once
    b = p.batch(3)
    assert (b["loss_mask"] == 1).all() and (b["segment_ids"] == 1).all()
    assert np.array_equal(b["targets"][:, :-1], b["inputs"][:, 1:])
    ev = p.eval_batches("clinical", 3)
    assert len(ev) == 3 and ev[-1]["loss_mask"].sum() == 0  # past the held-out data: padding only
    assert set(p.stats()) >= {"data/clinical/documents", "data/general/train_tokens", "data/biomedical/bad_items"}


def test_empty_source_and_bad_fraction_fail_clearly(tmp_path):
    (tmp_path / "empty.jsonl").write_text(json.dumps({"text": ""}) + "\n")
    cfg = _cfg(tmp_path)
    cfg.sources.general = source_config([str(tmp_path / "empty.jsonl")], "jsonl")
    with pytest.raises(DataError, match="source 'general'.*no usable documents"):
        build_train_pipeline(cfg, global_batch_size=2, process_index=0, process_count=1)
    cfg.mixture.general = 0.0  # weight 0: never trained on, but still read for its held-out loss
    with pytest.raises(DataError, match="source 'general'.*no usable documents"):
        build_train_pipeline(cfg, global_batch_size=2, process_index=0, process_count=1)
    cfg.sources_spec = "biomedical;clinical"  # left out of the set of sources: not read at all
    p = build_train_pipeline(cfg, global_batch_size=2, process_index=0, process_count=1)
    assert p.source_names == ["biomedical", "clinical"]
    cfg.sources_spec = ""
    # A source whose documents all land in the eval split has an empty train split.
    (tmp_path / "one.jsonl").write_text(json.dumps({"text": "only doc", "id": "x"}) + "\n")
    cfg.sources.general = source_config([str(tmp_path / "one.jsonl")], "jsonl", eval_fraction=1.0)
    cfg.mixture.general = 4.0
    with pytest.raises(DataError, match="source 'general' has mixture weight 4.0 but its train split is empty"):
        build_train_pipeline(cfg, global_batch_size=2, process_index=0, process_count=1)
    # Too many bad lines.
    good = [json.dumps({"text": f"doc {i}"}) for i in range(20)]
    (tmp_path / "bad.jsonl").write_text("\n".join(good + ["{oops"] * 3) + "\n")
    cfg.sources.general = source_config([str(tmp_path / "bad.jsonl")], "jsonl", eval_fraction=0.0)
    with pytest.raises(DataError, match=r"3 of 23 items were bad"):
        build_train_pipeline(cfg, global_batch_size=2, process_index=0, process_count=1)
    cfg.max_bad_fraction = 0.2
    p = build_train_pipeline(cfg, global_batch_size=2, process_index=0, process_count=1)
    assert p.stats()["data/general/bad/malformed_json"] == 3
    cfg.mixture.unknown = 1.0
    with pytest.raises(DataError, match="data.mixture.unknown"):
        build_train_pipeline(cfg, global_batch_size=2, process_index=0, process_count=1)


def test_tfds_path_matches_direct_reader(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    direct = build_train_pipeline(_cfg(tmp_path, "pack", reader="direct"), global_batch_size=4,
                                  process_index=0, process_count=1)
    via_tfds = build_train_pipeline(_cfg(tmp_path, "pack", reader="tfds", cache_tokenized=False),
                                    global_batch_size=4, process_index=0, process_count=1)
    for split in ("train", "eval"):
        assert _doc_set(direct, split) == _doc_set(via_tfds, split)
    # Prepared records are reused (report included), and host shards stay disjoint on this path too.
    again = build_train_pipeline(_cfg(tmp_path, "pack", reader="tfds", cache_tokenized=False),
                                 global_batch_size=4, process_index=1, process_count=2)
    other = build_train_pipeline(_cfg(tmp_path, "pack", reader="tfds", cache_tokenized=False),
                                 global_batch_size=4, process_index=0, process_count=2)
    assert _doc_counts(again) + _doc_counts(other) == _doc_counts(direct)
    assert all(_same(via_tfds.batch(s), via_tfds.batch(s)) for s in range(3))
