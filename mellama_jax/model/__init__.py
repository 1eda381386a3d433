"""The LLaMA-family decoder as pure functions over a params pytree.

- `config` (LlamaConfig, the projection list, the enums of kernels and remat policies), `presets`.
- `llama`: linen modules and the training forward; `attention`: one entry, several kernels; `rope`.
- `decode`: the one inference path (KVCache, prefill, decode step, scoring after a cached prefix);
  `generate`: the sampling loop over it.
- `lora`: adapter math inside the projections (its files are checkpoint/lora_io).
Imports nothing else of mellama_jax.
"""
