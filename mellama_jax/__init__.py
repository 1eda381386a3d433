"""mellama-jax: continual pretraining, instruction tuning and evaluation of LLaMA-2 on medical text.

The public names are imported on first use (a module ``__getattr__``), so that `import mellama_jax`
stays cheap (jax and flax take seconds to import) and never pulls in TensorFlow (the GPU images
carry no TensorFlow).
"""
from typing import Any

__all__ = ["Llama", "LlamaConfig", "load_pretrained", "generate", "get_preset"]


def __getattr__(name: str) -> Any:
    if name == "Llama":
        from mellama_jax.model.llama import Llama
        return Llama
    if name == "LlamaConfig":
        from mellama_jax.model.config import LlamaConfig
        return LlamaConfig
    if name == "get_preset":
        from mellama_jax.model.presets import get_preset
        return get_preset
    if name == "generate":
        from mellama_jax.model.generate import generate
        return generate
    if name == "load_pretrained":
        from mellama_jax.checkpoint.load import load_pretrained
        return load_pretrained
    raise AttributeError(f"module 'mellama_jax' has no attribute {name!r}")
