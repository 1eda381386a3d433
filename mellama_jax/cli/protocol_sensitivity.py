"""How much of a score is protocol? One checkpoint, several evaluation protocols, the spread per metric.

    python -m mellama_jax.cli.protocol_sensitivity --config configs/eval.py --out DIR \\
        --config.checkpoint=PATH --config.tasks=pubmedqa,medqa --config.data_dir=benchmarks \\
        [--prompt_sets=mellama-release,mellama-v1] [--sc_samples=5 --sc_temperature=0.7 --sc_top_p=1.0]

Variants: every prompt set of --prompt_sets, each under greedy decoding and under self-consistency
(--sc_samples samples at --sc_temperature / --sc_top_p, majority vote; seeded by
config.decoding.seed). The other --config.* settings are shared. Each variant is a full evaluation run
(the built-in runner, one model load for all) in DIR/runs/<variant>/ (results.json, predictions/);
DIR/sensitivity.json and sensitivity.md give per task and metric every run's value with its interval,
the min, max and range over the variants, and each variant's paired difference from the first one
(compare.py with the protocol differences listed instead of refused; where the variants' references
differ, e.g. letter vs option-text answers, that comparison is skipped and says why). Every variant's
config is validated and its task files read before the model loads. Exit status 0, or 2 for bad flags,
a bad config or a bad --out.
"""
from __future__ import annotations

import copy
import json
import os
import sys

from absl import app, flags

from mellama_jax.checkpoint.artifact import resolve_artifact
from mellama_jax.checkpoint.model_spec import init_artifact, training_tokenizer_file
from mellama_jax.cli.config_flags import define_config_flag, parse_flags
from mellama_jax.config_validation import ArtifactLookup, ConfigError, validate_config
from mellama_jax.eval import compare, runner, session
from mellama_jax.output_dir import OutputDirError, StagedOutput

PROG = "mellama_jax.cli.protocol_sensitivity"
_CONFIG = define_config_flag("config", "Evaluation config, e.g. configs/eval.py")
_OUT = flags.DEFINE_string("out", None, "Output directory (new, empty, or an earlier run of this command).")
_PROMPT_SETS = flags.DEFINE_list("prompt_sets", ["mellama-release", "mellama-v1"],
                                 "Prompt sets to compare (names under eval/prompt_sets/ or paths); the first is "
                                 "the reference of the paired differences.")
_SC_SAMPLES = flags.DEFINE_integer("sc_samples", 5, "Self-consistency: samples per example.")
_SC_TEMPERATURE = flags.DEFINE_float("sc_temperature", 0.7, "Self-consistency: sampling temperature.")
_SC_TOP_P = flags.DEFINE_float("sc_top_p", 1.0, "Self-consistency: nucleus mass.")
_GREEDY = flags.DEFINE_bool("greedy", True, "Include the greedy variant of every prompt set.")
_SC = flags.DEFINE_bool("self_consistency", True, "Include the self-consistency variant of every prompt set.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace --out if it is an earlier run of this command.")

ARTIFACTS = ArtifactLookup(resolve_artifact, init_artifact, training_tokenizer_file)
USAGE = 2


def variants(config) -> list[tuple[str, object]]:
    """(name, config) per protocol variant, in report order (the first is the reference)."""
    out = []
    for pset in _PROMPT_SETS.value:
        modes = ([("greedy", 0.0, 1.0, 1)] if _GREEDY.value else []) + \
                ([("sc", _SC_TEMPERATURE.value, _SC_TOP_P.value, _SC_SAMPLES.value)] if _SC.value else [])
        for mode, temperature, top_p, samples in modes:
            c = copy.deepcopy(config)
            c.prompt_set = pset
            c.decoding.temperature, c.decoding.top_p, c.decoding.samples = float(temperature), float(top_p), int(samples)
            out.append((f"{os.path.basename(pset).removesuffix('.json')}__{mode}", c))
    if not out:
        raise ConfigError("no variants: --prompt_sets is empty or both --greedy and --self_consistency are off")
    return out


def spread(runs: dict[str, dict], names: list[str]) -> dict:
    """Per task and metric: each variant's value and interval, min / max / range (and which variants)."""
    tasks: dict[str, dict] = {}
    first = runs[names[0]]
    for task, entry in first["tasks"].items():
        metrics = {}
        for metric in entry["metrics"]:
            per = {}
            for n in names:
                t = runs[n]["tasks"].get(task, {})
                value = t.get("metrics", {}).get(metric)
                if isinstance(value, (int, float)):
                    per[n] = {"value": float(value),
                              "interval": (t.get("intervals", {}).get("metrics", {}) or {}).get(metric)}
            if not per:
                continue
            lo = min(per, key=lambda n: per[n]["value"])
            hi = max(per, key=lambda n: per[n]["value"])
            metrics[metric] = {"runs": per, "min": per[lo]["value"], "max": per[hi]["value"],
                               "range": per[hi]["value"] - per[lo]["value"], "argmin": lo, "argmax": hi}
        tasks[task] = {"display_name": entry.get("display_name", task), "num_examples": entry.get("num_examples"),
                       "headline_metric": entry.get("headline_metric"), "metrics": metrics}
    return tasks


def paired(run_dirs: dict[str, str], names: list[str], tasks: list[str], config) -> dict:
    """Each variant minus the reference, per task (compare.compare_runs, protocol differences allowed)."""
    out: dict[str, dict] = {}
    iterations = int(config.bootstrap.iterations) or 1000
    for n in names[1:]:
        per_task = {}
        for t in tasks:
            try:
                c = compare.compare_runs(run_dirs[names[0]], run_dirs[n], [t], iterations=iterations,
                                         seed=int(config.bootstrap.seed), confidence=float(config.bootstrap.confidence),
                                         same_protocol=False)
            except compare.ComparisonError as err:
                per_task[t] = {"skipped": f"{err} (the variants score different answer forms, e.g. option "
                                          "letters and option texts, so no example-by-example difference)"}
                continue
            per_task[t] = {"metrics": c["tasks"][t]["metrics"], "protocol_differences": c["protocol_differences"]}
        out[n] = per_task
    return out


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.2f}"


def markdown(report: dict) -> str:
    names = [v["name"] for v in report["variants"]]
    lines = ["# Protocol sensitivity", "", f"Checkpoint: `{report['checkpoint']}`", "",
             "Variants (directory `runs/<name>/`):", ""]
    for v in report["variants"]:
        d = v["decoding"]
        lines.append(f"- `{v['name']}`: prompt set {v['prompt_set']}, "
                     + ("greedy" if d["temperature"] == 0 else
                        f"self-consistency over {d['samples']} samples at temperature {d['temperature']:g}, "
                        f"top-p {d['top_p']:g}, seed {d['seed']}"))
    lines += ["", f"Values in %, with {100 * report['confidence']:g}% bootstrap intervals; range = max - min over "
              "the variants, in percentage points. Paired differences from the first variant are in "
              "sensitivity.json (`paired`).", "",
              "| Task | Metric | " + " | ".join(names) + " | min | max | range |",
              "|---|---|" + "---:|" * (len(names) + 3)]
    for t in report["tasks"].values():
        for metric, m in t["metrics"].items():
            cells = []
            for n in names:
                r = m["runs"].get(n)
                if r is None:
                    cells.append("")
                    continue
                iv = r["interval"]
                cells.append(_pct(r["value"]) + (f" [{_pct(iv[0])}, {_pct(iv[1])}]" if iv else ""))
            lines.append(f"| {t['display_name']} | {metric} | " + " | ".join(cells)
                         + f" | {_pct(m['min'])} | {_pct(m['max'])} | {100 * m['range']:.2f} |")
    lines.append("")
    return "\n".join(lines)


def run(config, out: str, overwrite: bool = False) -> dict:
    """Validate every variant, load the model once, run the variants into out/runs/, write the report."""
    named = variants(config)
    for name, c in named:
        try:
            validate_config(c, ARTIFACTS)
        except ConfigError as err:
            raise ConfigError(f"variant {name}: {err}") from None
        runner.prepare_all(c)  # task files read and prompts rendered before the model loads
    staged = StagedOutput(out, PROG, overwrite=overwrite)
    staged.check()
    engine = session.engine_from_config(config, show_progress=bool(config.show_progress))
    with staged as d:
        runs, dirs = {}, {}
        for name, c in named:
            dirs[name] = os.path.join(d, "runs", name)
            runs[name] = runner.run_builtin(c, dirs[name], engine=engine)
        names = [n for n, _ in named]
        report = {"checkpoint": os.path.abspath(config.checkpoint), "confidence": float(config.bootstrap.confidence),
                  "variants": [{"name": n, "prompt_set": runner.prompt_set_name(c), "decoding": runner.decoding_settings(c),
                                "dir": os.path.join("runs", n)} for n, c in named],
                  "reference": names[0], "tasks": spread(runs, names)}
        report["paired"] = paired(dirs, names, list(report["tasks"]), config)
        with open(os.path.join(d, "sensitivity.json"), "w", encoding="utf-8") as f:
            f.write(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        with open(os.path.join(d, "sensitivity.md"), "w", encoding="utf-8") as f:
            f.write(markdown(report))
    return report


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None or not _OUT.value:
        raise app.UsageError("--config and --out are required, e.g. --config configs/eval.py --out runs/sensitivity")
    try:
        report = run(_CONFIG.value, _OUT.value, overwrite=_OVERWRITE.value)
    except (ConfigError, OutputDirError, ValueError, FileNotFoundError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        sys.exit(USAGE)
    print(markdown(report))
    print(f"wrote {os.path.join(os.path.abspath(_OUT.value), 'sensitivity.json')} and sensitivity.md")


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: parse_flags(argv, PROG))
