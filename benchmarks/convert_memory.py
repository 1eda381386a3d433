"""Peak memory of `hf_to_orbax` against the size of the model it converts.

    python benchmarks/convert_memory.py [--hidden 1024 --layers 12 --vocab 32000 --dtype bfloat16]

Saves a random HF LLaMA of the given shape (sharded safetensors) to a temp dir, then converts it in a
fresh process and prints that process's peak RSS beside the checkpoint size and the RSS of a process
that only imports the same modules (the floor).
"""
import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    work = tempfile.mkdtemp()
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=int(args.hidden * 2.6875),
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 128,
                         num_key_value_heads=args.hidden // 128)
    with torch.device("meta"):
        pass
    model = LlamaForCausalLM(config).to(getattr(torch, args.dtype))
    model.save_pretrained(os.path.join(work, "hf"), max_shard_size="200MB")
    size = sum(os.path.getsize(os.path.join(work, "hf", f)) for f in os.listdir(os.path.join(work, "hf")))
    del model
    floor = subprocess.run([sys.executable, "-c", "import resource, mellama_jax.cli.convert, orbax.checkpoint, jax;"
                            "jax.numpy.zeros(1); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)"],
                           capture_output=True, text=True, cwd=ROOT)
    result = subprocess.run([sys.executable, "-m", "mellama_jax.cli.convert", "hf_to_orbax", "--hf_dir",
                             os.path.join(work, "hf"), "--out", os.path.join(work, "ckpt")],
                            capture_output=True, text=True, cwd=ROOT)
    print(result.stdout.strip().splitlines()[-1] if result.returncode == 0 else result.stderr)
    print(f"checkpoint size {size / 2**20:.0f} MiB ({args.dtype}); import-only floor "
          f"{float(floor.stdout.strip().splitlines()[-1]):.0f} MiB")


if __name__ == "__main__":
    main()
