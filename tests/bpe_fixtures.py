"""A LLaMA-3-shaped byte-level BPE tokenizer trained in the test and saved the way Hugging Face writes it.

ByteLevel pre-tokenizer with LLaMA-3's split regex, its special tokens, a TemplateProcessing that adds
<|begin_of_text|>, Meta's Jinja chat template in tokenizer_config.json and an EOS list in
generation_config.json (as LLaMA-3 Instruct ships them). Nothing is downloaded.
"""
from __future__ import annotations

import json
import os

# LLaMA-3's pre-tokenizer split (tiktoken's cl100k-like pattern as Meta's tokenizer.json carries it).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|eom_id|>",
            "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# Meta's LLaMA-3 Instruct chat template (tokenizer_config.json as released).
META_LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
# The same with {% generation %} around what an assistant turn writes (for assistant masks).
GENERATION_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}"
    "{% endgeneration %}{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

CORPUS = [
    "Patient is a 67-year-old male with type 2 diabetes mellitus, HbA1c 8.4%, on metformin 1000 mg BID.",
    "Blood pressure 142/91 mmHg; heart rate 88 bpm. Temperature 38.2 °C. SpO2 94% on room air.",
    "Diagnóstico: neumonía adquirida en la comunidad. Café, naïve, résumé, Zürich, São Paulo.",
    "The MRI showed a 1.2 cm lesion in the left frontal lobe 🧠; follow-up in 3 months 📅.",
    "Assessment and plan:\n\n1. Hypertension - continue lisinopril 20 mg daily.\n2. Hyperlipidemia.",
    "    indented   text\twith tabs\t\tand   runs of    spaces\n\n\n",
    "Question: Which drug is first-line for uncomplicated hypertension? Answer: a thiazide diuretic.",
    "Troponin I 0.04 ng/mL (ref < 0.03); ECG: sinus rhythm, no ST elevation. It's the patient's 2nd visit.",
] * 20

CLINICAL_TEXTS = [
    "A 54-year-old woman presents with chest pain radiating to the left arm; troponin 0.12 ng/mL.",
    "Dosage: 12.5 mg q.d. x 14 days (total 175 mg), eGFR 58 mL/min/1.73m².",
    "Niño de 7 años con fiebre y tos — diagnóstico: bronquiolitis. Überweisung an die Kardiologie.",
    "Emoji in notes 🤒😷💉 and CJK 患者 发热 and Greek αβγ.",
    "   leading spaces, trailing spaces   ", "tabs\tand\t\tmore\n\nnew\r\nlines  \n",
    "special tokens inline: <|begin_of_text|>hi<|eot_id|><|start_header_id|>user<|end_header_id|>",
    "", "1234567890 3.14159 -42 1e-5 100,000", "don't won't it's they're I'm we've you'll",
]


def train_llama3_tokenizer(directory: str, vocab_size: int = 600, eos_list: bool = True,
                           chat_template: str = META_LLAMA3_TEMPLATE):
    """Train, then save with PreTrainedTokenizerFast.save_pretrained (+ generation_config.json); returns
    the transformers tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens(SPECIALS)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                   eos_token="<|eot_id|>" if eos_list else "<|end_of_text|>",
                                   clean_up_tokenization_spaces=True, model_max_length=8192)
    fast.chat_template = chat_template
    os.makedirs(directory, exist_ok=True)
    fast.save_pretrained(directory)
    ids = [tok.token_to_id(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")]
    gen = {"bos_token_id": bos, "eos_token_id": ids if eos_list else ids[0], "do_sample": False}
    with open(os.path.join(directory, "generation_config.json"), "w") as f:
        json.dump(gen, f)
    return fast


def make_llama3_model_dir(directory: str, seed: int = 0, **overrides):
    """A tiny random LLaMA-3-shaped transformers model + this tokenizer (vocab = tokenizer size)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fast = train_llama3_tokenizer(directory)
    n = len(fast)
    torch.manual_seed(seed)
    kwargs = dict(vocab_size=n, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0, max_position_embeddings=256,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                  bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, tie_word_embeddings=False)
    kwargs.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**kwargs)).eval()
    model.save_pretrained(directory)
    # save_pretrained writes its own generation_config.json; put the EOS list back.
    train_gen = os.path.join(directory, "generation_config.json")
    with open(train_gen) as f:
        gen = json.load(f)
    gen["eos_token_id"] = [fast.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")]
    with open(train_gen, "w") as f:
        json.dump(gen, f)
    return model, fast
