"""Instruction tuning (Me-LLaMA stage 2): chat templates, instruction readers, prompt-masked packing.

The training itself runs on the pretraining loop (mellama_jax.train.loop) with the SFT pipeline from
`mellama_jax.sft.data`; LoRA lives in `mellama_jax.model.lora`.
"""
