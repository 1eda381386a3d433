"""`--config.harness=lm_eval`: run lm-eval tasks through the `mellama_jax` adapter from launch.py and
write the built-in harness's layout (results.json, results.md, predictions/<task>.jsonl).

    python launch.py --config configs/eval.py --workdir DIR --config.checkpoint=PATH \
        --config.harness=lm_eval --config.lm_eval_tasks=pubmedqa_mellama,my_task \
        --config.lm_eval_include_path=/my/task/yamls --config.data_dir=/data/benchmarks

Provenance besides the checkpoint / code / package fields of the built-in harness: lm-eval's version,
each task's version, its config as lm-eval resolved it, and a task hash (sha256 over every sample's
document, prompt and target hashes, as lm-eval's EvaluationTracker computes it), so a rerun on
changed data or prompts is visible.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import time
from typing import Any

import jax

from mellama_jax.eval import provenance, report, session
from mellama_jax.eval.tasks import get_task, resolve_path

log = logging.getLogger(__name__)

__all__ = ["run", "task_hash", "markdown"]


def _metadata(config) -> dict:
    """--metadata for the task builders: config.lm_eval_metadata (JSON) plus the built-in harness's
    PubMedQA file when config.data_dir / config.task_paths.pubmedqa name one."""
    raw = config.get("lm_eval_metadata") or ""
    try:
        meta = json.loads(raw) if raw else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"config.lm_eval_metadata is not valid JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(meta, dict):
        raise ValueError("config.lm_eval_metadata: expected a JSON object")
    if "pubmedqa_file" not in meta and (config.get("data_dir") or config.task_paths.get("pubmedqa")):
        try:
            meta["pubmedqa_file"] = os.path.abspath(resolve_path(get_task("pubmedqa"), config.data_dir,
                                                                 config.task_paths.get("pubmedqa") or ""))
        except FileNotFoundError:
            pass
    if config.get("prompt_set") and "prompt_set" not in meta:
        meta["prompt_set"] = config.prompt_set
    return meta


def task_hash(samples: list[dict]) -> str:
    """lm-eval's task hash: sha256 of the concatenated per-sample doc, prompt and target hashes."""
    return hashlib.sha256("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"]
                                  for s in samples).encode("utf-8")).hexdigest()


def _metrics(raw: dict) -> dict[str, Any]:
    """lm-eval's "acc,none" / "acc_stderr,none" keys as "acc" / "acc_stderr" (filter kept when not none)."""
    out = {}
    for key, value in raw.items():
        if "," not in key:
            continue
        metric, flt = key.split(",", 1)
        out[metric if flt == "none" else f"{metric}[{flt}]"] = None if value == "N/A" else value
    return out


def _records(samples: list[dict]) -> list[dict]:
    out = []
    for s in samples:
        args = s.get("arguments") or []
        out.append({"id": s["doc_id"], "prompt": args[0][0] if args and args[0] else None,
                    "target": s.get("target"), "responses": s.get("resps"),
                    "filtered_responses": s.get("filtered_resps"),
                    "metrics": {m: s.get(m) for m in s.get("metrics", [])},
                    "doc_hash": s.get("doc_hash"), "prompt_hash": s.get("prompt_hash")})
    return out


def _data_hashes(cfg: dict, metadata: dict) -> dict[str, dict[str, str]]:
    """sha256 of every local file a task read: its YAML's data_files, or the files named in --metadata
    (the custom builders' inputs, e.g. pubmedqa_file)."""
    paths: list[str] = []
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    for v in (files.values() if isinstance(files, dict) else [files]):
        paths += v if isinstance(v, list) else [v] if isinstance(v, str) else []
    if cfg.get("custom_dataset"):
        paths += [v for k, v in metadata.items() if k.endswith("_file") and isinstance(v, str)]
    return {os.path.abspath(p): provenance.data_fingerprint(p) for p in paths if os.path.exists(p)}


def _fmt(v) -> str:
    return "not computed" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown(results: dict) -> str:
    """The built-in results.md table; lm-eval's values as lm-eval reports them (fractions, perplexities)."""
    lines = ["# Evaluation results", "",
             f"Checkpoint: `{results['checkpoint']['path']}` (sha256 `{results['checkpoint']['sha256'][:16]}`), "
             f"code `{(results['code'].get('commit') or 'unknown')[:12]}`"
             f"{' (dirty)' if results['code'].get('dirty') else ''}, seed {results['seed']}. "
             f"lm-eval {results['lm_eval']['version']} through the mellama_jax adapter; scores as lm-eval "
             "reports them.", "",
             "| Task | Protocol | N | Metric | Score | Other metrics |",
             "|---|---|---:|---|---:|---|"]
    for r in results["tasks"].values():
        head = r["headline_metric"]
        rest = [k for k in r["metrics"] if k != head and not k.endswith("_stderr")]
        other = ", ".join(f"{k} {_fmt(r['metrics'][k])}" for k in rest)
        lines.append(report.task_row(r, head, _fmt(r["metrics"].get(head)), other))
    lines.append("")
    return "\n".join(lines)


def _write(workdir: str, results: dict) -> None:
    report.write_files(workdir, {
        "results.json": json.dumps(results, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n",
        "results.md": markdown(results)})


def run(config, workdir: str) -> dict:
    """Evaluate config.checkpoint on config.lm_eval_tasks with lm-eval; returns what results.json holds."""
    try:  # lm-eval is an optional dependency (requirements-eval.txt): imported only when this harness runs
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError(f"config.harness=lm_eval needs lm-eval ({err}): pip install -r requirements-eval.txt") from err

    from mellama_jax.eval.lm_eval_adapter import MellamaJaxLM, TASKS_DIR  # imports lm-eval at its top

    if not config.checkpoint:
        raise ValueError("config.checkpoint is required: an HF LLaMA directory, an Orbax checkpoint or a workdir")
    tasks = session.task_names(config.get("lm_eval_tasks") or "",
                               "config.lm_eval_tasks is empty: name lm-eval tasks, e.g. "
                               "--config.lm_eval_tasks=pubmedqa_mellama,mmlu_clinical_knowledge")
    include = [TASKS_DIR] + [p for p in str(config.get("lm_eval_include_path") or "").split(",") if p]
    for p in include[1:]:
        if not os.path.isdir(p):
            raise FileNotFoundError(f"config.lm_eval_include_path: {p!r} is not a directory")
    # Every process runs every request (each holds its shards of the sharded model calls); the
    # first one writes the files.
    main = jax.process_index() == 0
    if main:
        os.makedirs(os.path.join(workdir, "predictions"), exist_ok=True)
    t0 = time.time()
    engine = session.engine_from_config(config, show_progress=False)
    chat = session.resolve_chat_template(config)  # "auto": the checkpoint's own template, else none
    chat = None if chat == "none" else chat
    lm = MellamaJaxLM(config.checkpoint, engine=engine, chat_template=chat,
                      max_gen_toks=int(config.get("lm_eval_max_gen_toks", 256)))
    manager = TaskManager(include_path=include, metadata=_metadata(config))
    few_shot = int(config.few_shot)
    out = lm_eval.simple_evaluate(
        model=lm, tasks=tasks, task_manager=manager, num_fewshot=few_shot if few_shot > 0 else None,
        limit=int(config.max_examples) if config.max_examples > 0 else None, log_samples=True,
        bootstrap_iters=int(config.get("lm_eval_bootstrap_iters", 1000)), apply_chat_template=bool(chat),
        random_seed=int(config.seed), numpy_random_seed=int(config.seed), torch_random_seed=int(config.seed),
        fewshot_random_seed=int(config.seed))
    header = session.results_header(config, engine)
    results = {
        **header,
        "harness": "lm_eval",
        "packages": {**header["packages"], "lm-eval": importlib.metadata.version("lm_eval"),
                     "datasets": importlib.metadata.version("datasets")},
        "protocol": "lm_eval",
        "chat_template": chat or "none",
        "lm_eval": {"version": importlib.metadata.version("lm_eval"), "include_path": include,
                    "metadata": _metadata(config), "n-shot": out.get("n-shot", {}),
                    "task_versions": out.get("versions", {}), "task_hashes": {}, "groups": out.get("groups", {}),
                    "configs": out.get("configs", {})},
        "tasks": {},
    }
    for name, raw in out["results"].items():
        samples = out.get("samples", {}).get(name)
        if samples is None:  # a group's aggregate row
            continue
        cfg = out["configs"].get(name, {})
        metrics = _metrics(raw)
        digest = task_hash(samples)
        results["lm_eval"]["task_hashes"][name] = digest
        if main:
            with open(os.path.join(workdir, "predictions", f"{name}.jsonl"), "w", encoding="utf-8") as f:
                for rec in _records(samples):
                    f.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
        head = next((k for k in metrics if not k.endswith("_stderr")), "")
        results["tasks"][name] = {
            "task": name, "display_name": raw.get("alias", name).strip(" -"), "family": "lm_eval",
            "metrics": metrics, "headline_metric": head, "num_examples": len(samples),
            "num_examples_in_file": out.get("n-samples", {}).get(name, {}).get("original"),
            "protocol": cfg.get("output_type", "lm_eval"), "few_shot": {"k": out.get("n-shot", {}).get(name, 0)},
            "task_version": out.get("versions", {}).get(name), "task_hash": digest,
            "data": {"dataset_path": cfg.get("dataset_path"), "dataset_kwargs": cfg.get("dataset_kwargs"),
                     "custom_dataset": bool(cfg.get("custom_dataset")),
                     "sha256": _data_hashes(cfg, results["lm_eval"]["metadata"])},
        }
    results["seconds"] = round(time.time() - t0, 3)
    results["compiled_shapes"] = sorted([list(s) for s in engine.stats.get("compiled_shapes", ())], key=str)
    if main:
        _write(workdir, results)
    return results
