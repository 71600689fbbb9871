"""Batched generation through mlx-lm: aggregate throughput, peak memory, sequences per memory.

Runs mlx-lm's own ``batch_generate`` (continuous batching through ``BatchGenerator``)
once per cell (context, batch, cache):

  batch    B sequences generated together (``--batches``)
  context  prompt tokens of every sequence (``--contexts``); random token ids, seeded
  caches   bf16            mlx-lm's plain ``KVCache`` in the model dtype
                           (``kv_cache_type=None``)
           turbo4/turbo3   ``batch_generate(..., kv_cache_type=...)``, which the patched
                           mlx-lm forwards to ``BatchGenerator``

Model: a local mlx-lm folder (``--model``, default SmolLM2-135M-Instruct as written by
``benchmarks/prepare_smollm2.py``), or ``--qwen7b-shape``: the Qwen2.5-7B shape with random
bf16 weights, built by ``e2e_generate.build_model``. ``--dtype auto`` (default) runs a loaded
model in float32 on the CPU (MLX's CPU backend has no fast float16 matmul) and as stored
elsewhere. Generation is greedy and has no stop tokens, so every sequence yields exactly
``--gen-tokens`` tokens.

Per cell: one warm-up call per cache at the smallest batch and context, then ``--runs`` runs;
median, min and max are reported. From ``BatchResponse.stats`` (``BatchStats``): prefill s is
``prompt_time`` (prompt processing, summed over the prefill batches of ``--prefill-batch``
sequences), decode tok/s the aggregate B * gen_tokens / ``generation_time`` (wall time of the
generator outside prompt processing). Wall s is the whole ``batch_generate`` call. Peak memory
is ``mx.get_peak_memory`` over a run (reset before it; weights included; GB = 1e9 bytes).
Cache bytes per sequence are computed from the model shape at context + gen_tokens tokens:

  bf16    2 (K, V) * layers * kv_heads * head_dim * itemsize(model dtype)
  turbo4  2 * layers * kv_heads * (head_dim / 8 uint32 words * 4 + one scale in the dtype)
  turbo3  2 * layers * kv_heads * ((head_dim / 16 + ceil(head_dim / 32)) words * 4 + scale)

(the packed widths of ``TurboQuantKVCache``; checked against a one-token cache at start), and
seq ratio vs bf16 = bf16 bytes / this cache's bytes: how many more sequences fit in the memory
the plain cache of one takes. Cells that would start after ``--time-budget`` seconds are
recorded as skipped; a cell that raises keeps its error.

    python benchmarks/batch_generate.py --out benchmarks/results
    python benchmarks/batch_generate.py --qwen7b-shape --contexts 8192,32768 --out results
    python benchmarks/batch_generate.py --contexts 128 --batches 1,2 --gen-tokens 4 \\
        --out /tmp/bg_smoke                       # CPU check, < 1 min

Writes OUT/batch_generate_<machine>.json (a list of rows, rewritten after every cell), .md and
.png (if matplotlib imports).
"""

import argparse
import math
import os
import sys
import time
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.generate import batch_generate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_generate import (  # noqa: E402
    QWEN25_7B,
    SKIPPED,
    add_output_args,
    build_model,
    csv,
    device_name,
    error_line,
    finish,
    fmt_ratio,
    fmt_stat,
    log,
    machine_name,
    no_stats,
    out_of_time,
    plot_panels,
    recorder,
    repeat,
    summarize,
    table_line,
)

CACHES = {"bf16": None, "turbo4": "turbo4", "turbo3": "turbo3"}
STATS = ["prefill_s", "decode_tok_s", "wall_s"]


def default_model():
    root = os.environ.get("TURBOQUANT_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = os.path.join(xdg, "turboquant-mlx")
    return Path(root) / "models" / "SmolLM2-135M-Instruct"


class NoStopTokenizer:
    """What ``batch_generate`` asks of a tokenizer, with no stop tokens and no detokenizing."""

    eos_token_ids = []

    def decode(self, ids):
        return ""


def model_shape(model):
    a = model.args
    heads = a.num_attention_heads
    head_dim = getattr(a, "head_dim", None) or a.hidden_size // heads
    kv_heads = getattr(a, "num_key_value_heads", None) or heads
    return dict(layers=len(model.layers), kv_heads=kv_heads, head_dim=head_dim)


def model_dtype(model):
    """The activation dtype: that of the first floating-point parameter (norms stay float)."""
    for _, p in tree_flatten(model.parameters()):
        if mx.issubdtype(p.dtype, mx.floating):
            return p.dtype
    raise ValueError("no floating-point parameter")


def bytes_per_token(shape, cache, itemsize):
    """KV bytes one token of one sequence takes in the cache, all layers, K and V."""
    D = shape["head_dim"]
    if cache == "bf16":
        per_head = D * itemsize
    elif cache == "turbo4":
        per_head = D // 8 * 4 + itemsize
    elif cache == "turbo3":
        per_head = (D // 16 + math.ceil(D / 32)) * 4 + itemsize
    else:
        raise ValueError(cache)
    return 2 * shape["layers"] * shape["kv_heads"] * per_head


def check_turbo_widths(shape, dtype):
    """Warn if a one-token TurboQuantKVCache disagrees with ``bytes_per_token``."""
    try:
        from mlx_lm.models.cache import TurboQuantKVCache
    except ImportError:
        sys.exit("error: mlx_lm without TurboQuantKVCache (run tools/build_mlx_lm.sh)")
    D, item = shape["head_dim"], mx.zeros((), dtype).itemsize
    for cache in ("turbo4", "turbo3"):
        try:
            c = TurboQuantKVCache(cache)
            x = mx.random.normal((1, 1, 1, D)).astype(dtype)
            c.update_and_fetch(x, x)
            got = sum(a.shape[-1] * a.itemsize for a in c.keys + c.values)
        except Exception as e:  # the formula stays; say why it is unchecked
            log(f"(could not check the {cache} widths: {type(e).__name__}: {e})")
            continue
        want = bytes_per_token(dict(shape, layers=1, kv_heads=1), cache, item)
        if got != want:
            log(f"warning: {cache} cache holds {got} B per head and token, formula {want}")


def one_run(model, prompts, cache, args):
    """(prefill s, decode tok/s, wall s, peak bytes) of one batch_generate call."""
    kw = dict(max_tokens=args.gen_tokens, kv_cache_type=CACHES[cache], return_token_ids=True)
    kw["completion_batch_size"] = len(prompts)  # all B decode together (mlx-lm's default: 32)
    if args.prefill_batch:
        kw["prefill_batch_size"] = args.prefill_batch
    if args.prefill_step:
        kw["prefill_step_size"] = args.prefill_step
    mx.synchronize()
    mx.clear_cache()
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    res = batch_generate(model, NoStopTokenizer(), prompts, **kw)
    mx.synchronize()
    wall = time.perf_counter() - t0
    peak = mx.get_peak_memory()
    st = res.stats
    n_tok = sum(len(t) for t in res.token_ids)
    if n_tok != len(prompts) * args.gen_tokens:
        raise RuntimeError(f"{n_tok} tokens generated, not {len(prompts)} x {args.gen_tokens}")
    prompt_time = st.prompt_time
    gen_time = getattr(st, "generation_time", None)
    if gen_time is None:
        gen_time = st.wall_time - prompt_time
    return prompt_time, n_tok / gen_time, wall, peak


def empty_row(meta, batch, context, cache, error):
    row = dict(meta, batch=batch, context=context, cache=cache, **no_stats(STATS))
    row.update(
        peak_memory_gb=None, cache_bytes_per_seq=None, seq_ratio_vs_bf16=None, runs=0, error=error
    )
    return row


def random_prompts(vocab, batch, context, seed):
    key = mx.random.key(seed + 1009 * context + batch)
    return mx.random.randint(0, vocab, (batch, context), key=key).tolist()


def measure_cell(model, meta, ids, cache, shape, itemsize, args):
    batch, context = len(ids), len(ids[0])
    runs = repeat(args.runs, one_run, model, ids, cache, args)
    row = empty_row(meta, batch, context, cache, None)
    row.update(summarize(runs, STATS))
    per_tok = bytes_per_token(shape, cache, itemsize)
    row["peak_memory_gb"] = max(r[3] for r in runs) / 1e9
    row["cache_bytes_per_seq"] = per_tok * (context + args.gen_tokens)
    row["seq_ratio_vs_bf16"] = bytes_per_token(shape, "bf16", itemsize) / per_tok
    row["runs"] = len(runs)
    return row


def markdown(rows, header):
    lines = [
        header,
        "",
        "| context | batch | cache | prefill s | decode tok/s aggregate | vs bf16 | peak GB "
        "| cache MiB/seq | sequences per bf16 memory |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    ref = {
        (r["context"], r["batch"]): r for r in rows if r["cache"] == "bf16" and r["error"] is None
    }
    for r in rows:
        cells = [f"{r['context']:,}", str(r["batch"]), r["cache"]]
        if r["error"] is not None:
            lines.append(error_line(cells, r["error"], 9))
            continue
        b = ref.get((r["context"], r["batch"]))
        cells += [
            fmt_stat(r, "prefill_s", 3, bare_single=True),
            fmt_stat(r, "decode_tok_s", 1, bare_single=True),
            fmt_ratio(r, b, "decode_tok_s"),
            f"{r['peak_memory_gb']:.2f}",
            f"{r['cache_bytes_per_seq'] / 2**20:.2f}",
            f"{r['seq_ratio_vs_bf16']:.2f}x",
        ]
        lines.append(table_line(cells))
    lines.append("")
    return "\n".join(lines)


def plot(rows, path, title):
    contexts = list(dict.fromkeys(r["context"] for r in rows))
    panels = [("decode_tok_s", "aggregate decode (tok/s)"), ("peak_memory_gb", "peak memory (GB)")]
    x, label = ("batch", "batch (sequences)"), "{c}, context {g:,}"
    plot_panels(rows, path, title, CACHES, "context", contexts, x, panels, label)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="mlx-lm folder (default: SmolLM2)")
    ap.add_argument("--qwen7b-shape", action="store_true", help="random-weight Qwen2.5-7B shape")
    ap.add_argument("--layers", type=int, default=None, help="--qwen7b-shape layer count")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--contexts", default="2048,8192", help="prompt tokens per sequence")
    ap.add_argument("--caches", default=",".join(CACHES))
    ap.add_argument("--gen-tokens", type=int, default=32, help="generated per sequence")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--prefill-batch", type=int, default=None, help="default: mlx-lm's (8)")
    ap.add_argument("--prefill-step", type=int, default=None, help="default: mlx-lm's (2048)")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    add_output_args(ap)
    args = ap.parse_args()
    batches = sorted(int(b) for b in csv(args.batches))
    contexts = sorted(int(c) for c in csv(args.contexts))
    caches = csv(args.caches)
    bad = set(caches) - set(CACHES)
    if bad or args.gen_tokens < 1 or args.runs < 1 or min(batches) < 1 or min(contexts) < 2:
        ap.error(f"bad --caches {sorted(bad)}, or --gen-tokens/--runs/--batches < 1/--contexts < 2")

    if args.qwen7b_shape:
        config = dict(QWEN25_7B)
        if args.layers:
            config["num_hidden_layers"] = args.layers
        model = build_model(config, "bf16")
        name = "Qwen2.5-7B shape (random weights)"
    else:
        from mlx_lm import load

        path = args.model or default_model()
        if not (path / "config.json").is_file():
            sys.exit(f"error: no model at {path} (run benchmarks/prepare_smollm2.py)")
        model, _ = load(str(path))
        name = path.name
    dtype = args.dtype
    if dtype == "auto" and mx.default_device() == mx.cpu and not args.qwen7b_shape:
        dtype = "float32"
    if dtype != "auto":
        model.set_dtype(getattr(mx, dtype))
        mx.eval(model.parameters())
    dtype = model_dtype(model)
    itemsize = mx.zeros((), dtype).itemsize
    shape = model_shape(model)
    check_turbo_widths(shape, dtype)

    machine = args.machine or machine_name()
    meta = {"machine": machine, "model": name, "gen_tokens": args.gen_tokens}
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"batch_generate_{machine}")
    device = device_name()
    header = (
        f"device: {device}; {name}, {shape['layers']} layers, {shape['kv_heads']} KV heads of "
        f"{shape['head_dim']}, {str(dtype).split('.')[-1]} (the 'bf16' cache is the plain cache "
        f"in this dtype); mlx-lm batch_generate, greedy, {args.gen_tokens} generated tokens per "
        f"sequence, random prompts; {args.runs} run(s) per cell"
        f"{'' if args.no_warmup else ' after a warm-up'}; mlx {mx.__version__}"
    )
    log(header)

    vocab = model.args.vocab_size
    rows, t_start = [], time.monotonic()
    record = recorder(rows, base, lambda rs: markdown(rs, header))
    warmed = set()
    for L in contexts:
        for B in batches:
            for c in caches:
                if out_of_time(t_start, args.time_budget):
                    record(empty_row(meta, B, L, c, SKIPPED))
                    continue
                log(f"[{time.monotonic() - t_start:.0f}s] context {L}, batch {B}, cache {c}")
                try:
                    if c not in warmed and not args.no_warmup:
                        warm = random_prompts(vocab, batches[0], contexts[0], args.seed + 1)
                        one_run(model, warm, c, args)
                        warmed.add(c)
                    ids = random_prompts(vocab, B, L, args.seed)
                    record(measure_cell(model, meta, ids, c, shape, itemsize, args))
                except Exception as e:
                    record(empty_row(meta, B, L, c, f"{type(e).__name__}: {e}"))
                mx.clear_cache()

    title = f"{name} through mlx-lm batch_generate, {device}"
    finish(markdown(rows, header), plot, rows, base + ".png", title)


if __name__ == "__main__":
    main()
