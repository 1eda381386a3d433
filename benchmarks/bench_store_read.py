"""Read throughput of training batches from a token store: local disk vs an S3 server vs the token cache.

    python benchmarks/bench_store_read.py                        # ~40 MB of text, 200 steps of 8 x 2048
    python benchmarks/bench_store_read.py --size_mb 10 --steps 50 --cache_mb 16

Builds a store of a generated corpus (JSONL in 4 files, words of the bundled samples shuffled; written
under --workdir, never part of the repository) with the serial builder and the bundled tokenizer,
then times `pipeline.batch(step)` for --steps steps of --batch rows of --seq_len tokens:
  - in-process: today's path (data.token_store=""), reading the memory-mapped token cache that its
    first build tokenized (the tokenizing itself is timed apart as "launch_s");
  - local store: data.token_store=<dir> (memory-mapped shards);
  - S3 store: the same files uploaded to a moto S3 server this script starts in a subprocess on the
    loopback, read by ranged GETs through the block cache (data.store_cache_mb).
A loopback server has no network latency or bandwidth limit, and moto serves from Python, so the S3
figure says what the reader costs (requests, copies, cache), not what a real bucket would give.
Prints one JSON line per run and a summary with the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mellama_jax import fs  # noqa: E402
from mellama_jax.data.config import SAMPLES_DIR, demo_data_config, source_config  # noqa: E402
from mellama_jax.data.pipeline import build_train_pipeline  # noqa: E402
from mellama_jax.data.store.build import build_store_serial  # noqa: E402
from mellama_jax.tokenizer import load_tokenizer  # noqa: E402


def make_corpus(workdir: str, size_mb: float, files: int = 4, seed: int = 0) -> list[str]:
    """JSONL files of about size_mb MB in all: documents of 200-3000 words drawn from the samples."""
    rng = random.Random(seed)
    words = []
    for name in sorted(os.listdir(os.path.join(SAMPLES_DIR, "general"))):
        with open(os.path.join(SAMPLES_DIR, "general", name), encoding="utf-8") as f:
            words += [w for line in f for w in json.loads(line).get("text", "").split()]
    os.makedirs(workdir, exist_ok=True)
    paths, per_file, doc = [], size_mb * 1e6 / files, 0
    for i in range(files):
        path = os.path.join(workdir, f"part{i:02d}.jsonl")
        written = 0
        with open(path, "w", encoding="utf-8") as f:
            while written < per_file:
                line = json.dumps({"id": f"d{doc}", "text": " ".join(rng.choices(words, k=rng.randint(200, 3000)))})
                f.write(line + "\n")
                written += len(line) + 1
                doc += 1
        paths.append(path)
    return paths


def data_config(workdir: str, paths: list[str], seq_len: int, **kw):
    c = demo_data_config()
    c.sources = {"general": source_config(paths, "jsonl", eval_fraction=0.01)}
    c.mixture = {"general": 1.0}
    c.data_dir = os.path.join(workdir, "data")
    c.reader, c.seq_len, c.packing = "direct", seq_len, "concat"
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def time_batches(label: str, cfg, tok, args) -> dict:
    t0 = time.perf_counter()
    p = build_train_pipeline(cfg, global_batch_size=args.batch, tokenizer=tok)
    launch = time.perf_counter() - t0
    t1 = time.perf_counter()
    for step in range(args.steps):
        p.batch(step)
    dt = time.perf_counter() - t1
    rows = args.steps * args.batch
    stats = p.stats()
    res = {"run": label, "launch_s": round(launch, 2), "batches_s": round(dt, 3), "rows_per_s": round(rows / dt),
           "tokens_per_s": round(rows * args.seq_len / dt),
           "mb_fetched": round(stats.get("data/store/bytes_fetched", 0) / 1e6, 2),
           "cache_hits": stats.get("data/store/cache_hits", 0), "cache_misses": stats.get("data/store/cache_misses", 0)}
    print(json.dumps(res), flush=True)
    return res


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError(f"moto server did not start on {endpoint}")
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"})
    fs.reset()
    return proc, endpoint


def upload(local_dir: str, endpoint: str, bucket: str) -> str:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    for root, _, files in os.walk(local_dir):
        for name in files:
            path = os.path.join(root, name)
            client.upload_file(path, bucket, "store/" + os.path.relpath(path, local_dir).replace(os.sep, "/"))
    return f"s3://{bucket}/store"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/mellama_store_read_bench")
    ap.add_argument("--size_mb", type=float, default=40.0, help="text of the generated corpus")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq_len", type=int, default=2048)
    ap.add_argument("--cache_mb", type=int, default=256, help="data.store_cache_mb of the S3 run")
    args = ap.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    paths = make_corpus(os.path.join(args.workdir, "corpus"), args.size_mb)
    cfg = data_config(args.workdir, paths, args.seq_len)
    tok = load_tokenizer(cfg.tokenizer_path)
    store_dir = os.path.join(args.workdir, "store")
    t0 = time.perf_counter()
    manifest = build_store_serial(cfg, tok, store_dir, command="bench_store_read")
    build_s = time.perf_counter() - t0
    tokens = sum(manifest["sources"]["general"]["splits"][s]["tokens"] for s in ("train", "eval"))
    store_mb = sum(os.path.getsize(os.path.join(r, f)) for r, _, fl in os.walk(store_dir) for f in fl) / 1e6
    print(json.dumps({"store_tokens": tokens, "store_mb": round(store_mb, 1), "serial_build_s": round(build_s, 1),
                      "serial_build_tokens_per_s": round(tokens / build_s)}), flush=True)

    in_proc = time_batches("in-process token cache", cfg, tok, args)
    local_cfg = data_config(args.workdir, paths, args.seq_len, token_store=store_dir)
    local = time_batches("local store", local_cfg, tok, args)
    proc, endpoint = start_moto()
    try:
        t0 = time.perf_counter()
        url = upload(store_dir, endpoint, "bench")
        upload_s = time.perf_counter() - t0
        remote = time_batches("S3 store (moto, loopback)",
                              data_config(args.workdir, paths, args.seq_len, token_store=url,
                                          store_cache_mb=args.cache_mb), tok, args)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"\nstore: {tokens:,} tokens, {store_mb:.1f} MB; serial build {build_s:.1f} s "
          f"({tokens / build_s:,.0f} tokens/s); upload to moto {upload_s:.1f} s")
    print(f"{args.steps} steps of {args.batch} x {args.seq_len}:")
    print("| run | launch s | rows/s | tokens/s | MB fetched |")
    print("|---|---|---|---|---|")
    for r in (in_proc, local, remote):
        print(f"| {r['run']} | {r['launch_s']} | {r['rows_per_s']:,} | {r['tokens_per_s']:,} | {r['mb_fetched']} |")
    print(f"S3 / local store tokens/s: {remote['tokens_per_s'] / local['tokens_per_s']:.2f}; "
          f"local store / in-process: {local['tokens_per_s'] / in_proc['tokens_per_s']:.2f}; "
          f"launch (tokenize) in-process {in_proc['launch_s']} s vs store {local['launch_s']} s")


if __name__ == "__main__":
    main()
