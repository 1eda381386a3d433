"""The tokenizer layer: one `Tokenizer` interface (sentencepiece backend), its files in and out in
Hugging Face's names, tokenizer <-> model checks, and the chat templates (`chat_templates`).

It imports nothing else of mellama_jax, so data, SFT, checkpoint, eval and export all build on it.
"""
from mellama_jax.tokenizer.base import BACKENDS, Tokenizer, load_tokenizer, tokenizer_file_in
from mellama_jax.tokenizer.checks import (MAX_VOCAB_MULTIPLE, TokenizerMismatchError, check_tokenizer,
                                          padded_vocab_sizes)
from mellama_jax.tokenizer.files import (CHAT_TEMPLATE_FILE, TOKENIZER_CONFIG, TOKENIZER_FILES, copy_tokenizer_files,
                                         file_sha256, llama_tokenizer_config, read_chat_template, read_json,
                                         tokenizer_files, write_chat_template, write_json,
                                         write_llama_tokenizer_config)
from mellama_jax.tokenizer.sentencepiece_hf import (UnsupportedTokenizerError, read_model_proto, tokenizer_json,
                                                    write_sentencepiece_hf_files)
from mellama_jax.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer

__all__ = [
    "Tokenizer", "SentencePieceTokenizer", "BACKENDS", "load_tokenizer", "tokenizer_file_in",
    "TokenizerMismatchError", "MAX_VOCAB_MULTIPLE", "padded_vocab_sizes", "check_tokenizer",
    "TOKENIZER_FILES", "TOKENIZER_CONFIG", "CHAT_TEMPLATE_FILE", "file_sha256", "read_json", "write_json",
    "tokenizer_files", "llama_tokenizer_config", "write_llama_tokenizer_config", "copy_tokenizer_files",
    "read_chat_template", "write_chat_template",
    "UnsupportedTokenizerError", "read_model_proto", "tokenizer_json", "write_sentencepiece_hf_files",
]
