"""Budget-faithful ablations (data.target_budget_tokens): a short run keeps a deterministic subsample
of each source so that each repeats as often as in the full run it stands for; the repetition per
source is within 2% of the full run's on the bundled corpora (planned and as drawn), the subsample
resumes exactly, and a budget smaller than one batch is refused before anything compiles."""
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs.pretrain import get_config  # noqa: E402
from mellama_jax.config_validation import ConfigRangeError, validate_config  # noqa: E402
from mellama_jax.data.config import demo_data_config  # noqa: E402
from mellama_jax.data.pipeline import build_train_pipeline  # noqa: E402
from mellama_jax.data.sources.report import DataError  # noqa: E402
from mellama_jax.data.token_cache import subsample_documents  # noqa: E402
from mellama_jax.data.token_store import TokenizedDocs  # noqa: E402

KEYS = ("inputs", "targets", "positions", "segment_ids", "loss_mask", "source_ids")
NAMES = ["biomedical", "clinical", "general"]


def _cfg(tmp_path, target, packing="concat", seq_len=32):
    c = demo_data_config()
    c.data_dir = str(tmp_path / "data")
    c.reader = "direct"
    c.packing = packing
    c.seq_len = seq_len
    c.target_budget_tokens = float(target)
    return c


def _full_tokens(tmp_path, packing="concat"):
    p = build_train_pipeline(_cfg(tmp_path, 0, packing), global_batch_size=8)
    return {n: p.stats()[f"data/{n}/train_tokens"] for n in NAMES}, p.weights


@pytest.mark.parametrize("packing", ["concat", "pack"])
def test_repetition_per_source_matches_the_full_run(tmp_path, packing):
    """Planned: b x w_s / kept_s within 2% of T x w_s / tokens_s for every source, the kept share
    is b / T, and the repetitions differ between sources (the full run's, not one number)."""
    full, weights = _full_tokens(tmp_path, packing)
    steps, gbs, seq, target = 400, 8, 32, 2e6
    p = build_train_pipeline(_cfg(tmp_path, target, packing), global_batch_size=gbs, train_steps=steps)
    stats = p.stats()
    b = steps * gbs * seq
    for s, n in enumerate(NAMES):
        stated = target * weights[s] / full[n]
        assert stats[f"data/{n}/target_repetition"] == pytest.approx(stated)
        assert stats[f"data/{n}/repetition"] == pytest.approx(stated, rel=0.02)
        assert stats[f"data/{n}/repetition"] == pytest.approx(b * weights[s] / stats[f"data/{n}/train_tokens"])
        assert stats[f"data/{n}/full_train_tokens"] == full[n]
        assert stats[f"data/{n}/train_tokens"] == round(full[n] * b / target)
    reps = [stats[f"data/{n}/target_repetition"] for n in NAMES]
    assert max(reps) > 1.5 * min(reps)


def test_repetition_as_drawn_over_the_run(tmp_path):
    """The rows the mixture actually draws over the whole short run repeat each kept source as often
    as the full run would (tokens drawn / kept tokens), within 2%."""
    full, weights = _full_tokens(tmp_path)
    steps, gbs, seq = 60_000, 8, 32
    target = 10 * steps * gbs * seq
    p = build_train_pipeline(_cfg(tmp_path, target), global_batch_size=gbs, train_steps=steps)
    _, rows = p.stage_row_counts(steps)  # rows of each source drawn in steps [0, steps)
    drawn = p.repetition_so_far(rows[:-1] * seq)
    for s, n in enumerate(NAMES):
        assert drawn[f"data/{n}/repetition"] == pytest.approx(target * weights[s] / full[n], rel=0.02), n


def test_subsample_is_a_pure_function_and_resumes_exactly(tmp_path):
    cfg = _cfg(tmp_path, 2e6, "pack")
    a = build_train_pipeline(cfg, global_batch_size=4, train_steps=300)
    batches = [a.batch(s) for s in range(120)]
    for k in (0, 57, 100):  # a resumed run (fresh pipeline, restored state) sees the same batches
        r = build_train_pipeline(cfg, global_batch_size=4, train_steps=300)
        r.restore(json.loads(json.dumps(a.state())))
        assert all(np.array_equal(batches[s][key], r.batch(s)[key]) for s in range(k, k + 20) for key in KEYS)
    other = build_train_pipeline(cfg, global_batch_size=4, train_steps=150)  # another subsample
    with pytest.raises(DataError, match="budget_fraction"):
        other.restore(a.state())
    assert a.fingerprint()["target_budget_tokens"] == 2e6


def test_subsample_documents_exact_count_and_seeded():
    rng = np.random.default_rng(0)
    docs = TokenizedDocs.from_lists([list(rng.integers(3, 100, rng.integers(5, 60))) for _ in range(300)])
    one = subsample_documents(docs, 0.1, seed=0, source="x")
    assert one.num_tokens == round(0.1 * docs.num_tokens)
    again = subsample_documents(docs, 0.1, seed=0, source="x")
    assert np.array_equal(one.tokens, again.tokens) and np.array_equal(one.offsets, again.offsets)
    seeded = subsample_documents(docs, 0.1, seed=1, source="x")
    assert not np.array_equal(one.tokens[:200], seeded.tokens[:200])
    # documents are kept whole (all but at most one, cut to a prefix) and in their original order
    starts = {tuple(docs.tokens[docs.offsets[i]:docs.offsets[i + 1]][:5]): i for i in range(docs.num_docs)}
    order = [starts[tuple(one.tokens[one.offsets[i]:one.offsets[i + 1]][:5])] for i in range(one.num_docs)]
    assert order == sorted(order)
    whole = sum(int(one.offsets[i + 1] - one.offsets[i]) == int(docs.offsets[j + 1] - docs.offsets[j])
                for i, j in enumerate(order))
    assert whole >= one.num_docs - 1
    # the same documents per id whatever the host split: host h holds ids h, h + count, ...
    halves = [TokenizedDocs.from_lists([list(docs.tokens[docs.offsets[i]:docs.offsets[i + 1]])
                                        for i in range(h, docs.num_docs, 2)]) for h in (0, 1)]
    from mellama_jax.data.mixture_order import document_keys
    from mellama_jax.data.token_cache import global_doc_ids
    keys = document_keys(0, "x", np.arange(docs.num_docs))
    for h in (0, 1):
        assert np.array_equal(document_keys(0, "x", global_doc_ids(halves[h].num_docs, h, 2)), keys[h::2])


def test_budget_smaller_than_one_batch_is_refused(tmp_path):
    c = get_config("demo")
    c.data.target_budget_tokens = float(c.train.global_batch_size * c.data.seq_len - 1)
    with pytest.raises(ConfigRangeError, match=r"config\.data\.target_budget_tokens=2047 is smaller than one batch"):
        validate_config(c)
    c.data.target_budget_tokens = 1e5  # > one batch, < train.steps x batch
    with pytest.raises(ConfigRangeError, match="smaller than this run's own budget"):
        validate_config(c)
    c.data.target_budget_tokens = -1.0
    with pytest.raises(ConfigRangeError, match=r"config\.data\.target_budget_tokens=-1.0"):
        validate_config(c)
    c.data.target_budget_tokens = 129e9
    validate_config(c)
    with pytest.raises(DataError, match="smaller than one batch"):
        build_train_pipeline(_cfg(tmp_path, 100), global_batch_size=8, train_steps=1)
    with pytest.raises(DataError, match="less than one row"):  # a subsample that cannot fill a row
        build_train_pipeline(_cfg(tmp_path, 1e9), global_batch_size=8, train_steps=10)
