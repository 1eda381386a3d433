"""Evaluation: Me-LLaMA's benchmark suite on any model artifact, and statistics to compare runs.

- `tasks/` (loaders + data cards per benchmark), `prompts` + `prompt_sets/` (prompts as data), `parsing`.
- `engine` (the model side: batching, generation, prefix-shared log-likelihood via model.decode),
  `session` (what both harnesses share), `runner` (the built-in harness; `config.harness` picks one
  from its table), `lm_eval_harness` + `lm_eval_adapter` (lm-eval's harness over our model).
- `metrics`, `bertscore`, `stats` (bootstrap intervals), `compare` (paired comparison),
  `published/` (Me-LLaMA's published figures), `report`, `provenance`.
"""
