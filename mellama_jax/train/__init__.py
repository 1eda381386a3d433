"""Training: a small loop with hooks over a jit-compiled step (pretraining and SFT share it).

- `loop`: Trainer (params, optimizer, shardings) and TrainLoop (`add_hook(fn, every=N)`), `run`.
- `hooks`: metrics logging, held-out eval, checkpointing, the non-finite guard, tokens per source.
- `step`, `loss`, `optim`, `state`: the train step, (vocab-parallel) cross-entropy, schedules, state.
- `checkpointing`: Orbax checkpoints with exact resume; `workdir_lock`: one run per workdir.
- `metrics` (FLOPs, MFU, metrics.jsonl, TensorBoard), `synthetic` (batches without data).
Reads data through `data.batch_source.BatchSource`; SFT passes its pipeline in (train imports no sft/).
"""
