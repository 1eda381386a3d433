"""Dataset builder for the pubmedqa_mellama lm-eval task: the built-in harness's reader and prompt,
so both harnesses see the same examples and the same prompt text."""
from __future__ import annotations

import os


def load_dataset(pubmedqa_file: str = "", prompt_set: str = "mellama-v1", **_metadata):
    """{"test": Dataset(id, prompt, choices, label)} from a PubMedQA TSV or ori_pqal.json."""
    import datasets

    from mellama_jax.eval import prompts
    from mellama_jax.eval.tasks.qa import PUBMEDQA_CHOICES, load_pubmedqa

    path = pubmedqa_file or os.environ.get("MELLAMA_PUBMEDQA_FILE", "")
    if not path:
        raise ValueError("pubmedqa_mellama: pass the local file with --metadata "
                         "'{\"pubmedqa_file\": \"/path/pubmedqa.tsv\"}' (or set MELLAMA_PUBMEDQA_FILE)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pubmedqa_mellama: pubmedqa_file {path!r} does not exist")
    template = prompts.get_template("pubmedqa", prompt_set)
    examples = load_pubmedqa(path)
    rows = {"id": [ex.id for ex in examples],
            "prompt": [prompts.render(template, ex, []) for ex in examples],
            "choices": [list(PUBMEDQA_CHOICES) for _ in examples],
            "label": [PUBMEDQA_CHOICES.index(ex.reference) for ex in examples]}
    return datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)})
