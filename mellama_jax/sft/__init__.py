"""Instruction tuning (Me-LLaMA stage 2): instruction readers, prompt-masked packing.

The training itself runs on the pretraining loop (mellama_jax.train.loop) with the SFT pipeline from
`mellama_jax.sft.data`; LoRA lives in `mellama_jax.model.lora`; the chat templates, which evaluation
and export share, in `mellama_jax.tokenizer.chat_templates`.
"""
