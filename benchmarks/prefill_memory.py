"""Where the peak memory of a long prefill goes, bf16 cache vs TurboQuant caches.

The model of ``e2e_generate.py`` (Qwen2.5-7B shape, random bf16 weights)
prefills ``context`` tokens through the cache in chunks of ``--prefill-step``,
each chunk evaluated with the cache's state as mlx-lm's ``generate_step`` does.
Before each chunk the peak is reset; per chunk the script records the memory
held before it (weights, cache, buffers held over) and the chunk's peak
above that: its transient memory. Every cache grows its buffers by
concatenation once a chunk (old and new buffers alive together); a turbo
cache also dequantizes each layer's cache into a transient copy for MLX's
attention (the prefill route), so the transient shows how many layers' copies
are alive at once: the row gives one layer's K and V copy size
(``B * Hkv * L * D`` elements each, in bf16) to compare with.

    python benchmarks/prefill_memory.py --contexts 131072 --out benchmarks/results
    python benchmarks/prefill_memory.py --tiny --contexts 2048 --prefill-step 512 \\
        --out /tmp/pm                                   # CPU check

Writes OUT/prefill_memory_<machine>.json (rows: the last chunk's numbers and
every chunk's) and .md. Environment variables that change how MLX groups its
work (e.g. ``MLX_MAX_OPS_PER_BUFFER`` on CUDA) can be set around it; the
header records the ones set.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decode_profile import CACHES, measure_cells, setup  # noqa: E402
from e2e_generate import add_output_args, table_line  # noqa: E402

import mlx.core as mx  # noqa: E402
from mlx_lm.models.cache import make_prompt_cache  # noqa: E402

GB = 1e9
# MLX settings that change when buffers are released (recorded in the header).
ENV = ["MLX_MAX_OPS_PER_BUFFER", "MLX_MAX_MB_PER_BUFFER", "MLX_USE_CUDA_GRAPHS"]


def chunks(model, prompt, cache, step):
    """[(start, held GB, transient GB)] of each chunk of the prefill."""
    out = []
    for s in range(0, prompt.size - 1, step):
        mx.synchronize()
        mx.clear_cache()
        mx.reset_peak_memory()
        held = mx.get_active_memory()
        model(prompt[None, s : min(s + step, prompt.size - 1)], cache=cache)
        mx.eval([c.state for c in cache])
        mx.synchronize()
        out.append((s, held / GB, (mx.get_peak_memory() - held) / GB))
    return out


def measure(model, prompt, kind, args):
    cache = (
        make_prompt_cache(model) if kind == "bf16" else make_prompt_cache(model, kv_cache_type=kind)
    )
    per_chunk = chunks(model, prompt, cache, args.prefill_step)
    a = model.args
    d = a.hidden_size // a.num_attention_heads
    # One layer's K and V as a bf16 copy at the last chunk's length.
    layer_kv = 2 * a.num_key_value_heads * (prompt.size - 1) * d * 2 / GB
    start, held, transient = per_chunk[-1]
    return {
        "cache": kind,
        "cache_gb": sum(c.nbytes for c in cache) / GB,
        "last_chunk_start": start,
        "last_held_gb": held,
        "last_transient_gb": transient,
        "max_transient_gb": max(t for _, _, t in per_chunk),
        "layer_kv_bf16_gb": layer_kv,
        "chunks": [{"start": s, "held_gb": h, "transient_gb": t} for s, h, t in per_chunk],
    }


def markdown(rows, header):
    lines = [
        header,
        "",
        "| context | cache | cache GB | held before the last chunk GB | last chunk's "
        "transient GB | largest transient GB | one layer's K+V in bf16 GB |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            table_line(
                [f"{r['context']:,}", r["cache"]]
                + [
                    f"{r[k]:.3f}"
                    for k in (
                        "cache_gb",
                        "last_held_gb",
                        "last_transient_gb",
                        "max_transient_gb",
                        "layer_kv_bf16_gb",
                    )
                ]
            )
        )
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", default="131072")
    ap.add_argument("--caches", default=",".join(CACHES))
    ap.add_argument("--prefill-step", type=int, default=2048)
    ap.add_argument("--tiny", action="store_true", help="tiny model (CPU smoke test)")
    ap.add_argument("--layers", type=int, default=None, help="override the layer count")
    add_output_args(ap)
    args = ap.parse_args()
    env = ", ".join(f"{k}={os.environ[k]}" for k in ENV if k in os.environ) or "MLX defaults"
    model, base, header = setup(
        args, "prefill_memory", f"prefill chunks of {args.prefill_step}; {env}"
    )
    rows = measure_cells(
        args,
        model,
        measure,
        base,
        lambda rs: markdown(rs, header),
        brief=lambda r: {k: v for k, v in r.items() if k != "chunks"},
    )
    print(markdown(rows, header))


if __name__ == "__main__":
    main()
