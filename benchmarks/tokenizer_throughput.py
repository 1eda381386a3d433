"""Tokenizer throughput in the data pipeline's call (tokens/s): the Hugging Face BPE backend against the
sentencepiece backend on the same text, and against transformers' fast tokenizer on the same files.

    python benchmarks/tokenizer_throughput.py [--repeat 40] [--threads 0]

Text: the bundled samples (mellama_jax/data/samples: PubMed XML, clinical notes, general JSONL), read
by the project's readers and repeated `--repeat` times. Tokenizers: the bundled 2,000-piece sentencepiece
tokenizer.model, and a LLaMA-3-shaped byte-level BPE (LLaMA-3's split regex, its special tokens, BOS
through TemplateProcessing) trained here on the same samples to the same 2,000-token vocabulary and
saved with transformers' save_pretrained (nothing is downloaded). Every row encodes the documents as
the pipeline does (`Tokenizer.encode_batch(texts, bos=True, eos=True)`), in batches of `--batch` texts;
transformers' row is `tokenizer(texts, add_special_tokens=True)["input_ids"]` plus EOS, the same ids.
tokenizers' Rust pool uses all cores (RAYON_NUM_THREADS caps it); sentencepiece gets `--threads`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mellama_jax.data.config import SAMPLES_DIR  # noqa: E402
from mellama_jax.data.extend_tokenizer import default_eval_sets, read_texts  # noqa: E402
from mellama_jax.tokenizer import load_tokenizer  # noqa: E402

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def sample_texts() -> list[str]:
    texts = list(read_texts("pubmed", [os.path.join(SAMPLES_DIR, "pubmed", "*.xml*")]))
    for name, (paths, fmt, keys) in default_eval_sets().items():
        texts += list(read_texts(name, paths, fmt, **keys))
    return [t for t in texts if t.strip()]


def train_bpe(texts: list[str], vocab_size: int, directory: str) -> None:
    """A LLaMA-3-shaped byte-level BPE of `texts`, saved as transformers writes it."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIALS), show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens(SPECIALS)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                            eos_token="<|end_of_text|>").save_pretrained(directory)


def rate(fn, texts: list[str], batch: int, rounds: int) -> float:
    """Best-of-`rounds` tokens/s of fn over `texts` in batches."""
    best = 0.0
    for _ in range(rounds):
        t0, n = time.perf_counter(), 0
        for i in range(0, len(texts), batch):
            n += sum(len(ids) for ids in fn(texts[i:i + batch]))
        best = max(best, n / (time.perf_counter() - t0))
    return best


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=40, help="times the sample text is repeated")
    p.add_argument("--batch", type=int, default=256, help="texts per encode_batch call")
    p.add_argument("--threads", type=int, default=0, help="sentencepiece threads (0: all cores)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    from transformers import AutoTokenizer

    base = sample_texts()
    texts = base * args.repeat
    sp = load_tokenizer(os.path.join(SAMPLES_DIR, "tokenizer.model"))
    with tempfile.TemporaryDirectory() as d:
        train_bpe(base, sp.vocab_size, d)
        bpe = load_tokenizer(d)
        hf = AutoTokenizer.from_pretrained(d)
        eos = bpe.eos_id
        assert bpe.encode_batch(base[:50], bos=True, eos=True) == [
            ids + [eos] for ids in hf(base[:50], add_special_tokens=True)["input_ids"]]
        rows = {
            "bpe backend (tokenizers)": rate(lambda b: bpe.encode_batch(b, bos=True, eos=True), texts, args.batch,
                                             args.rounds),
            "sentencepiece backend": rate(lambda b: sp.encode_batch(b, bos=True, eos=True, num_threads=args.threads),
                                          texts, args.batch, args.rounds),
            "transformers fast tokenizer": rate(lambda b: [ids + [eos] for ids in hf(b)["input_ids"]], texts,
                                                args.batch, args.rounds),
        }
    result = {"documents": len(texts), "characters": sum(map(len, texts)), "cpus": os.cpu_count(),
              "load_avg_1m": round(os.getloadavg()[0], 2), "vocab": sp.vocab_size,
              "tokens_per_s": {k: round(v) for k, v in rows.items()}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
