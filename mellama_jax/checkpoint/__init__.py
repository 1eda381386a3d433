"""Model artifacts on disk: what every stage hands to the next (config + weights + tokenizer + provenance).

- `artifact`: `resolve_artifact` for HF directories, converter outputs, training workdirs and their steps.
- `hf`, `hf_dir`, `safetensors_io`: Hugging Face layouts <-> our stacked-layer params, read and written.
- `orbax_io`: params items; `lora_io`: LoRA adapters' PEFT format and checkpoint files.
- `convert`: HF <-> Orbax and resize_vocab (the work behind `python -m mellama_jax.cli.convert`).
- `model_spec`, `load`, `vocab`: the model an experiment config means, `load_pretrained`, vocab rows.
Imports model/ and tokenizer/ only.
"""
