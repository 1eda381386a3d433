"""Every `python -m` command of the package (above data, eval, checkpoint; launch.py runs experiments):

  python -m mellama_jax.cli.convert           HF <-> Orbax checkpoints, resize_vocab to an extended tokenizer
  python -m mellama_jax.cli.decontaminate     n-gram overlap of training sources with benchmark test sets
  python -m mellama_jax.cli.extend_tokenizer  add biomedical pieces to a LLaMA tokenizer, with a fertility report
  python -m mellama_jax.cli.prepare_clinical  clinical notes -> scrubbed, filtered, deduplicated JSONL shards
  python -m mellama_jax.cli.tokenize_beam     sources -> a token store (local or bucket), on Apache Beam
  python -m mellama_jax.cli.train_tokenizer   a LLaMA-style sentencepiece tokenizer for small experiments
  python -m mellama_jax.cli.plan              will a config fit: AOT compile for a TPU slice, GPU estimate
  python -m mellama_jax.cli.lm_eval           lm-eval's own command line with the mellama_jax model registered
  python -m mellama_jax.cli.compare_evals     paired comparison of two evaluation runs (bootstrap, McNemar)
  python -m mellama_jax.cli.eval_intervals    recompute an evaluation's bootstrap intervals from its predictions

Each module parses its flags and calls library functions that take plain arguments; nothing below
this package imports it.
"""
