"""`run(config, workdir)`: evaluate one checkpoint on the selected benchmarks and write
results.json, results.md and predictions/<task>.jsonl.

Per task: load the local file -> Me-LLaMA prompt (optionally k demonstrations from the training
split) -> generation (greedy, or seeded samples with a self-consistency vote; sampling.py) + parsing,
or log-likelihoods (choice tasks: rank the choices; HoC: one
yes/no decision per hallmark, see loglik.py) -> metrics. Everything that
decides a number (data hashes, template text, decoding, order, seed, checkpoint, code, packages)
is written beside it; predictions are a pure function of those, byte for byte.
"""
from __future__ import annotations

import json
import logging
import os
import time
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import jax
import numpy as np

from mellama_jax.data.sources.report import DataError
from mellama_jax.eval import (bertscore, lm_eval_harness, parsing, prompts, provenance, published, report, sampling,
                              session, stats)
from mellama_jax.eval import loglik as ll
from mellama_jax.eval import metrics as M
from mellama_jax.eval.session import resolve_chat_template
from mellama_jax.eval.tasks import (CHOICE, DIAGNOSIS, EXTRACTIVE, MULTILABEL, NER, SUMMARIZATION, TaskSpec,
                                    cards, get_task, resolve_path)
from mellama_jax.eval.tasks.common import Example, FormatError, LoadReport
from mellama_jax.tokenizer import chat_templates as chat

log = logging.getLogger(__name__)

__all__ = ["run", "run_builtin", "prepare_all", "decoding_settings", "HARNESSES", "metrics_from_records", "prepare_task", "load_task_file",
           "prompt_set_name", "PROTOCOLS", "MELLAMA_TASKS", "validate_eval_config", "evaluate_task"]

PROTOCOLS = ("generate", "loglik")
# "all": the twelve benchmarks of Me-LLaMA's evaluation (BC5CDR, NCBI-disease and the clinical cases
# are selected by name).
MELLAMA_TASKS = ("pubmedqa", "medqa", "medmcqa", "emrqa", "i2b2", "ddi", "hoc", "mtsamples", "pubmedsum",
                 "mimiccxr", "bionli", "mednli")


def _task_list(config) -> list[str]:
    tasks = session.task_names(config.tasks, "config.tasks is empty; e.g. --config.tasks=pubmedqa,medqa (or 'all')")
    if tasks == ["all"]:
        tasks = list(MELLAMA_TASKS)
    for t in tasks:
        get_task(t)
    return tasks


def validate_eval_config(config) -> None:
    """Evaluation's own checks; the numeric ranges are config_validation's (run by launch.py)."""
    if not config.checkpoint:
        raise ValueError("config.checkpoint is required: an HF LLaMA directory or an Orbax checkpoint")
    if config.protocol not in PROTOCOLS:
        raise ValueError(f"config.protocol={config.protocol!r}: expected one of {PROTOCOLS}")
    if config.parse_lower_case not in ("mellama", "always"):
        raise ValueError(f"config.parse_lower_case={config.parse_lower_case!r}: expected 'mellama' or 'always'")
    ll.normalized_scores([0.0], [1], ["x"], config.loglik_normalize)
    prompts.load_prompt_set(prompt_set_name(config))
    stats.check_config(config)  # bootstrap settings
    published.check_config(config)  # an unknown published column fails before the model loads


def prompt_set_name(config) -> str:
    """config.prompt_set, or the protocol's default (generate: mellama-release, loglik: mellama-v1)."""
    return config.get("prompt_set") or prompts.default_set(config.protocol)


def _override(config, group: str, task: str) -> str:
    sub = config.get(group)
    return (sub.get(task) or "") if sub is not None else ""


def _load(spec: TaskSpec, path: str, config, report: LoadReport | None = None) -> list[Example]:
    if spec.name == "medmcqa":
        return spec.load(path, cop_base=str(config.medmcqa_cop_base), report=report)
    if spec.name == "i2b2":
        types = tuple(t.strip().lower() for t in config.ner_types.split(",") if t.strip())
        return spec.load(path, types, report=report)
    return spec.load(path, report=report)


def load_task_file(spec: TaskSpec, path: str, config) -> tuple[list[Example], LoadReport]:
    """All usable examples of a task file and its read report; bad records are counted (reason,
    file:line) and the load fails only when more than config.max_bad_fraction of them are bad, or
    when nothing usable is left."""
    report = LoadReport(source=spec.name, strict=False)
    try:
        examples = _load(spec, path, config, report)
    except (FormatError, DataError) as e:
        raise ValueError(f"task {spec.name}: {e}") from None
    report.good = len(examples)
    try:
        report.check(float(config.get("max_bad_fraction", 0.0)))
    except DataError as e:
        raise ValueError(f"task {spec.name}: {path}: {e}".replace("data.max_bad_fraction", "config.max_bad_fraction")
                         ) from None
    if report.num_bad:
        log.warning("%s: %s", path, report.summary())
    return examples, report


def _chat(prompt: str, config) -> str:
    name = resolve_chat_template(config)
    if name == "none":
        return prompt
    jinja, bos, eos = session.checkpoint_template_tokens(config) if name == chat.MODEL_TEMPLATE else (None, None, "")
    return chat.apply_chat_template(name, [{"role": "user", "content": prompt}],
                                    add_generation_prompt=True, jinja=jinja, bos_token=bos, eos_token=eos)


def _demos(spec: TaskSpec, config, k: int, template: prompts.Template) -> tuple[list[Example], dict]:
    if k == 0:
        return [], {"k": 0}
    path = resolve_path(spec, config.data_dir, _override(config, "train_paths", spec.name), split="train")
    pool, _ = load_task_file(spec, path, config)
    pool = prompts.answer_view(template, pool, path)
    if len(pool) < k:
        raise ValueError(f"{spec.name}: few_shot={k} but the training split {path} has {len(pool)} examples")
    rng = np.random.default_rng([int(config.seed), zlib.crc32(spec.name.encode())])
    idx = [int(i) for i in rng.choice(len(pool), size=k, replace=False)]
    demos = [pool[i] for i in idx]
    return demos, {"k": k, "train_path": os.path.abspath(path), "train_sha256": provenance.data_fingerprint(path),
                   "demo_ids": [d.id for d in demos], "selection": "numpy default_rng([seed, crc32(task)]) "
                   "choice without replacement; the same demonstrations for every example"}


@dataclass
class PreparedTask:
    """A task validated and ready for the model: its examples as the prompt set scores them, the
    rendered prompts, and everything results.json says about the data and the prompt."""

    spec: TaskSpec
    path: str
    examples: list[Example]
    n_file: int
    report: LoadReport
    template: prompts.Template
    demos: list[Example]
    few_shot: dict
    use_loglik: bool
    yesno: bool
    texts: list[str]
    size: dict


def prepare_task(spec: TaskSpec, config) -> PreparedTask:
    """Find, read and validate a task's file and render its prompts (no model needed)."""
    path = resolve_path(spec, config.data_dir, _override(config, "task_paths", spec.name))
    examples, report = load_task_file(spec, path, config)
    size = cards.size_warning(spec.name, examples)
    n_file = len(examples)
    if config.max_examples > 0:
        examples = examples[:config.max_examples]
    use_loglik = config.protocol == "loglik" and spec.family in (CHOICE, MULTILABEL)
    yesno = use_loglik and spec.family == MULTILABEL
    pset = prompts.load_prompt_set(prompt_set_name(config))
    template = pset.get(f"{spec.name}-yesno" if yesno else spec.name)
    examples = prompts.answer_view(template, examples, path)
    demos, few_shot = _demos(spec, config, int(config.few_shot), template)
    if yesno:
        texts = [_chat(prompts.render_yesno(template, ex, LABEL_SLOT, demos), config) for ex in examples]
    else:
        cot = _cot_applies(spec, use_loglik, config)
        texts = [_chat(_with_cot(prompts.render(template, ex, demos), cot), config) for ex in examples]
    return PreparedTask(spec, path, examples, n_file, report, template, demos, few_shot, use_loglik, yesno,
                        texts, size)


def decoding_settings(config) -> dict:
    """config.decoding with defaults (configs written before sampled protocols have none)."""
    d = config.get("decoding") or {}
    return {"temperature": float(d.get("temperature", 0.0)), "top_p": float(d.get("top_p", 1.0)),
            "samples": int(d.get("samples", 1)), "seed": int(d.get("seed", 0)), "cot": bool(d.get("cot", False))}


def _cot_applies(spec: TaskSpec, use_loglik: bool, config) -> bool:
    return decoding_settings(config)["cot"] and spec.family == CHOICE and not use_loglik


def _with_cot(prompt: str, cot: bool) -> str:
    return sampling.add_cot(prompt) if cot else prompt


def metrics_from_records(spec: TaskSpec, records: Sequence[dict], choices: Sequence[str] = (),
                         rouge_stemmer: bool = False) -> dict[str, float]:
    """Metrics of a task from its prediction records (what predictions/<task>.jsonl holds)."""
    preds = [r["prediction"] for r in records]
    refs = [r["reference"] for r in records]
    if spec.family == CHOICE:
        return M.choice_metrics(preds, refs)
    if spec.family == MULTILABEL:
        return M.multilabel_metrics(preds, refs, choices)
    if spec.family == EXTRACTIVE:
        return M.squad_metrics(preds, refs)
    if spec.family == NER:
        return M.ner_metrics(preds, refs)
    if spec.family == SUMMARIZATION:
        return M.rouge_metrics(preds, refs, use_stemmer=rouge_stemmer)
    if spec.family == DIAGNOSIS:
        return M.diagnosis_metrics(preds, refs)
    raise ValueError(f"unknown task family {spec.family!r}")


def _parse(spec: TaskSpec, ex: Example, generation: str, config) -> Any:
    lower = spec.lower_case or config.parse_lower_case == "always"
    if spec.family == CHOICE:
        return parsing.parse_choice(generation, ex.choices, lower_case=lower, unique=spec.unique_choice)
    if spec.family == MULTILABEL:
        return parsing.parse_multilabel(generation, ex.choices, lower_case=lower)
    if spec.family == EXTRACTIVE:
        return parsing.parse_extractive(generation)
    if spec.family == NER:
        types = [t.strip() for t in ex.inputs["entity_types"].split(",")]
        return parsing.parse_ner(generation, ex.meta["tokens"], types)
    if spec.family == SUMMARIZATION:
        return generation.strip()
    if spec.family == DIAGNOSIS:
        return parsing.parse_differential(generation, k=5)
    raise ValueError(spec.family)


# What a per-label prompt in predictions/hoc.jsonl holds in place of the hallmark (the Hallmark line
# of the example's Input, and of each demonstration, which is asked about the same hallmark).
LABEL_SLOT = "{label}"


def _multilabel_loglik(engine, t: PreparedTask, config) -> tuple[list[dict], dict, int]:
    """HoC under the log-likelihood protocol: for every example and label, score "yes" and "no" after
    the per-label prompt; the label is predicted iff log p(yes) > log p(no) (unnormalised, see
    loglik.py). The 20 requests of one abstract share its prompt prefix (one prefill). Returns
    (records, decoding description, number of examples with a truncated prompt)."""
    tok = engine.tokenizer
    reqs, owners = [], []
    for i, ex in enumerate(t.examples):
        for lab in ex.choices:
            ids = tok.encode(_chat(prompts.render_yesno(t.template, ex, lab, t.demos), config))
            reqs.extend(ll.binary_requests(tok, ids))
            owners.extend([i, i])
    sums, cut = engine.loglik(reqs, label=t.spec.name, groups=owners, share_prefix=bool(config.share_prefix))
    n_trunc = len({owners[j] for j, c in enumerate(cut) if c})
    answer_tokens = [len(c) for _, c in reqs[:2]]
    records, pos = [], 0
    for i, ex in enumerate(t.examples):
        scores, pred = {}, []
        for lab in ex.choices:
            yes, no = sums[pos], sums[pos + 1]
            pos += 2
            scores[lab] = {"yes": float(yes), "no": float(no)}
            if ll.binary_decision(yes, no):
                pred.append(lab)
        records.append({"id": ex.id, "prompt": t.texts[i], "generation": None, "prediction": pred,
                        "reference": ex.reference, "label_logprobs": scores})
    decoding = {"protocol": "loglik", "normalize": "none",
                "normalize_note": ("binary yes/no decision per label: both answers are the same fixed strings "
                                   "for every label, so length normalisation would only add a constant bias; "
                                   f"config.loglik_normalize={config.loglik_normalize!r} does not apply"),
                "decision": "label present iff log p(yes | per-label prompt) > log p(no | per-label prompt); "
                            "ties: absent",
                "answers": list(ll.BINARY_ANSWERS), "answer_tokens": answer_tokens,
                "continuation": "each answer encoded without BOS after the per-label prompt",
                "per_label_prompt": f"the record's prompt with every {LABEL_SLOT} replaced by the label",
                "prefix_sharing": _sharing_note(config, "the per-label prompts of one example"),
                "requests_per_example": 2 * len(t.examples[0].choices) if t.examples else 0}
    return records, decoding, n_trunc


def _generate_task(engine, t: PreparedTask, config) -> tuple[list[dict], dict, int]:
    """Generate (greedy, or `samples` sampled continuations per example), parse, and for choice tasks
    with several samples vote (self-consistency). Returns (records, decoding block, truncated count)."""
    spec, examples, texts = t.spec, t.examples, t.texts
    d = decoding_settings(config)
    sampled = d["temperature"] > 0
    n_samples = d["samples"] if sampled else 1
    cot = _cot_applies(spec, t.use_loglik, config)
    vote = spec.family == CHOICE and n_samples > 1
    ids = [engine.tokenizer.encode(x) for x in texts]
    keys = sampling.sample_keys(d["seed"], spec.name, len(ids), n_samples) if sampled else None
    flat = [p for p in ids for _ in range(n_samples)]  # example-major, as the keys
    gens, _, n_trunc = engine.generate(flat, int(config.max_new_tokens), label=spec.name,
                                       temperature=d["temperature"], top_p=d["top_p"], keys=keys)
    n_trunc //= n_samples
    records = []
    for i, ex in enumerate(examples):
        outs = gens[i * n_samples:(i + 1) * n_samples]
        parsed = [_parse_generation(spec, ex, g, config, cot) for g in outs]
        rec = {"id": ex.id, "prompt": texts[i], "generation": outs[0], "prediction": parsed[0][0],
               "reference": ex.reference}
        if cot:
            rec["answer_line"] = parsed[0][1]
        if n_samples > 1:
            rec["samples"] = [{"generation": g, "prediction": p, **({"answer_line": a} if cot else {})}
                              for g, (p, a) in zip(outs, parsed)]
            if vote:  # an unparsed sample ("missing") does not vote; no vote at all: missing
                winner, rec["votes"] = sampling.majority_vote([None if p == parsing.MISSING else p
                                                               for p, _ in parsed])
                rec["prediction"] = parsing.MISSING if winner is None else winner
        records.append(rec)
    decoding = {"protocol": "generate",
                "strategy": ("self-consistency" if vote else "sampling") if sampled else "greedy",
                "temperature": d["temperature"], "top_p": d["top_p"] if sampled else None,
                "samples": n_samples, "seed": d["seed"] if sampled else None,
                "sample_keys": sampling.KEY_RULE if sampled else None,
                "vote": sampling.VOTE_RULE if vote else None,
                "scored": ("the voted answer per example (intervals resample examples with that outcome)" if vote
                           else "the first sample; every sample is in predictions" if n_samples > 1
                           else "the one continuation"),
                "cot": cot, "cot_instruction": sampling.COT_INSTRUCTION if cot else None,
                "cot_placement": sampling.COT_PLACEMENT if cot else None,
                "answer_extraction": sampling.EXTRACTION_RULE if cot else None,
                "max_new_tokens": int(config.max_new_tokens), "stop": "eos, or max_new_tokens; a batch "
                "stops as soon as every row has ended", "max_context": int(engine.max_len),
                "batching": "prompts sorted by token length, batches of config.batch_size rows padded "
                            "on the left to a power-of-two length bucket (see compiled_shapes)"}
    return records, decoding, n_trunc


def _parse_generation(spec: TaskSpec, ex: Example, generation: str, config, cot: bool) -> tuple[Any, str | None]:
    """(prediction, the extracted answer line or None): with CoT the last 'Answer: X' line is parsed
    first, then the whole generation (sampling.EXTRACTION_RULE)."""
    if not cot:
        return _parse(spec, ex, generation, config), None
    line = sampling.extract_answer(generation)
    if line is not None:
        pred = _parse(spec, ex, line, config)
        if pred != parsing.MISSING:
            return pred, line
    return _parse(spec, ex, generation, config), line


def _sharing_note(config, what: str) -> str:
    if not config.share_prefix:
        return "off (config.share_prefix=False): every request computed in full"
    return (f"on: {what} share their longest common token prefix, whose KV cache is computed once; "
            "each request's remaining tokens are scored from it")


def evaluate_task(engine, t: PreparedTask, config) -> tuple[dict, list[dict]]:
    t0 = time.time()
    spec, examples, texts = t.spec, t.examples, t.texts
    tok = engine.tokenizer
    records = []
    if t.yesno:
        records, decoding, n_trunc = _multilabel_loglik(engine, t, config)
    elif t.use_loglik:
        ids = [tok.encode(x) for x in texts]
        reqs, owners = [], []
        for i, ex in enumerate(examples):
            for r in ll.choice_requests(tok, ids[i], ex.choices):
                reqs.append(r)
                owners.append(i)
        sums, cut = engine.loglik(reqs, label=spec.name, groups=owners, share_prefix=bool(config.share_prefix))
        n_trunc = len({owners[j] for j, c in enumerate(cut) if c})
        pos = 0
        for i, ex in enumerate(examples):
            n = len(ex.choices)
            s, lens = sums[pos:pos + n], [len(r[1]) for r in reqs[pos:pos + n]]
            pos += n
            scores = ll.normalized_scores(s, lens, ex.choices, config.loglik_normalize)
            records.append({"id": ex.id, "prompt": texts[i], "generation": None,
                            "prediction": ex.choices[ll.pick(scores)], "reference": ex.reference,
                            "choice_logprobs": [float(x) for x in s], "choice_tokens": lens})
        decoding = {"protocol": "loglik", "normalize": config.loglik_normalize,
                    "continuation": "each choice encoded without BOS after the prompt",
                    "prefix_sharing": _sharing_note(config, "the choices of one example")}
    else:
        records, decoding, n_trunc = _generate_task(engine, t, config)
    choices = examples[0].choices if examples else ()
    shared_choices = all(ex.choices == choices for ex in examples)
    if spec.family == CHOICE and not shared_choices:
        for rec, ex in zip(records, examples):
            rec["choices"] = list(ex.choices)
    if t.template.answer == "letter":
        for rec, ex in zip(records, examples):
            rec["option_texts"] = ex.meta.get("option_texts")
    metrics = metrics_from_records(spec, records, choices, rouge_stemmer=bool(config.rouge_stemmer))
    if spec.family == SUMMARIZATION:
        stats.add_rouge_scores(records, bool(config.rouge_stemmer))  # per-example, for intervals
        metrics.update(_bertscore(records, config))
    protocol = "loglik" if t.use_loglik else "generate"
    warnings = []
    if "warning" in t.size:
        warnings.append(t.size["warning"])
    if t.report.num_bad:
        warnings.append(f"{t.report.num_bad} bad record(s) skipped: {dict(t.report.bad)} (see data.read)")
    if n_trunc:
        warnings.append(f"{n_trunc} prompt(s) cut from the left to fit the context window")
    result = {
        "task": spec.name, "display_name": spec.display, "family": spec.family,
        "metrics": metrics, "num_examples": len(records), "num_examples_in_file": t.n_file,
        "protocol": protocol,
        "protocol_note": ("" if protocol == config.protocol else
                          f"{config.protocol} protocol does not apply to {spec.family} tasks; generated"),
        "prompt_set": t.template.set_name, "prompt_set_requested": prompt_set_name(config),
        "prompt_template_id": t.template.id, "prompt_template": t.template.full_text(),
        "prompt_demo_format": t.template.demo, "prompt_source": t.template.source,
        "answer_format": t.template.answer,
        "parse_rule": ({"rule": "first choice (in choice order) contained in the stripped generation",
                        "lower_case": spec.lower_case or config.parse_lower_case == "always",
                        "unique_choice": spec.unique_choice}
                       if spec.family in (CHOICE, MULTILABEL) and protocol == "generate" else {}),
        "choices": list(choices) if shared_choices else "per example (in predictions)",
        "headline_metric": spec.headline,
        "decoding": decoding, "few_shot": t.few_shot,
        "chat_template": resolve_chat_template(config),
        "data": {"path": os.path.abspath(t.path), "sha256": provenance.data_fingerprint(t.path),
                 "read": t.report.to_dict(), "official_test_size": t.size},
        "warnings": warnings,
        "example_order": "file order" + (f", first {config.max_examples}" if config.max_examples > 0 else ""),
        "example_ids_sha256": provenance.ids_sha256([r["id"] for r in records]),
        "truncated_prompts": int(n_trunc),
        "compiled_shapes": engine.take_task_shapes(),
        "seconds": round(time.time() - t0, 3),
    }
    result["intervals"] = stats.intervals(spec.name, spec.family, records, choices, config)
    result.update(published.task_block(spec.name, config))
    return result, records


def _bertscore(records: list[dict], config) -> dict:
    if not config.bertscore_model:
        return {"bertscore_f1": None}
    mean, per_pair = bertscore.bertscore_scores([r["prediction"] for r in records],
                                                [r["reference"] for r in records], config.bertscore_model, layer=int(config.bertscore_layer))
    for r, v in zip(records, per_pair):  # per-example, for intervals
        r.setdefault("scores", {})["bertscore_f1"] = v
    return {"bertscore_f1": mean}


def write_predictions(path: str, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n")


def prepare_all(config) -> dict[str, PreparedTask]:
    """Validate the config and read, check and render every task of config.tasks (no model)."""
    validate_eval_config(config)
    prepared = {}
    for name in _task_list(config):
        prepared[name] = prepare_task(get_task(name), config)
        log.info("%s: %d examples from %s", name, len(prepared[name].examples), prepared[name].path)
    return prepared


def run_builtin(config, workdir: str, engine=None) -> dict:
    """Evaluate config.checkpoint on config.tasks; returns the results dict also written to results.json.

    Every task's file is read, validated and its prompts rendered before the model is loaded, so a
    wrong or partial download fails in seconds, not after hours of model time."""
    prepared = prepare_all(config)
    tasks = list(prepared)
    os.makedirs(os.path.join(workdir, "predictions"), exist_ok=True)
    if engine is None:  # callers running several protocols on one checkpoint pass theirs
        engine = session.engine_from_config(config, show_progress=bool(config.show_progress))
    main = jax.process_index() == 0
    results = {
        **session.results_header(config, engine),
        "protocol": config.protocol,
        "prompt_set": prompt_set_name(config),
        "max_bad_fraction": float(config.get("max_bad_fraction", 0.0)),
        "processes": jax.process_count(),
        "bertscore": ({"model": config.bertscore_model, "layer": int(config.bertscore_layer),
                       "implementation": bertscore.implementation()}
                      if config.bertscore_model else "not computed: set config.bertscore_model to a local "
                                                     "model directory"),
        "tasks": {},
    }
    for name in tasks:
        log.info("evaluating %s", name)
        result, records = evaluate_task(engine, prepared[name], config)
        results["tasks"][name] = result
        if main:  # every process computes the same records; one writes them
            write_predictions(os.path.join(workdir, "predictions", f"{name}.jsonl"), records)
            report.write_results(workdir, results)  # after every task, so a crash keeps what finished
    results["compiled_shapes"] = sorted([list(s) for s in engine.stats["compiled_shapes"]], key=str)
    if main:
        report.write_results(workdir, results)
    return results


# config.harness -> the function that runs it: the built-in Me-LLaMA suite (config.tasks) or
# lm-evaluation-harness tasks through the mellama_jax adapter (config.lm_eval_tasks).
HARNESSES = {"builtin": run_builtin, "lm_eval": lm_eval_harness.run}


def run(config, workdir: str) -> dict:
    """Evaluate config.checkpoint with the harness config.harness names (default "builtin"); returns
    the results dict also written to workdir/results.json."""
    harness = config.get("harness", "builtin")
    if harness not in HARNESSES:
        raise ValueError(f"config.harness={harness!r}: expected one of {sorted(HARNESSES)}")
    return HARNESSES[harness](config, workdir)
