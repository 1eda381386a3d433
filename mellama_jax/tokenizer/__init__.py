"""The tokenizer layer: one `Tokenizer` interface (sentencepiece and Hugging Face BPE backends), its files in and out in
Hugging Face's names, tokenizer <-> model checks, and the chat templates (`chat_templates`).

It imports nothing else of mellama_jax but the filesystem layer (fs, for a tokenizer in a bucket), so
data, SFT, checkpoint, eval and export all build on it.
"""
from mellama_jax.tokenizer.base import (BACKENDS, TOKENIZER_FILES_TEXT, Tokenizer, load_tokenizer,
                                        local_tokenizer_path, tokenizer_file_in)
from mellama_jax.tokenizer.bpe_tokenizer import BPETokenizer
from mellama_jax.tokenizer.checks import (MAX_VOCAB_MULTIPLE, TokenizerMismatchError, check_tokenizer,
                                          padded_vocab_sizes)
from mellama_jax.tokenizer.files import (BPE_FILES, CHAT_TEMPLATE_FILE, GENERATION_CONFIG, TOKENIZER_CONFIG,
                                         TOKENIZER_FILES, TOKENIZER_JSON, copy_tokenizer_files,
                                         file_sha256, llama_tokenizer_config, read_chat_template, read_json,
                                         tokenizer_files, write_chat_template, write_json,
                                         write_llama_tokenizer_config)
from mellama_jax.tokenizer.sentencepiece_hf import (UnsupportedTokenizerError, read_model_proto, tokenizer_json,
                                                    write_sentencepiece_hf_files)
from mellama_jax.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer

__all__ = [
    "Tokenizer", "SentencePieceTokenizer", "BPETokenizer", "BACKENDS", "TOKENIZER_FILES_TEXT", "load_tokenizer",
    "tokenizer_file_in", "local_tokenizer_path", "TOKENIZER_JSON", "BPE_FILES", "GENERATION_CONFIG",
    "TokenizerMismatchError", "MAX_VOCAB_MULTIPLE", "padded_vocab_sizes", "check_tokenizer",
    "TOKENIZER_FILES", "TOKENIZER_CONFIG", "CHAT_TEMPLATE_FILE", "file_sha256", "read_json", "write_json",
    "tokenizer_files", "llama_tokenizer_config", "write_llama_tokenizer_config", "copy_tokenizer_files",
    "read_chat_template", "write_chat_template",
    "UnsupportedTokenizerError", "read_model_proto", "tokenizer_json", "write_sentencepiece_hf_files",
]
