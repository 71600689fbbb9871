"""Where the time of one decode step goes, bf16 cache vs TurboQuant caches.

The same model as ``e2e_generate.py`` (Qwen2.5-7B shape, random weights),
a prompt of ``context`` tokens prefilled through the cache in chunks of
``--prefill-step``, then one token at a time:

  pipelined   ms per token of mlx-lm's decode loop (the next step is built and
              queued with ``mx.async_eval`` before the current token is read),
              as ``generate_step`` runs it
  sync        ms per step when every step is evaluated before the next one is
              built (graph build + GPU time, no overlap)
  build       ms of building one step's graph on the host (model call, no
              evaluation)
  nodes       primitives in one step's graph (a count of host work per step)
  attention   ms of the attention calls of all layers alone (the op mlx-lm
              calls, on this cache's arrays, one new query per layer)
  update      ms of the cache appends of all layers alone (one new token each,
              quantization included)
  rest        sync - attention - update: projections, MLP, norms, sampling

Every timing is the median of ``--repeats`` repetitions (min and max too).
The model and each cache's prompt are built once per cell.

    python benchmarks/decode_profile.py --contexts 32768,131072 --out benchmarks/results
    python benchmarks/decode_profile.py --tiny --contexts 512 --out /tmp/prof   # CPU check

Writes OUT/decode_profile_<machine>.json (rows) and .md.
"""

import argparse
import json
import os
import statistics
import sys
import time

import mlx.core as mx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_generate import (  # noqa: E402
    QWEN25_7B,
    TINY,
    add_output_args,
    build_model,
    csv,
    device_name,
    log,
    machine_name,
    recorder,
    step_nodes,
    table_line,
    write_results,
)
from mlx_lm.models.base import scaled_dot_product_attention  # noqa: E402
from mlx_lm.models.cache import make_prompt_cache  # noqa: E402

CACHES = ["bf16", "turbo4", "turbo3", "turbo4-turbo3"]
PARTS = ["pipelined_ms", "sync_ms", "build_ms", "attention_ms", "update_ms"]


def stats(xs):
    return statistics.median(xs), min(xs), max(xs)


def prefill(model, prompt, cache, step):
    for s in range(0, prompt.size - 1, step):
        model(prompt[None, s : min(s + step, prompt.size - 1)], cache=cache)
        mx.eval([c.state for c in cache])
        mx.clear_cache()
    return prompt[-1:]


def decode_pipelined(model, cache, y, n):
    """ms per token of the async decode loop (generate_step's structure)."""

    def step(y):
        logits = model(y[None], cache=cache)[:, -1, :]
        return mx.argmax(logits, axis=-1)

    y = step(y)
    mx.async_eval(y)
    stamps = []
    for _ in range(n):
        nxt = step(y)
        mx.async_eval(nxt)
        y.item()
        stamps.append(time.perf_counter())
        y = nxt
    y.item()
    return 1e3 * (stamps[-1] - stamps[0]) / (len(stamps) - 1), y


def decode_sync(model, cache, y, n):
    """(sync ms, build ms) per step, every step evaluated before the next."""
    total, build = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        y = mx.argmax(model(y[None], cache=cache)[:, -1, :], axis=-1)
        t1 = time.perf_counter()
        mx.eval(y)
        t2 = time.perf_counter()
        total.append(t2 - t0)
        build.append(t1 - t0)
    return 1e3 * statistics.median(total), 1e3 * statistics.median(build), y


def layer_arrays(cache):
    keys, values = [], []
    for c in cache:
        if hasattr(c, "turbo_modes"):
            k, v = c.keys_and_values()
        else:
            k, v = c.keys[..., : c.offset, :], c.values[..., : c.offset, :]
        keys.append(k)
        values.append(v)
    return keys, values


def attention_only(model, cache, n):
    """ms of one query's attention over every layer's cache (the op alone)."""
    args = model.args
    hq, d = args.num_attention_heads, args.hidden_size // args.num_attention_heads
    keys, values = layer_arrays(cache)
    q = mx.random.normal((1, hq, 1, d)).astype(mx.bfloat16)
    mx.eval(q)
    times = []
    for _ in range(n + 1):
        t0 = time.perf_counter()
        outs = [
            scaled_dot_product_attention(q, k, v, cache=c, scale=d**-0.5, mask=None)
            for k, v, c in zip(keys, values, cache)
        ]
        mx.eval(outs)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times[1:])


def update_only(model, cache, n):
    """ms of appending one token to every layer's cache (then trimmed off)."""
    args = model.args
    hkv, d = args.num_key_value_heads, args.hidden_size // args.num_attention_heads
    k = mx.random.normal((1, hkv, 1, d)).astype(mx.bfloat16)
    v = mx.random.normal((1, hkv, 1, d)).astype(mx.bfloat16)
    mx.eval(k, v)
    times = []
    for _ in range(n + 1):
        t0 = time.perf_counter()
        outs = [c.update_and_fetch(k, v) for c in cache]
        mx.eval(outs)
        times.append(time.perf_counter() - t0)
        for c in cache:
            c.trim(1)
    return 1e3 * statistics.median(times[1:])


def measure(model, prompt, kind, args):
    cache = (
        make_prompt_cache(model) if kind == "bf16" else make_prompt_cache(model, kv_cache_type=kind)
    )
    y = prefill(model, prompt, cache, args.prefill_step)
    mx.synchronize()
    row = {"cache": kind, "cache_mib": sum(c.nbytes for c in cache) / 2**20}
    reps = {p: [] for p in PARTS}
    for r in range(args.repeats):
        ms, y2 = decode_pipelined(model, cache, y, args.steps)
        reps["pipelined_ms"].append(ms)
        added = args.steps + 1
        if r == 0:
            # The nodes of a typical step, counted past the prompt's end: there
            # a buffer can be exactly full (its stored rows are then the
            # buffer itself, no slices) and the next step grows it.
            row["nodes"], row["node_kinds"] = step_nodes(model, cache, y)
            mx.eval([c.state for c in cache])
            added += 1
        for c in cache:
            c.trim(added)
        s, b, _ = decode_sync(model, cache, y, args.steps)
        reps["sync_ms"].append(s)
        reps["build_ms"].append(b)
        for c in cache:
            c.trim(args.steps)
        reps["attention_ms"].append(attention_only(model, cache, args.steps))
        reps["update_ms"].append(update_only(model, cache, args.steps))
    for p, xs in reps.items():
        row[p], row[p + "_min"], row[p + "_max"] = stats(xs)
    row["rest_ms"] = row["sync_ms"] - row["attention_ms"] - row["update_ms"]
    return row


def markdown(rows, header):
    lines = [
        header,
        "",
        "| context | cache | pipelined ms/token | sync ms/step | host build ms "
        "| graph nodes | attention ms | cache update ms | rest ms | cache MiB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("error"):
            lines.append(table_line([f"{r['context']:,}", r["cache"], "error: " + r["error"]]))
            continue

        def f(p):
            return f"{r[p]:.2f} [{r[p + '_min']:.2f}-{r[p + '_max']:.2f}]"

        lines.append(
            table_line(
                [
                    f"{r['context']:,}",
                    r["cache"],
                    f("pipelined_ms"),
                    f("sync_ms"),
                    f("build_ms"),
                    str(r["nodes"]),
                    f("attention_ms"),
                    f("update_ms"),
                    f"{r['rest_ms']:.2f}",
                    f"{r['cache_mib']:.1f}",
                ]
            )
        )
    return "\n".join(lines) + "\n"


def add_profile_args(ap, contexts, steps, steps_help):
    """The arguments decode_profile.py and decode_trace.py share."""
    ap.add_argument("--contexts", default=contexts)
    ap.add_argument("--caches", default=",".join(CACHES))
    ap.add_argument("--steps", type=int, default=steps, help=steps_help)
    ap.add_argument("--prefill-step", type=int, default=2048)
    ap.add_argument("--tiny", action="store_true", help="tiny model (CPU smoke test)")
    ap.add_argument(
        "--layers",
        type=int,
        default=None,
        help="override the layer count (host work grows with it)",
    )
    add_output_args(ap)


def setup(args, name, describe):
    """(model, output base path, header): the model of e2e_generate.py with bf16
    weights, and a header naming the device, the shape and describe(config)."""
    config = dict(TINY if args.tiny else QWEN25_7B)
    if args.layers:
        config["num_hidden_layers"] = args.layers
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"{name}_{args.machine or machine_name()}")
    header = (
        f"device: {device_name()}; {'tiny' if args.tiny else 'Qwen2.5-7B'} shape, "
        f"{config['num_hidden_layers']} layers, bf16 random weights; "
        f"{describe}; mlx {mx.__version__}"
    )
    log(header)
    model = build_model(config, "bf16")
    mx.random.seed(0)
    return model, base, header


def cells(args, model):
    """(context, cache kind, prompt) of every cell, contexts ascending."""
    for L in sorted(int(c) for c in csv(args.contexts)):
        prompt = mx.random.randint(0, model.args.vocab_size, (L,))
        for kind in csv(args.caches):
            log(f"context {L}, cache {kind}")
            yield L, kind, prompt


def measure_cells(args, model, measure, base, render, brief=None):
    """Rows {"context", **measure(model, prompt, kind, args)} of every cell; a
    cell that raises is logged and left out. BASE.json and BASE.md
    (render(rows)) are rewritten after each cell; brief(row), if given, is
    logged."""
    rows = []
    for L, kind, prompt in cells(args, model):
        try:
            rows.append({"context": L, **measure(model, prompt, kind, args)})
        except Exception as e:  # keep the other cells
            log(f"  error: {e!r}")
            continue
        if brief:
            log(json.dumps(brief(rows[-1])))
        mx.clear_cache()
        write_results(base, rows, render(rows))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_profile_args(ap, "32768,131072", 32, "decode steps per timing")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model, base, header = setup(
        args,
        "decode_profile",
        f"{args.steps} steps per timing, median [min-max] of {args.repeats}",
    )
    rows = []
    record = recorder(rows, base, lambda rs: markdown(rs, header))
    for L, kind, prompt in cells(args, model):
        try:
            row = {"context": L, **measure(model, prompt, kind, args)}
        except Exception as e:
            row = {"context": L, "cache": kind, "error": f"{type(e).__name__}: {e}"}
        record(row)
        mx.clear_cache()
    print(markdown(rows, header))


if __name__ == "__main__":
    main()
