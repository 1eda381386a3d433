"""lm-eval's own command line with the `mellama_jax` model registered (every lm-eval flag works):

    python -m mellama_jax.cli.lm_eval --model mellama_jax \
        --model_args checkpoint=PATH,mesh_tensor=4 --tasks pubmedqa_mellama \
        --metadata '{"pubmedqa_file": "/data/pubmedqa.tsv"}' --batch_size 16 --output_path out/

lm-eval 0.4.x finds models only in its own table or in modules that were imported before its CLI
runs (it scans no package entry points), so `python -m lm_eval --model mellama_jax` cannot see the
adapter; this module imports it and hands over to lm-eval's CLI. The project's task YAMLs
(mellama_jax/eval/lm_eval_tasks/) are added as --include_path unless one is given.
"""
from __future__ import annotations

import sys

# lm-eval is an optional dependency (requirements-eval.txt); this command is the one that needs it.
from mellama_jax.eval.lm_eval_adapter import TASKS_DIR  # registers the model with lm-eval

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not any(a == "--include_path" or a.startswith("--include_path=") for a in argv) \
            and argv[0] not in ("-h", "--help"):
        argv += ["--include_path", TASKS_DIR]
    from lm_eval.__main__ import cli_evaluate  # lm-eval's CLI module: heavy, imported only when it runs

    sys.argv = ["lm-eval"] + argv
    cli_evaluate()


if __name__ == "__main__":
    main()
