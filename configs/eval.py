"""Evaluate a checkpoint on the Me-LLaMA benchmark suite.

    python launch.py --config configs/eval.py --workdir DIR --config.checkpoint=PATH \
        --config.tasks=pubmedqa,medqa --config.data_dir=/data/benchmarks [--config.max_examples=50]

PATH: a Hugging Face LLaMA directory or an Orbax checkpoint (converter output, training workdir).
Each task's file is found under data_dir (<task>.<ext>, <task>_test.<ext> or <task>/test.<ext>) or
given explicitly with --config.task_paths.<task>=FILE.
"""
from __future__ import annotations

import ml_collections

from mellama_jax.eval.tasks import LOADER_DEFAULTS, TASKS
from mellama_jax.sharding import DEFAULT_RULES

TASK_NAMES = tuple(TASKS)  # every benchmark the harness can load, in its registry's order


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "eval"
    c.seed = 0
    c.checkpoint = ""
    c.tokenizer_path = ""  # "" = the tokenizer.model beside the checkpoint
    c.dtype = ""  # compute dtype override ("bfloat16", "float32"); "" = the checkpoint's
    c.hash_weights = False  # also content-hash big weight files in results.json (slow for 7B+)

    c.tasks = "all"  # comma-separated task names, or "all" (the twelve Me-LLaMA benchmarks)
    # "builtin": the Me-LLaMA suite (c.tasks); "lm_eval": lm-evaluation-harness tasks (c.lm_eval_tasks)
    # through the mellama_jax adapter, same results.json/results.md layout (README "lm-eval").
    c.harness = "builtin"
    c.lm_eval_tasks = ""  # comma-separated lm-eval task names, e.g. "pubmedqa_mellama,mmlu_clinical_knowledge"
    c.lm_eval_include_path = ""  # comma-separated directories of extra task YAMLs (local data)
    c.lm_eval_metadata = ""  # JSON object handed to the task builders (lm-eval's --metadata)
    c.lm_eval_bootstrap_iters = 1000  # lm-eval's stderr bootstrap (0 = no stderr)
    c.lm_eval_max_gen_toks = 256  # generate_until tasks that do not set max_gen_toks
    # A record that does not fit its format is skipped and counted (reason, file:line, in results.json);
    # a task fails when more than this share of its records is bad (as the data pipeline's rule).
    c.max_bad_fraction = LOADER_DEFAULTS["max_bad_fraction"]
    c.data_dir = ""
    c.task_paths = ml_collections.ConfigDict({t: "" for t in TASK_NAMES})
    c.train_paths = ml_collections.ConfigDict({t: "" for t in TASK_NAMES})  # few-shot pools
    c.max_examples = 0  # >0: the first N examples of each task (quick runs)

    # "generate": Me-LLaMA's protocol (greedy, parse the first choice string found);
    # "loglik": rank the answer choices by log-likelihood (choice tasks), or for HoC decide each hallmark
    # by log p("yes") > log p("no") after a per-label prompt; extractive QA, NER, summarization and
    # diagnosis still generate (results.json says so per task).
    c.protocol = "generate"
    c.loglik_normalize = "tokens"  # none | tokens | chars (choice tasks; HoC's yes/no compares raw sums)
    # Prompt set (mellama_jax/eval/prompt_sets/<name>.json, or a path to one): "" = the protocol's
    # default, "mellama-release" (Me-LLaMA's released instructions) for generate, "mellama-v1" for loglik.
    c.prompt_set = ""
    c.share_prefix = True  # loglik: one KV-cache prefill per prompt, continuations scored from it
    c.max_new_tokens = 256
    # Generation protocol (generate protocol only; README "Sampled protocols"). temperature 0 = greedy
    # (Me-LLaMA's); > 0 samples `samples` continuations per example, each drawn with the key
    # fold_in(fold_in(fold_in(key(seed), crc32(task)), example index), sample index), so outputs do not
    # depend on batch_size or bucketing. Choice tasks score the majority vote over the samples
    # (self-consistency). cot=True adds a think-step-by-step instruction and reads the answer from the
    # last "Answer: X" line (choice tasks).
    c.decoding = ml_collections.ConfigDict(dict(temperature=0.0, top_p=1.0, samples=1, seed=0, cot=False))
    c.batch_size = 8
    c.few_shot = 0  # k demonstrations from the training split
    # "auto": the template the checkpoint carries (an SFT workdir or its export), else none;
    # or a name from mellama_jax.tokenizer.chat_templates: none | mellama | llama2.
    c.chat_template = "auto"
    # "mellama": lower-case per task as Me-LLaMA's harness did; "always": lower-case every task.
    c.parse_lower_case = "mellama"
    c.medmcqa_cop_base = LOADER_DEFAULTS["medmcqa_cop_base"]  # auto | 0 | 1
    c.ner_types = LOADER_DEFAULTS["ner_types"]
    c.rouge_stemmer = False  # HF evaluate's rouge default, which Me-LLaMA used
    c.bertscore_model = ""  # a local encoder directory (e.g. roberta-large); "" = not computed
    c.bertscore_layer = -1  # hidden layer whose embeddings are matched (-1 = last)
    c.show_progress = True
    # Confidence intervals on every metric (results.json "intervals", results.md brackets): percentile
    # bootstrap over examples, draws numpy default_rng([seed, crc32(task)]); iterations=0 disables.
    c.bootstrap = ml_collections.ConfigDict(dict(iterations=1000, seed=0, confidence=0.95))
    # Published figures beside ours in results.md: a model column of Me-LLaMA's zero-shot Table 3
    # (mellama_jax/eval/published/), e.g. "me_llama_13b_chat"; "" = none.
    c.published = ml_collections.ConfigDict(dict(model=""))

    c.use_mesh = True
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.sharding = ml_collections.ConfigDict()
    c.sharding.rules = DEFAULT_RULES
    c.distributed = ml_collections.ConfigDict()
    c.distributed.mode = "auto"
    c.distributed.coordinator_address = ""
    c.distributed.num_processes = -1
    c.distributed.process_id = -1

    if variant == "quick":
        c.max_examples = 20
    elif variant == "loglik":
        c.protocol = "loglik"
    elif variant == "self_consistency":  # Wang et al. 2023's setting: 5 samples at temperature 0.7
        c.decoding.temperature, c.decoding.samples = 0.7, 5
    elif variant:
        raise ValueError(f"configs/eval.py: unknown variant {variant!r} (known: quick, loglik, self_consistency)")
    return c
