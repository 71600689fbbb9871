"""How far greedy generation through a turbo cache moves under float32-level
rounding noise: the tiny test model of tests/mlx_lm (float32, its
TINY_PROMPTS) run twice on the CPU, once with its 2-D weights
multiplied by (1 + eps * N(0, 1)), for the cache types given.

This bounds what tests comparing two runs that round differently (a batch
against each prompt alone, the server's batched against sequential answers,
on a GPU) can assert: a 3-bit code is a step function of its input, so a
rounding difference that moves one coordinate across a centroid boundary
changes the reconstruction by a centroid spacing, not by the rounding.

    python benchmarks/rounding_sensitivity.py --eps 1e-7,1e-6 --out benchmarks/results

Prints, per eps and cache type, the largest |log-probability difference| of
a token both runs chose, and the steps where the runs' tokens first differ
with the margin of the unperturbed run; writes OUT/rounding_sensitivity_cpu.md.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "mlx_lm"))

import mlx.core as mx  # noqa: E402
from _stack import TINY_PROMPTS, tiny_llama  # noqa: E402
from mlx.utils import tree_map  # noqa: E402
from mlx_lm.generate import generate_step  # noqa: E402
from mlx_lm.models.cache import make_prompt_cache  # noqa: E402


def generate(model, prompt, kv_cache_type, n_gen):
    cache = make_prompt_cache(model, kv_cache_type=kv_cache_type)
    return list(generate_step(mx.array(prompt), model, max_tokens=n_gen, prompt_cache=cache))


def compare(eps, kv_cache_type, seeds, n_gen):
    """(largest |dlogp| at agreeing tokens, [(seed, prompt length, step, margin)])."""
    worst, flips = 0.0, []
    for seed in seeds:
        model, _ = tiny_llama(seed=seed, dtype=mx.float32)
        noisy, _ = tiny_llama(seed=seed, dtype=mx.float32)
        mx.random.seed(1000 + seed)
        noisy.update(
            tree_map(
                lambda p: p * (1 + eps * mx.random.normal(p.shape)) if p.ndim == 2 else p,
                noisy.parameters(),
            )
        )
        for p in TINY_PROMPTS:
            a = generate(model, p, kv_cache_type, n_gen)
            b = generate(noisy, p, kv_cache_type, n_gen)
            for i, ((ta, la), (tb, lb)) in enumerate(zip(a, b)):
                if ta != tb:
                    flips.append((seed, len(p), i, (la[ta] - la[tb]).item()))
                    break
                worst = max(worst, abs((la[ta] - lb[tb]).item()))
    return worst, flips


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eps", default="1e-7,1e-6")
    ap.add_argument("--caches", default="turbo3,turbo4-turbo3,turbo4,none")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--gen-tokens", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    mx.set_default_device(mx.cpu)
    lines = [
        f"tiny float32 llama of tests/mlx_lm, {len(TINY_PROMPTS)} prompts x {args.seeds} seeds, "
        f"{args.gen_tokens} greedy tokens, CPU; weights x (1 + eps N(0,1))",
        "",
        "| eps | cache | max abs dlogp, same token | first differing tokens (of runs) | their margins in the unperturbed run (nats) |",
        "|---:|---|---:|---:|---|",
    ]
    for eps in (float(e) for e in args.eps.split(",")):
        for c in args.caches.split(","):
            worst, flips = compare(
                eps, None if c == "none" else c, range(args.seeds), args.gen_tokens
            )
            margins = ", ".join(f"{m:.3f}" for *_, m in flips)
            lines.append(
                f"| {eps:g} | {c} | {worst:.4f} | {len(flips)} of {args.seeds * len(TINY_PROMPTS)} | {margins} |"
            )
            print(lines[-1], flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "rounding_sensitivity_cpu.md"), "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
