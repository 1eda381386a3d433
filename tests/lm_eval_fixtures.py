"""Fixtures for the lm-eval adapter tests: a tiny random HF LLaMA directory that both lm-eval's `hf`
backend (tokenizer.json) and mellama-jax (tokenizer.model) read, and local task YAMLs in the form a
user writes them (dataset_path json + data_files). Helpers only (no tests here)."""
from __future__ import annotations

import json
import os

from eval_fixtures import WORDS as FIXTURE_WORDS

# A multiple-choice, a perplexity and a generation task over local JSON-lines files.
MC_YAML = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

PPL_YAML = """task: tiny_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
metadata:
  version: 1.0
"""

GEN_YAML = """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until:
    - "."
    - "\\n\\n"
  max_gen_toks: 12
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

WORDS = "patient fever cough aspirin warfarin chest pain cancer cell drug effect heart failure sepsis test".split()


def write_hf_llama_with_tokenizer(directory: str, seed: int = 0, max_positions: int = 64, vocab_size: int = 400,
                                  layers: int = 2, hidden: int = 32):
    """A random LlamaForCausalLM + tokenizer.model + the matching tokenizer.json (HF-dir layout)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mellama_jax.tokenizer import write_sentencepiece_hf_files

    import random
    import shutil

    from mellama_jax.data.train_tokenizer import train_tokenizer

    os.makedirs(directory, exist_ok=True)
    rng = random.Random(seed)
    corpus = [" ".join(rng.choice(FIXTURE_WORDS) for _ in range(12)) + " : . , ? Note Summary Question Answer"
              for _ in range(2000)]
    spm_dir = os.path.join(directory, "_spm")
    model_file = train_tokenizer(corpus, spm_dir, vocab_size=vocab_size, num_threads=1)
    with open(os.path.join(spm_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        tokenizer_config = json.load(f)
    write_sentencepiece_hf_files(model_file, directory, tokenizer_config)
    shutil.rmtree(spm_dir)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=max_positions, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random init gives near-uniform logits; sharpen them so argmaxes are not ties
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(directory)
    return directory


def _jsonl(path: str, rows: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def write_tasks(directory: str, n: int = 6, long_doc_words: int = 0) -> str:
    """Three task YAMLs (tiny_mc, tiny_ppl, tiny_gen) and their JSONL files; returns the include path."""
    import random

    rng = random.Random(0)
    os.makedirs(directory, exist_ok=True)
    sent = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    mc = [{"question": sent(5) + "?", "choices": [sent(1), sent(2), sent(3), " " + sent(1)], "label": i % 4}
          for i in range(n)]
    ppl = [{"text": sent(8 + 3 * i)} for i in range(n)]
    if long_doc_words:
        ppl.append({"text": sent(long_doc_words)})
    gen = [{"prompt": f"Note: {sent(4)}\nSummary:", "answer": sent(2)} for _ in range(n)]
    for name, rows, yaml in (("tiny_mc", mc, MC_YAML), ("tiny_ppl", ppl, PPL_YAML), ("tiny_gen", gen, GEN_YAML)):
        data = _jsonl(os.path.join(directory, f"{name}.jsonl"), rows)
        with open(os.path.join(directory, f"{name}.yaml"), "w", encoding="utf-8") as f:
            f.write(yaml.format(data=data))
    return directory
