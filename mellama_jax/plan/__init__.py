"""Cross-accelerator planning: will a config fit, and how fast could it go (``python -m mellama_jax.cli.plan``).

- ``aot``: the real train step compiled ahead of time for a TPU topology (memory, FLOPs, collectives).
- ``hlo``: loop-aware reading of the compiled HLO (XLA's cost analysis counts loop bodies once).
- ``estimate``: the analytic per-device model, for GPU clusters (validated against ``aot``).
- ``hardware``: chip specs (HBM, bandwidths; peak FLOP/s from train/metrics.py).
"""
