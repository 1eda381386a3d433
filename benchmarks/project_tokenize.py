"""Wall-clock and cost of tokenizing Me-LLaMA's 129B tokens once, projected from a measured rate.

    python benchmarks/project_tokenize.py --tokens_per_core_s 450000 --scaling 0.9
    python benchmarks/project_tokenize.py --from_json /tmp/bench_tokenize_beam.json

The rate is what benchmarks/bench_tokenize_beam.py measured on this machine (Beam DirectRunner,
tokens/s per worker core) and `scaling` the measured parallel efficiency (2-worker over 1-worker
throughput, divided by 2). The projection assumes a cluster core tokenizes as fast as one of ours
and the same efficiency at every size (tokenization is per file, with no shuffle of token data), so
it is an estimate to size a cluster, not a measurement. Prices are data
(benchmarks/data/tokenize_cluster_prices.json, with the date they were read).
"""
from __future__ import annotations

import argparse
import json
import os

PRICES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tokenize_cluster_prices.json")


def project(tokens: float, tokens_per_core_s: float, scaling: float, workers: int, cluster: dict) -> dict:
    """Hours and cost of `tokens` on `workers` machines of `cluster` at the measured per-core rate."""
    cores = workers * cluster["vcpus_per_worker"]
    seconds = tokens / (tokens_per_core_s * cores * scaling)
    hours = seconds / 3600
    per_worker_hour = (cluster["vcpus_per_worker"] * cluster["price_per_vcpu_hour"]
                       + cluster["memory_gb_per_worker"] * cluster["price_per_gb_hour"]
                       + cluster["price_per_worker_hour_extra"])
    return {"workers": workers, "cores": cores, "hours": hours, "core_hours": hours * cores,
            "cost": hours * workers * per_worker_hour}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=float, default=129e9, help="tokens to build (Me-LLaMA: 129B)")
    p.add_argument("--tokens_per_core_s", type=float, default=0.0, help="measured tokens/s per worker core")
    p.add_argument("--scaling", type=float, default=1.0, help="measured parallel efficiency (0-1]")
    p.add_argument("--from_json", default="", help="bench_tokenize_beam.py --json output to read both from")
    p.add_argument("--workers", default="8,32,128", help="cluster sizes (machines) to project")
    p.add_argument("--prices", default=PRICES)
    args = p.parse_args(argv)
    rate, scaling = args.tokens_per_core_s, args.scaling
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as f:
            measured = json.load(f)
        rate, scaling = measured["beam_tokens_per_core_s"], measured["scaling_efficiency"]
    if rate <= 0 or not 0 < scaling <= 1:
        p.error("give --tokens_per_core_s > 0 and 0 < --scaling <= 1, or --from_json")
    with open(args.prices, encoding="utf-8") as f:
        prices = json.load(f)
    print(f"{args.tokens:.3g} tokens at {rate:,.0f} tokens/s per core, parallel efficiency {scaling:.2f}; "
          f"prices as of {prices['as_of']} ({prices['currency']}, on demand)")
    print(f"one core: {args.tokens / rate / 3600:,.1f} core-hours before efficiency")
    print("| cluster | machines | cores | wall-clock h | core-hours | cost |")
    print("|---|---|---|---|---|---|")
    for name, cluster in prices["clusters"].items():
        for w in (int(x) for x in args.workers.split(",")):
            r = project(args.tokens, rate, scaling, w, cluster)
            print(f"| {name} | {w} | {r['cores']} | {r['hours']:.2f} | {r['core_hours']:,.0f} | "
                  f"{r['cost']:,.2f} |")
    for name, cluster in prices["clusters"].items():
        print(f"{name}: {cluster['runner']} ({cluster['source']})")


if __name__ == "__main__":
    main()
