#!/usr/bin/env python3
"""KV-cache quality of the TurboQuant caches in the patched mlx-lm.

Compares, on one model and one fixed English text:

  unquantized     plain ``KVCache`` in the model dtype (the reference; "fp16")
  turbo4          ``TurboQuantKVCache`` keys and values turbo4
  turbo3          ``TurboQuantKVCache`` keys and values turbo3
  turbo4-turbo3   keys turbo4, values turbo3
  <type>:plain    the same TurboQuant cache without its transforms (turbo_transforms=False)
  <type>:center   the transforms with a constant key shift only (no rotary
                  embedding given to the cache: the shift does not follow the position)
  <type>:edgeN    the same with the first and last N layers unquantized (turbo_fp16_layers=N)
  affine4/affine8 mlx-lm's ``QuantizedKVCache`` (group 64, 4 / 8 bits)

Metrics, per context length L (non-overlapping windows of L tokens of the
text, each run from an empty cache with the cache type under test from the
first token on, positions L/2..L-1 of every window scored):

  ppl      perplexity of the text
  kl       mean KL(p_ref || p_cache) of the next-token distributions, where
           p_ref is the unquantized cache's
  top1     agreement of the arg-max token with the unquantized cache

plus greedy-generation agreement (tokens equal to the unquantized cache's
continuation, and the index of the first difference) and peak memory of a
long generation.

``--dtype auto`` (default) runs the model in float16 on a GPU and in float32
on the CPU (MLX's CPU backend has no fast float16 matmul).

Default text: ``/usr/share/common-licenses/GPL-3`` (Debian's base-files;
verbatim copies are permitted by its own notice), ~7.7k tokens with the
SmolLM2 tokenizer. Use ``--text-file`` for another one.

    python benchmarks/prepare_smollm2.py
    python benchmarks/eval_kv_quality.py --out results.json
"""

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import mlx.core as mx

DEFAULT_TEXT = "/usr/share/common-licenses/GPL-3"
REF = "unquantized"
ALL_CACHES = [REF, "turbo4", "turbo3", "turbo4-turbo3", "affine4", "affine8"]


def default_model() -> Path:
    root = os.environ.get("TURBOQUANT_CACHE")
    root = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "turboquant-mlx"
    return root / "models" / "SmolLM2-135M-Instruct"


def require_patched():
    if not hasattr(mx.fast, "quantized_scaled_dot_product_attention"):
        sys.exit("error: this mlx has no mx.fast.quantized_scaled_dot_product_attention "
                 "(install the patched TurboQuant wheel)")
    try:
        from mlx_lm.models.cache import TurboQuantKVCache  # noqa: F401
    except ImportError:
        sys.exit("error: mlx_lm without TurboQuantKVCache (run tools/build_mlx_lm.sh)")


def make_cache(model, kind):
    from mlx_lm.models.cache import (
        KVCache,
        QuantizedKVCache,
        TurboQuantKVCache,
        make_prompt_cache,
    )

    n = len(model.layers)
    if kind == REF:
        return [KVCache() for _ in range(n)]
    if kind.startswith("affine"):
        bits = int(kind[len("affine"):])
        return [QuantizedKVCache(group_size=64, bits=bits) for _ in range(n)]
    # "<type>:plain" is the TurboQuant cache without its transforms,
    # "<type>:edgeN" keeps the first and last N layers unquantized.
    kv_type, _, variant = kind.partition(":")
    edge = int(variant[4:]) if variant.startswith("edge") else 0
    cache = make_prompt_cache(model, kv_cache_type=kv_type, turbo_transforms=variant != "plain",
                              turbo_fp16_layers=edge)
    if edge:
        return cache
    assert all(isinstance(c, TurboQuantKVCache) for c in cache)
    if variant == "center":
        for c in cache:
            c.rope = None
    return cache


def window_logprobs(model, tokens, kind, chunk, layer=None):
    """Log-probabilities (float32, (L, V)) of every next token of a window.
    With ``layer``, only that layer uses cache type ``kind``, the others the
    unquantized cache."""
    if layer is None:
        cache = make_cache(model, kind)
    else:
        cache = make_cache(model, REF)
        cache[layer] = make_cache(model, kind)[layer]
    outs = []
    for s in range(0, len(tokens), chunk):
        x = mx.array(tokens[s : s + chunk])[None]
        logits = model(x, cache=cache)[0].astype(mx.float32)
        lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        mx.eval(lp)
        outs.append(lp)
    return mx.concatenate(outs, axis=0)


def eval_contexts(model, ids, caches, contexts, windows, chunk, log):
    rows = []
    for L in contexts:
        n_win = min(windows, (len(ids) - 1) // L)
        if n_win == 0:
            log(f"skip context {L}: text too short")
            continue
        acc = {k: {"nll": 0.0, "kl": 0.0, "top1": 0, "n": 0} for k in caches}
        for w in range(n_win):
            win = ids[w * L : (w + 1) * L + 1]
            inp, tgt = win[:-1], mx.array(win[1:])
            lo = L // 2
            ref = None
            for k in caches:
                t0 = time.time()
                lp = window_logprobs(model, inp, k, chunk)[lo:]
                t = tgt[lo:]
                nll = -mx.take_along_axis(lp, t[:, None], axis=-1).sum()
                if k == REF:
                    ref = lp
                    kl = mx.array(0.0)
                    top1 = mx.array(L - lo)
                else:
                    p = mx.exp(ref)
                    kl = (p * (ref - lp)).sum()
                    top1 = (mx.argmax(lp, -1) == mx.argmax(ref, -1)).sum()
                mx.eval(nll, kl, top1)
                a = acc[k]
                a["nll"] += nll.item()
                a["kl"] += kl.item()
                a["top1"] += int(top1.item())
                a["n"] += L - lo
                log(f"ctx {L} window {w} {k}: {time.time() - t0:.1f}s")
        for k in caches:
            a = acc[k]
            rows.append({
                "context": L, "cache": k, "windows": n_win, "scored_tokens": a["n"],
                "ppl": math.exp(a["nll"] / a["n"]),
                "kl": a["kl"] / a["n"],
                "top1": a["top1"] / a["n"],
            })
    return rows


def eval_layers(model, ids, caches, L, chunk, log):
    """Mean KL (positions L/2..L-1 of the first window of L tokens) when only
    one layer at a time uses each cache type: where the error comes from."""
    inp = ids[:L]
    lo = L // 2
    ref = window_logprobs(model, inp, REF, chunk)[lo:]
    p = mx.exp(ref)
    rows = []
    for k in caches:
        if k == REF:
            continue
        t0 = time.time()
        kls = []
        for i in range(len(model.layers)):
            lp = window_logprobs(model, inp, k, chunk, layer=i)[lo:]
            kls.append((p * (ref - lp)).sum(-1).mean().item())
        rows.append({"context": L, "cache": k, "kl_per_layer": kls})
        log(f"layers {k}: {time.time() - t0:.1f}s")
    return rows


def result_rows(res):
    """The results-file rows: one per (context, cache type, transforms)."""
    rows = []
    for r in res["contexts"]:
        kind, _, variant = r["cache"].partition(":")
        rows.append({
            "context": r["context"], "cache": kind if variant in ("", "plain") else r["cache"],
            "transforms": kind.startswith("turbo") and variant != "plain",
            "ppl": r["ppl"], "kl": r["kl"], "top1": r["top1"],
        })
    return rows


def plot_layers(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for r in rows:
        kind, _, variant = r["cache"].partition(":")
        style = "--" if variant == "plain" else "-"
        label = f"{kind}, transforms {'off' if variant == 'plain' else 'on'}"
        ax.plot(range(len(r["kl_per_layer"])), r["kl_per_layer"], style, marker=".",
                label=label)
    ax.set_yscale("log")
    ax.set_xlabel("layer (the only one with a quantized cache)")
    ax.set_ylabel("mean KL vs unquantized")
    ax.set_title(f"KL per layer, context {rows[0]['context']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def eval_greedy(model, ids, caches, prompt_tokens, gen_tokens, n_prompts, log):
    """Greedy continuations of ``n_prompts`` prompts (evenly spaced windows of
    the text): tokens equal to the unquantized cache's, position by position,
    and the length of the common prefix, averaged over the prompts."""
    from mlx_lm.generate import generate_step

    span = max(len(ids) - prompt_tokens, 1)
    starts = [i * span // n_prompts for i in range(n_prompts)]
    outs = {k: [] for k in caches}
    for s in starts:
        prompt = mx.array(ids[s : s + prompt_tokens])
        for k in caches:
            t0 = time.time()
            cache = make_cache(model, k)
            toks = [t for t, _ in generate_step(prompt, model, max_tokens=gen_tokens,
                                                prompt_cache=cache)]
            outs[k].append(toks)
            log(f"greedy prompt at {s} {k}: {time.time() - t0:.1f}s")
    rows = []
    for k in caches:
        same, first = [], []
        for toks, ref in zip(outs[k], outs[REF]):
            same.append(sum(a == b for a, b in zip(toks, ref)))
            first.append(next((i for i, (a, b) in enumerate(zip(toks, ref)) if a != b), len(ref)))
        rows.append({"cache": k, "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
                     "prompts": n_prompts, "equal_tokens": sum(same) / n_prompts,
                     "first_difference": sum(first) / n_prompts,
                     "first_difference_each": first})
    return rows


def _used_bytes(c):
    """Bytes of the cache's buffers that hold tokens (allocation is in steps)."""
    if c.keys is None:
        return 0
    if isinstance(c.keys, tuple):
        arrs = list(c.keys) + list(c.values)
    else:
        arrs = [c.keys, c.values]
    return sum(a.nbytes for a in arrs) * c.offset / arrs[0].shape[2]


def eval_memory(model, ids, caches, prompt_tokens, gen_tokens, prefill_step, log):
    from mlx_lm.generate import generate_step

    reps = (prompt_tokens + len(ids) - 1) // len(ids)
    prompt = mx.array((ids * reps)[:prompt_tokens])
    rows = []
    for k in caches:
        mx.clear_cache()
        mx.reset_peak_memory()
        t0 = time.time()
        cache = make_cache(model, k)
        n = 0
        for _ in generate_step(prompt, model, max_tokens=gen_tokens, prompt_cache=cache,
                               prefill_step_size=prefill_step):
            n += 1
        mx.eval([c.state for c in cache])
        peak = mx.get_peak_memory()
        kv = sum(c.nbytes for c in cache)
        used = sum(_used_bytes(c) for c in cache)
        rows.append({"cache": k, "prompt_tokens": prompt_tokens, "gen_tokens": n,
                     "peak_memory_mb": peak / 2**20, "kv_cache_mb": kv / 2**20,
                     "kv_cache_used_mb": used / 2**20})
        log(f"memory {k}: {time.time() - t0:.1f}s")
    return rows


def markdown(res):
    lines = []
    ctx = res["contexts"]
    if ctx:
        lines += ["| context | cache | PPL | mean KL vs unquantized | top-1 agreement |",
                  "|---:|---|---:|---:|---:|"]
        for r in ctx:
            lines.append(f"| {r['context']} | {r['cache']} | {r['ppl']:.3f} | "
                         f"{r['kl']:.5f} | {100 * r['top1']:.2f}% |")
        lines.append("")
    if res["greedy"]:
        g0 = res["greedy"][0]
        lines += [f"Greedy generation, {g0['prompts']} prompts of {g0['prompt_tokens']} tokens, "
                  f"{g0['gen_tokens']} tokens each (means over the prompts):", "",
                  "| cache | tokens equal to unquantized (same position) | "
                  "tokens before the first difference | per prompt |",
                  "|---|---:|---:|---|"]
        for r in res["greedy"]:
            each = ", ".join(str(x) for x in r["first_difference_each"])
            lines.append(f"| {r['cache']} | {r['equal_tokens']:.1f}/{r['gen_tokens']} | "
                         f"{r['first_difference']:.1f} | {each} |")
        lines.append("")
    if res.get("layers"):
        rs = res["layers"]
        lines += [f"Mean KL when only one layer uses the cache type (context {rs[0]['context']}):",
                  "", "| layer | " + " | ".join(r["cache"] for r in rs) + " |",
                  "|---:|" + "---:|" * len(rs)]
        for i in range(len(rs[0]["kl_per_layer"])):
            lines.append(f"| {i} | " + " | ".join(f"{r['kl_per_layer'][i]:.5f}" for r in rs) + " |")
        lines.append("")
    if res["memory"]:
        m0 = res["memory"][0]
        lines += [f"Long generation, {m0['prompt_tokens']}-token prompt + "
                  f"{m0['gen_tokens']} tokens:", "",
                  "| cache | peak memory (MiB) | KV cache allocated (MiB) | KV cache used (MiB) |",
                  "|---|---:|---:|---:|"]
        for r in res["memory"]:
            lines.append(f"| {r['cache']} | {r['peak_memory_mb']:.1f} | "
                         f"{r['kv_cache_mb']:.2f} | {r['kv_cache_used_mb']:.2f} |")
    return "\n".join(lines)


def header(res, args, model_path):
    return (f"model {model_path.name}, dtype {args.dtype}, device {res['device']}, "
            f"text {args.text_file.name} ({res['text_tokens']} tokens, sha256 "
            f"{res['text_sha256'][:12]}); {args.windows} windows per context\n\n")


def main():
    p = argparse.ArgumentParser(description="KV-cache quality of TurboQuant caches")
    p.add_argument("--model", type=Path, default=None,
                   help="HF folder (default: the one prepare_smollm2.py writes)")
    p.add_argument("--text-file", type=Path, default=Path(DEFAULT_TEXT))
    p.add_argument("--dtype", default="auto",
                   choices=["auto", "float16", "bfloat16", "float32"])
    p.add_argument("--caches", default=",".join(ALL_CACHES))
    p.add_argument("--contexts", default="256,512,1024")
    p.add_argument("--windows", type=int, default=2, help="windows per context")
    p.add_argument("--chunk", type=int, default=2048, help="prefill chunk (tokens)")
    p.add_argument("--gen-prompt-tokens", type=int, default=256)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--gen-prompts", type=int, default=4, help="greedy prompts")
    p.add_argument("--mem-prompt-tokens", type=int, default=2048)
    p.add_argument("--mem-gen-tokens", type=int, default=32)
    p.add_argument("--mem-prefill-step", type=int, default=256)
    p.add_argument("--skip", default="", help="comma list of: contexts,greedy,memory,layers")
    p.add_argument("--layer-caches", default="turbo4,turbo3,turbo4:plain,turbo3:plain",
                   help="cache types of the per-layer KL")
    p.add_argument("--layer-context", type=int, default=1024)
    p.add_argument("--out", type=Path, default=None,
                   help="results file: a JSON list of rows (context, cache, transforms, "
                        "ppl, kl, top1); everything else goes to OUT.details.json, the "
                        "tables to OUT.md, the per-layer plot to OUT_layers.png")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()

    require_patched()
    from mlx_lm import load

    def log(msg):
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    model_path = args.model or default_model()
    if not (model_path / "config.json").is_file():
        sys.exit(f"error: no model at {model_path} (run benchmarks/prepare_smollm2.py)")
    model, tokenizer = load(str(model_path))
    if args.dtype == "auto":
        args.dtype = "float32" if mx.default_device() == mx.cpu else "float16"
    model.set_dtype(getattr(mx, args.dtype))

    raw = args.text_file.read_bytes()
    ids = tokenizer.encode(raw.decode("utf-8"))
    caches = [c.strip() for c in args.caches.split(",") if c.strip()]
    caches = [REF if c == "fp16" else c for c in caches]
    if REF in caches:
        caches.remove(REF)
    caches.insert(0, REF)
    skip = set(s.strip() for s in args.skip.split(",") if s.strip())
    log(f"{len(ids)} tokens of {args.text_file}; device {mx.default_device()}")

    res = {
        "model": str(model_path), "dtype": args.dtype,
        "text": str(args.text_file), "text_sha256": hashlib.sha256(raw).hexdigest(),
        "text_tokens": len(ids), "device": str(mx.default_device()),
        "args": {k: str(v) for k, v in vars(args).items()},
        "contexts": [], "greedy": [], "memory": [], "layers": [],
    }
    if "contexts" not in skip:
        contexts = [int(c) for c in args.contexts.split(",") if c]
        res["contexts"] = eval_contexts(model, ids, caches, contexts, args.windows,
                                        args.chunk, log)
    if "greedy" not in skip:
        res["greedy"] = eval_greedy(model, ids, caches, args.gen_prompt_tokens,
                                    args.gen_tokens, args.gen_prompts, log)
    if "memory" not in skip:
        res["memory"] = eval_memory(model, ids, caches, args.mem_prompt_tokens,
                                    args.mem_gen_tokens, args.mem_prefill_step, log)
    if "layers" not in skip:
        res["layers"] = eval_layers(model, ids, [c for c in args.layer_caches.split(",") if c],
                                    args.layer_context, args.chunk, log)
    if args.out:
        base = str(args.out)[: -len(".json")] if str(args.out).endswith(".json") else str(args.out)
        args.out.write_text(json.dumps(result_rows(res), indent=1) + "\n")
        Path(base + ".details.json").write_text(json.dumps(res, indent=1) + "\n")
        Path(base + ".md").write_text(header(res, args, model_path) + markdown(res) + "\n")
        if res["layers"]:
            try:
                plot_layers(res["layers"], base + "_layers.png")
            except ImportError:
                log("(matplotlib missing: no plot)")
    print(header(res, args, model_path))
    print(markdown(res))


if __name__ == "__main__":
    main()
