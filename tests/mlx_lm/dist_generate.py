"""Greedy generation with a TurboQuant cache, on one process or sharded.

Run alone (one process) or under ``mlx.launch`` (every rank runs it): with
more than one rank the model is loaded with mlx-lm's ``sharded_load``
(tensor parallel: each rank holds its share of the attention heads, so its
cache holds its share of the KV heads). Rank 0 prints one JSON line: the
generated tokens, then the tokens of a continuation generated after the
cache was saved with ``save_prompt_cache`` (one file per rank) and loaded
back; every rank writes its cache's KV heads per layer and bytes to
``CACHE_FILE.rank<r>.json``.

    python tests/mlx_lm/dist_generate.py MODEL_DIR --kv-cache-type turbo4
    mlx.launch --backend ring -n 2 tests/mlx_lm/dist_generate.py MODEL_DIR ...
"""

import argparse
import json

import mlx.core as mx
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import load_prompt_cache, make_prompt_cache, save_prompt_cache
from mlx_lm.utils import load, sharded_load


def greedy(model, prompt, cache, n):
    return [t for t, _ in generate_step(mx.array(prompt), model, max_tokens=n, prompt_cache=cache)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--kv-cache-type", default="turbo4")
    ap.add_argument("--prompt", default="w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--cache-file", required=True, help="prefix of the per-rank prompt-cache files")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (the ring backend's device)")
    args = ap.parse_args()
    if args.cpu:
        mx.set_default_device(mx.cpu)

    group = mx.distributed.init()
    rank, size = group.rank(), group.size()
    if size > 1:
        model, tokenizer = sharded_load(args.model)
    else:
        model, tokenizer = load(args.model)
    prompt = tokenizer.encode(args.prompt)
    cache = make_prompt_cache(model, kv_cache_type=args.kv_cache_type)
    tokens = greedy(model, prompt, cache, args.max_tokens)

    path = f"{args.cache_file}.rank{rank}.safetensors"
    save_prompt_cache(path, cache)
    loaded = load_prompt_cache(path)
    more = greedy(model, tokens[-1:], loaded, args.max_tokens // 2)

    # Every rank reports its own cache next to its prompt-cache file.
    with open(f"{args.cache_file}.rank{rank}.json", "w") as f:
        json.dump({
            "kv_heads": [c.keys[0].shape[1] for c in cache],
            "cache_bytes": sum(c.nbytes for c in cache),
        }, f)
    if rank == 0:
        print(json.dumps({
            "size": size,
            "tokens": [int(t) for t in tokens],
            "continued": [int(t) for t in more],
            "modes": list(cache[0].turbo_modes),
        }), flush=True)


if __name__ == "__main__":
    main()
