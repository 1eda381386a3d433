"""The token store: a corpus tokenized once (by `mellama_jax.cli.tokenize_beam` or the serial
builder) into per-input-file `.npy` shards with a manifest written last, read by any number of
training hosts.

- `format`: the layout (format v1), manifest read/write, split_rule_sha256, check_store_source.
- `build`: the per-file work (reused by the Beam command) and the serial, in-process builder.
"""
from mellama_jax.data.store.format import (FORMAT, VERSION, check_store_source, part_path, read_manifest,
                                           shard_paths, split_rule_sha256, write_manifest)

__all__ = ["FORMAT", "VERSION", "check_store_source", "part_path", "read_manifest", "shard_paths",
           "split_rule_sha256", "write_manifest"]
