"""Side by side with transformers + PyTorch: train step, prefill and greedy decode, same shapes and weights.

    python benchmarks/compare_torch.py --preset small --batch 8
    python benchmarks/compare_torch.py --preset llama2_1b --batch 1 --skip train

One process, one set of random weights (the project's init, exported to a `LlamaForCausalLM` with the
converter's own tensor mapping), medians of --repeats timed runs after a warm-up. PyTorch runs eager
and, unless --no_compile, with torch.compile (training/prefill: `torch.compile(model)`; decode:
transformers' static-cache generate, which compiles the forward). float32 on CPU; on a GPU pass
--dtype bfloat16 (PyTorch then uses sdpa attention). Prints one Markdown table with ratios (project /
PyTorch eager; higher is better for the project), greedy-token equality, XLA's bytes accessed per
decode step against the minimum, versions and the device. Needs no TensorFlow or ml_collections.

Memory: both models plus, for the train phase, each side's AdamW state one after the other; about
12 GB for llama2_1b without the train phase, about 20 GB with it (float32). On a CPU shared with other
work, multi-threaded PyTorch slows down sharply (OpenMP threads wait on each other); compare with
--threads 1 and XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" there.
"""
from __future__ import annotations

import argparse
import functools
import gc
import os
import platform
import shlex
import statistics
import sys
import time
from types import SimpleNamespace as NS

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mellama_jax.model import decode  # noqa: E402
from mellama_jax.model.generate import generate  # noqa: E402
from mellama_jax.model.llama import Llama, init_params  # noqa: E402
from mellama_jax.model.presets import get_preset  # noqa: E402

PHASES = ("train", "prefill", "decode")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=1, help="decode/prefill batch (sequences)")
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--train_batch", type=int, default=0, help="train batch (0 = --batch)")
    p.add_argument("--seq_len", type=int, default=128, help="train sequence length")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = os.cpu_count())")
    p.add_argument("--no_compile", action="store_true", help="skip the torch.compile columns")
    p.add_argument("--skip", default="", help=f"comma-separated phases to skip, of {PHASES}")
    return p.parse_args()


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (compilation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def to_hf(config, params, dtype: str):
    """A `LlamaForCausalLM` holding exactly `params` (through the converter's tensor mapping)."""
    import torch
    import transformers

    from mellama_jax.checkpoint.hf import config_to_hf, export_param, param_paths

    hf_config = transformers.LlamaConfig(**config_to_hf(config, dtype))
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(hf_config)
    state = {}
    for path in param_paths(config):
        value = params
        for key in path:
            value = value[key]
        for name, array in export_param(config, path, np.array(value, np.float32)):  # a copy: params may be donated later
            state[name] = torch.from_numpy(array).to(getattr(torch, dtype))
    model.load_state_dict(state, strict=True, assign=True)
    # Buffers (rotary inv_freq) were created on the meta device: rebuild them on the CPU.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=hf_config)
    return model.eval()


def project_train(config, params, batch: int, seq_len: int, repeats: int) -> float:
    """Seconds per step of the project's train step (train/step.py via Trainer), AdamW, one device."""
    from mellama_jax import sharding as shd
    from mellama_jax.train import state as state_lib
    from mellama_jax.train.loop import Trainer
    from mellama_jax.train.synthetic import SyntheticPipeline

    class Cfg(NS):  # the attribute access + .get() the Trainer uses on ConfigDicts
        def get(self, key, default=None):
            return getattr(self, key, default)

    mesh = shd.make_mesh(NS(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    run = Cfg(model=NS(init_from=""),
             train=NS(steps=1000, micro_batches=1, loss_impl="vocab_parallel", z_loss=0.0),
             optim=NS(learning_rate=1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, schedule="cosine",
                      warmup_fraction=0.05, warmup_steps=-1, min_lr_ratio=0.1, grad_clip_norm=1.0),
             sharding=NS(rules=shd.DEFAULT_RULES), data={"synthetic": True})
    trainer = Trainer(run, config, mesh)
    state = state_lib.state_from_params(params, trainer.optimizer, jax.random.PRNGKey(1), trainer.shardings)
    pipe = SyntheticPipeline(vocab_size=config.vocab_size, seq_len=seq_len, global_batch_size=batch,
                             process_index=0, process_count=1)
    batch_arrays = trainer.global_batch(pipe.batch(0))
    box = [state]

    def step():
        box[0], metrics = trainer.train_step(box[0], batch_arrays)
        jax.block_until_ready(metrics)

    seconds = median_time(step, repeats)
    del box, state, trainer
    gc.collect()
    return seconds


def torch_train_step(model, tokens, forward=None):
    """One AdamW step of `model` on `tokens` (the project's optimizer settings and clipping), as a closure."""
    import torch

    forward = model if forward is None else forward  # a torch.compile'd module has no truth value
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)

    def step():
        loss = forward(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def torch_train(model, vocab: int, batch: int, seq_len: int, repeats: int, compiled: bool) -> float:
    import torch

    tokens = torch.from_numpy(np.random.RandomState(0).randint(0, vocab, (batch, seq_len)))
    model.train()
    step = torch_train_step(model, tokens, torch.compile(model) if compiled else model)
    seconds = median_time(step, repeats)
    model.eval()
    del step
    gc.collect()
    return seconds


def main() -> None:
    args = parse()
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - set(PHASES)
    if unknown:
        raise SystemExit(f"--skip: unknown phase(s) {sorted(unknown)}; known: {PHASES}")
    import torch
    import transformers

    torch.set_num_threads(args.threads or os.cpu_count())
    config = get_preset(args.preset, dtype=args.dtype, param_dtype=args.dtype,
                        max_position_embeddings=max(args.prompt_len + args.new_tokens, args.seq_len, 128))
    # Trainer.init_state(0)'s weights: the same initialisation the project trains from.
    params = init_params(config, jax.random.split(jax.random.PRNGKey(0))[0])
    hf = to_hf(config, params, args.dtype)
    rows = []  # (measurement, project, eager, compiled, unit, note)
    compile_modes = [False] if args.no_compile else [False, True]

    if "decode" not in skip or "prefill" not in skip:
        prompts = np.random.RandomState(1).randint(3, config.vocab_size, (args.batch, args.prompt_len)).astype(np.int32)
        prompts_t = torch.from_numpy(prompts.astype(np.int64))

    if "prefill" not in skip:
        apply = jax.jit(lambda p, t: Llama(config).apply({"params": p}, t))
        ours = median_time(lambda: jax.block_until_ready(apply(params, prompts)), args.repeats)
        theirs = []
        for compiled in compile_modes:
            forward = torch.compile(hf) if compiled else hf
            with torch.no_grad():
                theirs.append(median_time(lambda: forward(input_ids=prompts_t).logits, args.repeats))
        tokens = args.batch * args.prompt_len
        rows.append((f"prefill, batch {args.batch} x {args.prompt_len} (tokens/s)", tokens / ours,
                     *[tokens / t for t in theirs], ""))

    if "decode" not in skip:
        prepared = jax.jit(decode.prepare_params, static_argnums=0)(config, params)
        if "train" in skip:  # the stacked copy is no longer needed: keep one copy of a large model
            del params
            gc.collect()
        out = {}

        def ours_generate():
            out["ours"] = np.asarray(generate(config, prepared, prompts, args.new_tokens))

        ours = median_time(ours_generate, args.repeats)
        theirs, equal = [], []
        for compiled in compile_modes:
            kwargs = dict(do_sample=False, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                          eos_token_id=None, pad_token_id=0, attention_mask=torch.ones_like(prompts_t))
            if compiled:
                compile_config = transformers.CompileConfig()
                compile_config._compile_all_devices = True  # transformers compiles on GPU only by default
                kwargs.update(cache_implementation="static", compile_config=compile_config)

            def hf_generate():
                with torch.no_grad():
                    out["hf"] = hf.generate(prompts_t, **kwargs).numpy()

            theirs.append(median_time(hf_generate, args.repeats))
            equal.append(bool(np.array_equal(out["ours"], out["hf"])))
        tokens = args.batch * args.new_tokens
        step = jax.jit(functools.partial(decode.decode_step, config), donate_argnums=(3,)).lower(
            prepared, jnp.zeros((args.batch,), jnp.int32), jnp.zeros((args.batch,), jnp.int32),
            decode.init_cache(config, args.batch, args.prompt_len + args.new_tokens), jnp.int32(0)).compile()
        cost = step.cost_analysis()
        accessed = (cost[0] if isinstance(cost, list) else cost)["bytes accessed"]
        minimum = decode.min_step_bytes(config, args.batch, args.prompt_len + args.new_tokens)["total"]
        rows.append((f"greedy decode, batch {args.batch}, {args.prompt_len} + {args.new_tokens} new (new tokens/s)",
                     tokens / ours, *[tokens / t for t in theirs],
                     "tokens equal: " + ", ".join(f"{'compile' if c else 'eager'} {e}" for c, e in zip(compile_modes, equal))
                     + f"; XLA bytes/step {accessed / 1e6:,.1f} MB = {accessed / minimum:.3f} x minimum "
                       f"({minimum / 1e6:,.1f} MB)"))
        del prepared
        gc.collect()

    if "train" not in skip:
        train_batch = args.train_batch or args.batch
        ours = project_train(config, params, train_batch, args.seq_len, args.repeats)
        del params
        gc.collect()
        theirs = [torch_train(hf, config.vocab_size, train_batch, args.seq_len, args.repeats, c) for c in compile_modes]
        tokens = train_batch * args.seq_len
        rows.append((f"train step (AdamW), batch {train_batch} x {args.seq_len} (tokens/s)", tokens / ours,
                     *[tokens / t for t in theirs], ""))

    print(f"command: python {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()} ({jax.default_backend()}), "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads; torch threads "
          f"{torch.get_num_threads()}")
    print(f"versions: jax {jax.__version__}, flax {flax.__version__}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, python {platform.python_version()}")
    print(f"model: preset {args.preset}, {config.num_params() / 1e6:.1f}M params, dtype {args.dtype}; "
          f"medians of {args.repeats} after a warm-up\n")
    header = "| measurement | project | PyTorch eager | ratio |"
    sep = "|---|---|---|---|"
    if not args.no_compile:
        header += " PyTorch compile | ratio |"
        sep += "---|---|"
    print(header + " notes |")
    print(sep + "---|")
    for name, ours, *theirs, note in rows:
        cells = "".join(f" {t:,.1f} | {ours / t:.2f} |" for t in theirs)
        print(f"| {name} | {ours:,.1f} |{cells} {note} |")


if __name__ == "__main__":
    main()
