"""Command-line forms of config values, shared by launch.py and the commands that take `--config`.

Two additions to `config_flags.DEFINE_config_file`, both through its public extension points:

* Tuples also take a comma-separated string: `--config.data.sources.x.paths=/a/*.jsonl,/b/*.jsonl`
  (ml_collections' TupleParser rejects an unquoted string with a comma). Python literals
  (`'("/a/*.jsonl",)'`), a single bare string and repeated flags work as before.
* `--config[.<prefix>].data.sources_spec=SPEC` is expanded into `data.sources` / `data.mixture` when
  the config file is loaded, i.e. before the other `--config.*` overrides are defined, so those can
  name the sources the spec creates (`--config.data.mixture.bio=3`) and are type-checked as usual.

`parse_flags(argv, prog)` is absl's flag parsing with a bad key, flag or value reported as one line.
"""
from __future__ import annotations

import ast
import re
import sys
from typing import Any, Sequence

from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import tuple_parser
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from mellama_jax.data.config import apply_sources_spec

__all__ = ["CommaTupleParser", "define_config_flag", "expand_cli_specs", "parse_flags", "sources_spec_args"]


class CommaTupleParser(tuple_parser.TupleParser):
    """ml_collections' tuple parser, plus `a,b,c` (unquoted, comma-separated) as ('a', 'b', 'c')."""

    def parse(self, argument):
        if not isinstance(argument, str):
            return super().parse(argument)
        try:
            value = ast.literal_eval(argument)
        except (ValueError, SyntaxError):
            parts = tuple(p.strip() for p in argument.split(",") if p.strip())
            return parts
        if isinstance(value, (tuple, list)):
            return tuple(value)
        return (value,)


def sources_spec_args(argv: Sequence[str], name: str = "config") -> list[tuple[str, str]]:
    """(config path prefix, spec) for every `--<name>[.<prefix>].data.sources_spec` in argv, in order."""
    pattern = re.compile(rf"^--?{re.escape(name)}\.((?:[A-Za-z0-9_]+\.)*)data\.sources_spec(?:=(.*))?$", re.S)
    out = []
    for i, arg in enumerate(argv):
        m = pattern.match(arg)
        if not m:
            continue
        value = m.group(2)
        if value is None:  # `--config.data.sources_spec VALUE`
            value = argv[i + 1] if i + 1 < len(argv) else ""
        out.append((m.group(1).rstrip("."), value))
    return out


def expand_cli_specs(config: Any, argv: Sequence[str], name: str = "config") -> None:
    """Apply each `--<name>[.<prefix>].data.sources_spec=...` of argv to `config[.prefix].data`."""
    for prefix, spec in sources_spec_args(argv, name):
        node = config
        for part in [p for p in prefix.split(".") if p]:
            if part not in node:
                raise ValueError(f"--{name}.{prefix}.data.sources_spec: no config key {part!r}")
            node = node[part]
        key = f"{name}.{prefix + '.' if prefix else ''}data"
        if "data" not in node or "sources" not in node.data:
            raise ValueError(f"--{key}.sources_spec: {key} has no sources to replace")
        try:
            apply_sources_spec(node.data, spec, task=node.get("task"))
        except ValueError as err:
            raise ValueError(f"--{key}.sources_spec={spec!r}: {err}") from None


class _SpecExpandingParser(ConfigFileFlagParser):
    """Loads the config file, then expands the sources specs found on the command line."""

    def __init__(self, name: str, lock_config: bool = True, argv: Sequence[str] | None = None):
        super().__init__(name=name, lock_config=lock_config)
        self._argv = argv

    def parse(self, path):
        config = super().parse(path)
        expand_cli_specs(config, self._argv if self._argv is not None else sys.argv, self.name)
        return config


def define_config_flag(name: str = "config", help_string: str = "Experiment config file",
                       flag_values: flags.FlagValues = flags.FLAGS,
                       argv: Sequence[str] | None = None) -> flags.FlagHolder:
    """`config_flags.DEFINE_config_file(name, lock_config=True)` with the two additions above."""
    config_flags.register_flag_parser_for_type(tuple, CommaTupleParser())
    holder = config_flags.DEFINE_config_file(name, None, help_string, flag_values=flag_values,
                                             lock_config=True, sys_argv=argv)
    flag_values[name].parser = _SpecExpandingParser(name, lock_config=True, argv=argv)
    return holder


def _override_key(argv: Sequence[str], needle: str) -> str:
    """The --config.* argument that mentions ``needle`` (for error messages)."""
    for arg in argv:
        if arg.startswith("--config.") and needle in arg.split("=")[0]:
            return arg.split("=")[0][2:]
    return ""


def parse_flags(argv: list[str], prog: str) -> list[str]:
    """absl flag parsing (the `flags_parser` of `app.run`) with config errors turned into one readable
    line naming the key, prefixed by `prog`; exits with status 2 on any error."""
    try:
        return flags.FLAGS(argv)
    except (KeyError, AttributeError) as err:
        # ml_collections raises KeyError("'trian'\nDid you mean ...") for an unknown field.
        msg = str(err.args[0] if err.args else err).strip("'\"")
        name = msg.splitlines()[0].strip("'\"")
        arg = _override_key(argv, name)
        hint = " ".join(msg.splitlines()[1:])
        print(f"{prog}: unknown config key {name!r}" + (f" in --{arg}" if arg else "")
              + (f". {hint}" if hint else ""), file=sys.stderr)
    except flags.Error as err:
        print(f"{prog}: invalid flag: {err}", file=sys.stderr)
    except (ValueError, TypeError) as err:
        print(f"{prog}: invalid config value: {err}", file=sys.stderr)
    sys.exit(2)
