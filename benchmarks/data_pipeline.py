"""Pretraining input pipeline throughput (tokens/s per host) beside raw sentencepiece speed.

    python benchmarks/data_pipeline.py                       # demo corpus + synthetic 1 GB corpus
    python benchmarks/data_pipeline.py --size_mb 100 --tfds  # smaller synthetic corpus, tfds path too

"Full pipeline" = read + parse + tokenize + pack + mix + batch: the time from build_train_pipeline
(no token cache) until batches holding every training token once have been produced, divided into
the number of training tokens. Token arrays live on disk (memmapped .npy, see pipeline.py); with
the cache off they go to a scratch dir under the run's data_dir, removed when the pipeline is dropped.
"peak_rss_mib" is the process's peak resident memory so far (it bounds tokenizing memory: the token
arrays themselves are not held in RAM). The synthetic corpus (JSONL, PubMed XML and NOTEEVENTS CSV in the
15:1:4 byte ratio, built from the bundled samples with shuffled words/numbers) is written under
--workdir (default /tmp/mellama_data_bench) and is never part of the repository.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import random
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mellama_jax.data.config import demo_data_config, source_config  # noqa: E402
from mellama_jax.data.pipeline import build_train_pipeline  # noqa: E402
from mellama_jax.data.sources.readers import iter_documents  # noqa: E402
from mellama_jax.data.sources.report import BadInputReport  # noqa: E402
from mellama_jax.tokenizer import Tokenizer, load_tokenizer  # noqa: E402


def sentencepiece_speed(tok: Tokenizer, texts: list[str], threads: int) -> float:
    t0 = time.perf_counter()
    n = sum(len(ids) for ids in tok.encode_batch(texts, bos=False, num_threads=threads))
    return n / (time.perf_counter() - t0)


def run_pipeline(cfg, batch: int, label: str) -> dict:
    t0 = time.perf_counter()
    p = build_train_pipeline(cfg, global_batch_size=batch, process_index=0, process_count=1)
    t_build = time.perf_counter() - t0
    stats = p.stats()
    total = sum(v for k, v in stats.items() if k.endswith("/train_tokens"))
    steps = max(1, total // (batch * cfg.seq_len))
    t1 = time.perf_counter()
    for s in range(steps):
        p.batch(s)
    t_batches = time.perf_counter() - t1
    wall = t_build + t_batches
    res = {"run": label, "train_tokens": int(total), "build_s": round(t_build, 2),
           "batches_s": round(t_batches, 2), "steps": int(steps),
           "pipeline_tokens_per_s": round(total / wall), "batch_only_tokens_per_s":
           round(steps * batch * cfg.seq_len / max(t_batches, 1e-9)),
           "load_s": {n: stats[f"data/{n}/load_seconds"] for n in p.source_names},
           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    print(json.dumps(res), flush=True)
    return res


def _mutate(rng: random.Random, text: str) -> str:
    words = text.split(" ")
    for _ in range(max(1, len(words) // 8)):
        i = rng.randrange(len(words))
        words[i] = rng.choice([str(rng.randint(0, 99999)), words[rng.randrange(len(words))]])
    return " ".join(words)


def make_synthetic(workdir: str, size_mb: int, seed: int = 0) -> dict:
    """Write a corpus of about size_mb MB in the three real formats (15:1:4 by bytes)."""
    rng = random.Random(seed)
    base = {n: [d["text"] for d in iter_documents(n, s, BadInputReport(n))]
            for n, s in demo_data_config().sources.items()}
    target = {"biomedical": size_mb * 15 / 20, "clinical": size_mb * 1 / 20, "general": size_mb * 4 / 20}
    os.makedirs(workdir, exist_ok=True)
    paths = {"biomedical": os.path.join(workdir, "pubmed.xml"), "clinical": os.path.join(workdir, "NOTEEVENTS.csv"),
             "general": os.path.join(workdir, "general.jsonl")}
    marker = os.path.join(workdir, f"DONE_{size_mb}")
    if not os.path.exists(marker):
        from xml.sax.saxutils import escape

        with open(paths["biomedical"], "w", encoding="utf-8") as f:
            f.write('<?xml version="1.0" encoding="utf-8"?>\n<PubmedArticleSet>\n')
            i, written = 0, 0
            while written < target["biomedical"] * 1e6:
                t = _mutate(rng, rng.choice(base["biomedical"]))
                title, _, rest = t.partition("\n")
                rec = (f"<PubmedArticle><MedlineCitation><PMID>{i}</PMID><Article><ArticleTitle>{escape(title)}"
                       f"</ArticleTitle><Abstract><AbstractText>{escape(rest)}</AbstractText></Abstract></Article>"
                       f"</MedlineCitation></PubmedArticle>\n")
                f.write(rec)
                written += len(rec)
                i += 1
            f.write("</PubmedArticleSet>\n")
        with open(paths["clinical"], "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CHARTTIME", "STORETIME", "CATEGORY",
                        "DESCRIPTION", "CGID", "ISERROR", "TEXT"])
            i, written = 0, 0
            while written < target["clinical"] * 1e6:
                t = _mutate(rng, rng.choice(base["clinical"]))
                w.writerow([i, i // 3, i, "2150-01-01", "", "", "Discharge summary", "Report", "", "", t])
                written += len(t) + 60
                i += 1
        with open(paths["general"], "w", encoding="utf-8") as f:
            written = 0
            while written < target["general"] * 1e6:
                line = json.dumps({"text": _mutate(rng, rng.choice(base["general"]))}, ensure_ascii=False) + "\n"
                f.write(line)
                written += len(line)
        open(marker, "w").close()
    return paths


def synthetic_config(paths: dict, workdir: str, reader: str, packing: str, seq_len: int):
    cfg = demo_data_config()
    cfg.sources.biomedical = source_config([paths["biomedical"]], "pubmed_xml", eval_fraction=0.001)
    cfg.sources.clinical = source_config([paths["clinical"]], "mimic_csv", eval_fraction=0.001)
    cfg.sources.general = source_config([paths["general"]], "jsonl", eval_fraction=0.001)
    cfg.data_dir = os.path.join(workdir, f"data_{reader}")
    cfg.reader, cfg.packing, cfg.seq_len, cfg.cache_tokenized = reader, packing, seq_len, False
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size_mb", type=int, default=1024)
    ap.add_argument("--workdir", default="/tmp/mellama_data_bench")
    ap.add_argument("--seq_len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tfds", action="store_true", help="also time the tfds path on the synthetic corpus")
    ap.add_argument("--skip_synthetic", action="store_true")
    args = ap.parse_args()
    print(f"cores: {os.cpu_count()}", flush=True)

    demo = demo_data_config()
    tok = load_tokenizer(demo.tokenizer_path)
    texts = [d["text"] for n, s in demo.sources.items() for d in iter_documents(n, s, BadInputReport(n))] * 20
    for th in (1, 0):
        print(json.dumps({"run": f"sentencepiece_alone_threads={th or os.cpu_count()}",
                          "tokens_per_s": round(sentencepiece_speed(tok, texts, th))}), flush=True)
    for reader in ("direct", "tfds"):
        for packing in ("concat", "pack"):
            cfg = demo_data_config()
            cfg.data_dir = os.path.join(args.workdir, f"demo_{reader}")
            cfg.reader, cfg.packing, cfg.cache_tokenized, cfg.seq_len = reader, packing, False, 512
            run_pipeline(cfg, args.batch, f"demo_{reader}_{packing}")

    if args.skip_synthetic:
        return
    t0 = time.perf_counter()
    paths = make_synthetic(os.path.join(args.workdir, f"synthetic_{args.size_mb}mb"), args.size_mb)
    size = sum(os.path.getsize(p) for p in paths.values())
    print(json.dumps({"run": "synthetic_corpus", "bytes": size, "write_s": round(time.perf_counter() - t0, 1)}),
          flush=True)
    with open(paths["general"], encoding="utf-8") as f:
        sample = [json.loads(line)["text"] for line in itertools.islice(f, 20000)]
    for th in (1, 0):
        print(json.dumps({"run": f"sentencepiece_alone_synthetic_threads={th or os.cpu_count()}",
                          "tokens_per_s": round(sentencepiece_speed(tok, sample, th))}), flush=True)
    run_pipeline(synthetic_config(paths, args.workdir, "direct", "concat", args.seq_len), args.batch,
                 f"synthetic_{args.size_mb}mb_direct_concat")
    if args.tfds:
        t0 = time.perf_counter()
        cfg = synthetic_config(paths, args.workdir, "tfds", "concat", args.seq_len)
        run_pipeline(cfg, args.batch, f"synthetic_{args.size_mb}mb_tfds_concat_with_prepare")
        run_pipeline(cfg, args.batch, f"synthetic_{args.size_mb}mb_tfds_concat_prepared")


if __name__ == "__main__":
    main()
