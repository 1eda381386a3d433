"""Data configuration: sources (paths + format), the mixture weights (optionally staged over training),
tokenizer, sequence layout, and the command-line forms of all of them.

`default_data_config()` is what `configs/base.py` uses for `config.data`; `demo_data_config()` points
every source at the small samples bundled in `mellama_jax/data/samples/` so the demo and the tests run
on a fresh machine.

Per-source keys (`config.data.sources.<name>`):
  paths: tuple of globs (for format prepared_clinical: directories written by prepare_clinical). On the
         command line: `--config.data.sources.biomedical.paths='("/corpora/pubmed/*.xml.gz",)'` or a
         comma-separated string `--config.data.sources.biomedical.paths=/c/pubmed/*.xml.gz,/c/pmc/*.jsonl`
  format: pubmed_xml | jsonl | text | mimic_csv | instruction_jsonl | prepared_clinical | auto
          (auto: by file name: *.xml[.gz] pubmed_xml, *.jsonl[.gz] jsonl, *.txt[.gz] text, *.csv[.gz] mimic_csv)
  eval_fraction: share of documents held out for the eval split, chosen by a hash of the doc id
  text_field / id_field (jsonl), text_split (text: file | paragraph | line)
  scrub_inline (mimic_csv: run mellama_jax.data.clinical.scrub_text on each note)
  require_prepared (refuse raw clinical input that is neither prepared nor scrubbed inline)
  dedup: none | exact | near (drop exact / MinHash near-duplicate documents of this source, in file order)
  exclude_ids: "" or a file of document ids to leave out (one per line; `mellama_jax.cli.decontaminate
               --write_exclude` writes it); its content is part of the token-cache key

The set of sources from the command line (`config.data.sources_spec`, see `parse_sources_spec`):
  --config.data.sources_spec='bio=jsonl:/c/bio/*.jsonl;clin=prepared_clinical:/c/mimic'
replaces the configured sources by the listed ones; it is expanded when the config file is loaded, so
`--config.data.mixture.bio=3` and `--config.data.sources.bio.text_field=body` work after it.

Mixture schedule (`config.data.mixture_stages`, see `parse_mixture_stages`): weights per step range,
  --config.data.mixture_stages='1000:clinical=4,general=1;5000:clinical=1'
A source whose weight is 0 in every stage is never trained on; its held-out split is still evaluated.
`config.data.target_budget_tokens` (e.g. 129e9): a short run stands for a full run of that many tokens.
Source s repeats r_s = target x weight_s / tokens_s times in the full run; the short run (budget =
train.steps x global_batch_size x seq_len) keeps a deterministic subsample of tokens_s x budget / target
of each source's train documents (chosen by a hash of (seed, source, document)), so it repeats each
source r_s times too. 0 = off (every document).
`config.data.perplexity_texts` (globs) adds a text set that is only evaluated (every document held
out), reported as eval/<perplexity_name>/loss and /perplexity: a general-domain forgetting measure.
`config.data.token_store` ("" = off): a token store (local directory, gs:// or s3:// URL) built
offline from these sources; training reads it instead of tokenizing at launch (data/store/), drawing
rows in a global order that does not depend on the host count. `config.data.store_cache_mb`: the
block cache of a remote store's ranged reads, per host.
"""
from __future__ import annotations

import ast
import dataclasses
import math
import os
import re
from typing import Any, Callable, Iterable, Sequence

import ml_collections

__all__ = ["default_data_config", "demo_data_config", "source_config", "SAMPLES_DIR", "FORMAT_NAMES",
           "SourceSpec", "split_globs", "parse_sources_spec", "apply_sources_spec", "sources_spec_applied",
           "parse_mixture_stages", "MixtureStage", "source_paths", "resolved_data_config", "register_source_kind",
           "source_kind"]

SAMPLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples")
FORMAT_NAMES = ("pubmed_xml", "jsonl", "text", "mimic_csv", "instruction_jsonl", "prepared_clinical", "auto")
DEDUP_MODES = ("none", "exact", "near")
_RAW_CLINICAL_FORMATS = ("mimic_csv",)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def source_config(paths: Iterable[str], fmt: str, *, eval_fraction: float = 0.01, **extra) -> ml_collections.ConfigDict:
    """One source entry with every key present (so CLI overrides can set any of them)."""
    c = ml_collections.ConfigDict()
    c.paths = split_globs(paths)
    c.format = fmt
    c.eval_fraction = eval_fraction
    c.text_field = "text"
    c.id_field = "id"
    c.text_split = "file"
    c.scrub_inline = False
    c.require_prepared = False
    c.dedup = "none"
    c.exclude_ids = ""
    c.allow_truncated = False  # keep what was read of a cut-short/corrupt gzip (default: fail)
    for k, v in extra.items():
        setattr(c, k, v)
    return c


def split_globs(value: str | Iterable[str]) -> tuple[str, ...]:
    """Paths as a tuple of globs from a tuple/list, a Python literal string ('("a", "b")') or a
    comma-separated string ('a,b'); the one normalisation every reader of `paths` uses."""
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in ("(", "["):
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError) as err:
                raise ValueError(f"paths {value!r}: not a Python tuple/list literal ({err})") from None
            if isinstance(value, str):
                value = [value]
        else:
            value = text.split(",")
    out = tuple(str(p).strip() for p in value)
    return tuple(p for p in out if p)


def source_paths(src: Any) -> tuple[str, ...]:
    """The globs of one source config (tuple, list or comma-separated string)."""
    return split_globs(src["paths"])


# --------------------------------------------------------------------------------------------------
# config.data.sources_spec: the set of sources in one string
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One entry of a sources spec: `name` alone keeps a configured source; format/paths/weight are
    None where the entry does not set them."""

    name: str
    format: str | None = None
    paths: tuple[str, ...] | None = None
    weight: float | None = None


def _weight_suffix(text: str) -> tuple[str, float | None]:
    if ":" not in text:
        return text, None
    head, tail = text.rsplit(":", 1)
    try:
        w = float(tail)
    except ValueError:
        return text, None
    return head, w


def parse_sources_spec(spec: str, formats: Sequence[str] = FORMAT_NAMES) -> list[SourceSpec]:
    """Parse `name=[format:]glob[,glob...][:weight]` entries separated by ';'.

    An entry that is only a name (optionally `name:weight`) keeps that configured source. The format
    is recognised only when the text before the first ':' is a known format name (so `gs://...` and
    other paths with colons are globs), the weight only when the text after the last ':' is a number.
    """
    out: list[SourceSpec] = []
    for i, raw in enumerate(spec.split(";"), 1):
        entry = raw.strip()
        if not entry:
            continue
        where = f"data.sources_spec entry {i} ({entry!r})"
        if "=" not in entry:
            name, weight = _weight_suffix(entry)
            name = name.strip()
            fmt = paths = None
        else:
            name, rest = (x.strip() for x in entry.split("=", 1))
            fmt = None
            if ":" in rest and rest.split(":", 1)[0].strip() in formats:
                fmt, rest = (x.strip() for x in rest.split(":", 1))
            rest, weight = _weight_suffix(rest)
            paths = split_globs(rest)
            if not paths:
                raise ValueError(f"{where}: no paths after '=' (expected name=[format:]glob[,glob...][:weight])")
        if not _NAME.match(name):
            raise ValueError(f"{where}: source name {name!r} must be a Python identifier "
                             "(letters, digits, underscore), since it becomes a config key")
        if weight is not None and (weight < 0 or not math.isfinite(weight)):
            raise ValueError(f"{where}: weight {weight} must be a finite number >= 0")
        if any(s.name == name for s in out):
            raise ValueError(f"{where}: source {name!r} is listed twice")
        out.append(SourceSpec(name, fmt, paths, weight))
    if not out:
        raise ValueError("data.sources_spec is empty; give at least one source (or leave it '' to keep "
                         "the configured sources)")
    return out


def sources_spec_applied(data_cfg: Any) -> bool:
    """True when the configured sources are exactly the spec's names (or there is no spec)."""
    spec = str(data_cfg.get("sources_spec", "") or "")
    if not spec.strip():
        return True
    names = [s.name for s in parse_sources_spec(spec)]
    return sorted(names) == sorted(data_cfg.sources.keys()) and sorted(names) == sorted(data_cfg.mixture.keys())


# Source entries of other tasks: task -> (its format names, its source factory). A task whose sources
# are not documents registers them where it defines its factory (mellama_jax.sft.data does for "sft";
# its configs build their sources with that factory, so it is imported before a spec is expanded).
# The data package itself knows only the pretraining sources.
_SOURCE_KINDS: dict[str, tuple[tuple[str, ...], Callable[..., ml_collections.ConfigDict]]] = {}


def register_source_kind(task: str, formats: Sequence[str],
                         make_source: Callable[..., ml_collections.ConfigDict]) -> None:
    """Make `config.data.sources_spec` of `task` configs parse `formats` and build new sources with
    `make_source(paths, format, **keys)`."""
    _SOURCE_KINDS[task] = (tuple(formats), make_source)


def source_kind(task: str | None) -> tuple[Sequence[str], Callable[..., ml_collections.ConfigDict]]:
    """(format names, source factory) of a task's `data.sources` entries (pretraining's by default)."""
    return _SOURCE_KINDS.get(task or "", (FORMAT_NAMES, source_config))


def apply_sources_spec(data_cfg: ml_collections.ConfigDict, spec: str | None = None, *,
                       formats: Sequence[str] | None = None,
                       make_source: Callable[..., ml_collections.ConfigDict] | None = None,
                       task: str | None = None) -> ml_collections.ConfigDict:
    """Make `data_cfg.sources` and `data_cfg.mixture` exactly the sources the spec lists (in place).

    A listed existing source keeps its other keys (eval_fraction, scrubbing, ...) and weight unless the
    entry sets them; a new one gets `make_source(paths, format)` defaults (raw clinical formats with
    require_prepared=True, as the Me-LLaMA configs have it) and weight 1.0. Unlisted sources are removed.
    `task` picks the format names and source factory (register_source_kind; pretraining's by default).
    """
    spec = str(data_cfg.get("sources_spec", "") if spec is None else spec)
    if not spec.strip():
        return data_cfg
    kind_formats, kind_make = source_kind(task)
    make_source = make_source or kind_make
    entries = parse_sources_spec(spec, formats or kind_formats)
    old_sources, old_mixture = data_cfg.sources, data_cfg.get("mixture", ml_collections.ConfigDict())
    sources, mixture = ml_collections.ConfigDict(), ml_collections.ConfigDict()
    for e in entries:
        if e.name in old_sources:
            src = ml_collections.ConfigDict(old_sources[e.name].to_dict())
            if e.format is not None:
                src.format = e.format
            if e.paths is not None:
                src.paths = e.paths
        elif e.paths is None:
            raise ValueError(f"data.sources_spec: {e.name!r} is not a configured source "
                             f"({sorted(old_sources.keys())}); define it as {e.name}=format:glob[,glob]")
        else:
            fmt = e.format or "auto"
            src = make_source(e.paths, fmt, require_prepared=fmt in _RAW_CLINICAL_FORMATS)
        weight = e.weight if e.weight is not None else float(old_mixture.get(e.name, 1.0))
        sources[e.name] = src
        mixture[e.name] = float(weight)
    locked = data_cfg.is_locked
    with data_cfg.unlocked():
        data_cfg.sources = sources
        data_cfg.mixture = mixture
        if "sources_spec" in data_cfg:
            data_cfg.sources_spec = spec
    if locked:
        data_cfg.lock()
    return data_cfg


def resolved_data_config(data_cfg: Any) -> ml_collections.ConfigDict:
    """An unlocked copy of `data_cfg` with what the pipeline reads made explicit: the sources spec
    applied (Python callers who set it without `apply_sources_spec`) and the perplexity text set added
    as an eval-only source (weight 0, every document held out)."""
    c = ml_collections.ConfigDict(data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg))
    if "sources_spec" in c and not sources_spec_applied(c):
        apply_sources_spec(c)
    texts = split_globs(c.get("perplexity_texts", ()) or ())
    if texts:
        name = str(c.get("perplexity_name", "general_text"))
        if not _NAME.match(name):
            raise ValueError(f"data.perplexity_name={name!r}: must be a Python identifier")
        if name in c.sources:
            raise ValueError(f"data.perplexity_name={name!r} is also a training source; pick another name")
        c.sources[name] = source_config(texts, "auto", eval_fraction=1.0)
        c.mixture[name] = 0.0
    return c


# --------------------------------------------------------------------------------------------------
# config.data.mixture_stages: weights per step range
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MixtureStage:
    start_step: int
    weights: dict[str, float]


def parse_mixture_stages(text: str, mixture: dict[str, float]) -> list[MixtureStage]:
    """Stages from `start:name=w,name=w;start:...` (start steps strictly increasing). Steps before the
    first listed start use `mixture`; a stage's unnamed sources keep their `mixture` weight."""
    stages = [MixtureStage(0, dict(mixture))]
    for i, raw in enumerate(str(text or "").split(";"), 1):
        entry = raw.strip()
        if not entry:
            continue
        where = f"data.mixture_stages entry {i} ({entry!r})"
        if ":" not in entry:
            raise ValueError(f"{where}: expected start_step:name=weight[,name=weight...]")
        start_text, body = entry.split(":", 1)
        try:
            start = int(start_text.strip())
        except ValueError:
            raise ValueError(f"{where}: start step {start_text.strip()!r} is not an integer") from None
        weights = dict(mixture)
        for item in body.split(","):
            if not item.strip():
                continue
            if "=" not in item:
                raise ValueError(f"{where}: {item.strip()!r} is not name=weight")
            name, w = (x.strip() for x in item.split("=", 1))
            if name not in mixture:
                raise ValueError(f"{where}: {name!r} is not in data.mixture ({sorted(mixture)})")
            try:
                weights[name] = float(w)
            except ValueError:
                raise ValueError(f"{where}: weight {w!r} of {name!r} is not a number") from None
            if weights[name] < 0 or not math.isfinite(weights[name]):
                raise ValueError(f"{where}: weight of {name!r} must be a finite number >= 0")
        if start < 0 or (start <= stages[-1].start_step and not (start == 0 and len(stages) == 1)):
            raise ValueError(f"{where}: start steps must be >= 0 and strictly increasing")
        if start == 0:
            stages = []
        if not any(v > 0 for v in weights.values()):
            raise ValueError(f"{where}: every weight is zero; nothing to train on in this stage")
        stages.append(MixtureStage(start, weights))
    return stages


def default_data_config() -> ml_collections.ConfigDict:
    """Me-LLaMA's continual-pretraining mixture: biomedical 15 : clinical 1 : general 4.

    The paths are placeholders under ~/data; real runs override them
    (`--config.data.sources.biomedical.paths='("/corpora/pubmed/*.xml.gz",)'`, or a comma-separated
    string, or `--config.data.sources_spec=...`).
    """
    c = ml_collections.ConfigDict()
    c.sources = ml_collections.ConfigDict()
    c.sources.biomedical = source_config(["~/data/pubmed/*.xml.gz"], "pubmed_xml")
    c.sources.clinical = source_config(["~/data/mimic_prepared"], "prepared_clinical", require_prepared=True)
    c.sources.general = source_config(["~/data/general/*.jsonl*"], "jsonl")
    c.mixture = ml_collections.ConfigDict({"biomedical": 15.0, "clinical": 1.0, "general": 4.0})
    # "" = the tokenizer that travels with config.model.init_from (checked against the model before
    # any data is read); set a path to train with another one.
    c.tokenizer_path = ""
    c.seq_len = 2048
    c.packing = "concat"          # "concat": split the document stream into windows; "pack": whole docs
    c.seed = 0
    c.max_bad_fraction = 0.01     # fail when more than this share of a source's items is bad
    c.data_dir = os.path.join("~", "tensorflow_datasets", "mellama")  # tfds + tokenized-cache root
    c.reader = "auto"             # "tfds" | "direct" | "auto" (tfds when TensorFlow is importable)
    c.cache_tokenized = True      # cache token arrays under data_dir/tokenized (keyed by content)
    c.tokenize_threads = 0        # sentencepiece threads; 0 = all cores
    c.max_docs_per_source = 0     # 0 = all; >0 reads only the first N docs (smoke runs)
    # The set of sources as one string (see parse_sources_spec); "" = data.sources as configured.
    c.sources_spec = ""
    # Weights per step range, "start:name=w,...;start:..." (see parse_mixture_stages); "" = data.mixture throughout.
    c.mixture_stages = ""
    # Globs of a text set that is only evaluated (e.g. a general-domain held-out set): forgetting.
    c.perplexity_texts = ()
    c.perplexity_name = "general_text"
    # Budget-faithful ablations: the token budget of the full run this (short) run stands for; each
    # trained source is subsampled so that it repeats as often as in that run. 0 = off.
    c.target_budget_tokens = 0.0
    # A token store built offline (python -m mellama_jax.cli.tokenize_beam): "" = off (tokenize the
    # sources at launch); a directory or a gs:// / s3:// URL = train from it (nothing read from the
    # sources, nothing tokenized; rows in global order, so a run resumes on any number of hosts).
    # It must hold every source of the mixture, built with this run's tokenizer and split rule.
    c.token_store = ""
    c.store_cache_mb = 256        # remote store: MiB of token blocks a host caches (ranged reads)
    return c


def demo_data_config() -> ml_collections.ConfigDict:
    """The default mixture over the bundled sample corpora (a few hundred KB, every real format)."""
    c = default_data_config()
    s = SAMPLES_DIR
    c.sources = ml_collections.ConfigDict()
    c.sources.biomedical = source_config(
        [os.path.join(s, "pubmed", "*.xml*"), os.path.join(s, "pmc", "*.jsonl"), os.path.join(s, "pmc", "*.txt")],
        "auto", eval_fraction=0.05)
    # Raw MIMIC-style notes: de-identified on the fly, as any clinical source must be.
    c.sources.clinical = source_config([os.path.join(s, "clinical", "NOTEEVENTS_sample.csv")], "mimic_csv",
                                       eval_fraction=0.05, scrub_inline=True, require_prepared=True)
    c.sources.general = source_config([os.path.join(s, "general", "*.jsonl")], "jsonl", eval_fraction=0.05)
    c.tokenizer_path = os.path.join(SAMPLES_DIR, "tokenizer.model")  # the bundled 2,000-piece demo tokenizer
    c.seq_len = 128
    c.data_dir = os.path.join(os.environ.get("TMPDIR", "/tmp"), "mellama_demo_tfds")
    return c
