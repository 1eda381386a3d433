"""Data: corpus readers and tfds builders, and the pretraining pipeline (tokenizers: mellama_jax.tokenizer).

- `train_tokenizer`: train a LLaMA-style tokenizer.model from configured corpora (tiny experiments).
- `config.default_data_config()` / `demo_data_config()`: `config.data` (sources, mixture, seq_len, ...).
- `sources/`: format readers (PubMed XML, JSONL, text, MIMIC CSV, prepared clinical notes, instruction
  JSONL) with bad-input accounting, the hash-based eval split, and the runtime-configured tfds builder.
- `pipeline.build_train_pipeline(...)`: per-host batches of the source mixture (a `batch_source.BatchSource`,
  what the train loop reads), over `token_cache` (each source tokenized once, memory-mapped from
  `token_store` files), `rows` (concat / packed layouts) and `mixture_order` (each row's source).
- `store/`: the token store (a corpus tokenized once into per-file `.npy` shards, manifest last):
  its format and the builder the Beam command (`mellama_jax.cli.tokenize_beam`) runs per file.
- `clinical/`, `prepare_clinical`: de-identification and preparation of clinical notes.
Nothing here imports TensorFlow at import time.
"""
