"""End-to-end generation through mlx-lm: prefill time, decode speed, memory.

Runs mlx-lm's own ``generate_step`` on the Qwen2.5-7B shape (28 layers,
hidden 3584, 28 query / 4 KV heads of 128, vocabulary 152064) with random
weights (normal, std 0.02; RMSNorm gains 1) and a random prompt of
``context`` tokens, once per cell (weights, context, cache):

  weights  bf16, or 4bit (``mlx.nn.quantize``, group 64) where MLX runs it
  caches   bf16            mlx-lm's plain ``KVCache``
           turbo4/turbo3   ``make_prompt_cache(model, kv_cache_type=...)``
           turbo4-turbo3   keys turbo4, values turbo3
           kv4             mlx-lm's ``--kv-bits 4`` (``QuantizedKVCache``,
                           group 64, from the first prompt chunk on)
           <turbo>:center  the turbo cache with a constant key shift only (no
                           moving shift; what it costs)
           <turbo>:slices  the turbo cache appending as before
                           ``mx.fast.quantized_cache_update``: the shift
                           subtracted with ops, ``mx.quantize``, slice
                           assignment (what the fused append saves)

Per cell: one warm-up run per (weights, cache) at the smallest context, then
``--runs`` runs, interleaved across the caches of a context (round r runs
every cache once); median, min and max are reported, and every run's values
(``prefill_s_runs``, ``decode_tok_s_runs``). Prefill s is the time
until ``generate_step`` yields its first token (prefill in chunks of
``--prefill-step`` plus one token); decode tok/s is (N - 1) over the time from
the first to the last of the N = ``--gen-tokens`` tokens (each run's median
step in ms is kept too, ``decode_step_ms_median_runs``). Peak memory is
``mx.get_peak_memory`` over a run (weights included; GB = 1e9 bytes), cache
bytes the summed ``nbytes`` of the cache after it (allocated buffers). A cell
that raises keeps its error (e.g. an op MLX's backend lacks); contexts that would
start after ``--time-budget`` seconds are recorded as skipped, and
``--resume`` measures only those (and missing cells) of an earlier run's JSON,
so a grid can be split over several commands of limited time.

    python benchmarks/e2e_generate.py --out benchmarks/results
    python benchmarks/e2e_generate.py --tiny --contexts 256,512 --runs 2 \\
        --gen-tokens 8 --out /tmp/e2e_smoke          # CPU check, < 1 min

Writes OUT/e2e_generate_<machine>.json (a list of rows, rewritten after every
cell), .md and .png (if matplotlib imports).
"""

import argparse
import collections
import io
import json
import os
import re
import statistics
import sys
import time

# MLX's CUDA backend raises a RuntimeError once its graph cache has missed
# 800 times over the process's life (MLX_ENABLE_CACHE_THRASHING_CHECK), and
# every later graph launch then fails: many generations at several contexts
# in one process get there. The check only raises; it changes no timing.
os.environ.setdefault("MLX_ENABLE_CACHE_THRASHING_CHECK", "0")

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
from mlx.utils import tree_flatten, tree_unflatten  # noqa: E402
from mlx_lm.generate import generate_step  # noqa: E402
from mlx_lm.models import qwen2  # noqa: E402
from mlx_lm.models import cache as cache_module  # noqa: E402
from mlx_lm.models.cache import make_prompt_cache  # noqa: E402

QWEN25_7B = dict(
    model_type="qwen2",
    hidden_size=3584,
    num_hidden_layers=28,
    intermediate_size=18944,
    num_attention_heads=28,
    num_key_value_heads=4,
    vocab_size=152064,
    rms_norm_eps=1e-6,
    rope_theta=1e6,
    max_position_embeddings=131072,
    tie_word_embeddings=False,
)
TINY = dict(
    QWEN25_7B,
    hidden_size=256,
    num_hidden_layers=2,
    intermediate_size=512,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=1024,
)
CACHES = ["bf16", "turbo4", "turbo3", "turbo4-turbo3", "kv4"]
WEIGHTS = ["bf16", "4bit"]
STATS = ["prefill_s", "decode_tok_s"]
SKIPPED = "skipped: time budget"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def csv(s):
    return [x.strip() for x in s.split(",") if x.strip()]


def device_name():
    return mx.device_info().get("device_name", str(mx.default_device()))


def machine_name():
    if not mx.is_available(mx.gpu):
        return "cpu"
    name = str(mx.device_info().get("device_name", "gpu"))
    m = re.search(r"\b([A-Z]\d{2,4})\b", name)  # H200, H100, A100, L40, ...
    return m.group(1).lower() if m else re.sub(r"\W+", "-", name).strip("-").lower()


def build_model(config, weights):
    model = qwen2.Model(qwen2.ModelArgs(**config))

    def init(name, p):  # RMSNorm gains 1, everything else N(0, 0.02^2)
        if name.endswith("norm.weight"):
            return mx.ones(p.shape, mx.bfloat16)
        return mx.random.normal(p.shape, mx.bfloat16, scale=0.02)

    params = [(k, init(k, p)) for k, p in tree_flatten(model.parameters())]
    model.update(tree_unflatten(params))
    mx.eval(model.parameters())
    if weights == "4bit":
        nn.quantize(model, group_size=64, bits=4)
        mx.eval(model.parameters())
    return model


def composed_append(
    key_bufs,
    value_bufs,
    keys,
    values,
    start,
    modes,
    shift=None,
    shift_freqs=None,
    shift_waves=None,
):
    """``turbo_append`` as ops (the ``:slices`` variant): the same rows."""
    n = keys.shape[2]
    if shift_waves is not None:
        moving = cache_module.turbo_wave_shift(shift_freqs, shift_waves, start, n)
        shift = moving if shift is None else shift.astype(mx.float32) + moving
    if shift is not None:
        keys = (keys.astype(mx.float32) - shift.astype(mx.float32)).astype(keys.dtype)
    for bufs, x, mode in ((key_bufs, keys, modes[0]), (value_bufs, values, modes[1])):
        for buf, new in zip(bufs, mx.quantize(x, mode=mode)):
            buf[..., start : start + n, :] = new
    return key_bufs, value_bufs


def count_nodes(outputs):
    """Primitives of the graph that computes OUTPUTS (not yet evaluated), by name."""
    f = io.StringIO()
    mx.export_to_dot(f, *outputs)
    names = re.findall(r'label ="([^"]+)", shape=rectangle', f.getvalue())
    return len(names), dict(collections.Counter(names).most_common())


def step_nodes(model, cache, token):
    """count_nodes of one decode step's graph: the model on TOKEN ((1,), as
    generate_step passes it) over CACHE, built and not evaluated (the cache
    then holds the step's appends, pending). MLX's host work per step grows
    with these nodes."""
    return count_nodes([model(token[None], cache=cache)])


def one_run(model, prompt, cache_kind, args):
    variant = cache_kind.partition(":")[2]
    fused = cache_module.turbo_append
    if variant == "slices":
        cache_module.turbo_append = composed_append
    try:
        return measure_run(model, prompt, cache_kind, args)
    finally:
        cache_module.turbo_append = fused


def measure_run(model, prompt, cache_kind, args):
    """(prefill s, decode tok/s, peak bytes, cache bytes, median step ms, graph
    nodes of a decode step) of one generation."""
    if cache_kind in ("bf16", "kv4"):
        cache = make_prompt_cache(model)
    else:
        # "<type>:center": the transforms with a constant key shift only.
        kind, _, variant = cache_kind.partition(":")
        cache = make_prompt_cache(model, kv_cache_type=kind)
        if variant == "center":
            for c in cache:
                c.rope = None
    kw = dict(max_tokens=args.gen_tokens, prompt_cache=cache, prefill_step_size=args.prefill_step)
    if cache_kind == "kv4":
        kw.update(kv_bits=4, kv_group_size=64, quantized_kv_start=0)
    mx.synchronize()
    mx.clear_cache()
    mx.reset_peak_memory()
    stamps = []
    t0 = time.perf_counter()
    for _ in generate_step(prompt, model, **kw):
        stamps.append(time.perf_counter())  # the token is an int: evaluated
    mx.eval([c.state for c in cache])  # the step queued after the last token
    # generate_step swaps in the quantized layers of kv4 into the same list.
    cache_bytes = sum(c.nbytes for c in cache)
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    # The median step next to the mean rate: steps the host stalls (graph
    # instantiations, the cache's growth) weigh in the mean only.
    step_ms = 1e3 * statistics.median(b - a for a, b in zip(stamps, stamps[1:]))
    peak = mx.get_peak_memory()
    nodes = step_nodes(model, cache, mx.array([0]))[0]
    return stamps[0] - t0, decode, peak, cache_bytes, step_ms, nodes


def no_stats(stats):
    """The row fields of ``summarize`` for a cell without runs: all None."""
    return {k: None for s in stats for k in (s, s + "_min", s + "_max")}


def summarize(runs, stats):
    """Median, min and max of each of STATS over RUNS (tuples, stat i at index i)."""
    out = {}
    for i, s in enumerate(stats):
        vals = [r[i] for r in runs]
        out.update({s: statistics.median(vals), s + "_min": min(vals), s + "_max": max(vals)})
    return out


def repeat(n, run, *a):
    """N results of run(*a), the MLX buffer cache cleared after each."""
    runs = []
    for _ in range(n):
        runs.append(run(*a))
        mx.clear_cache()
    return runs


def with_result_keys(row):
    """ROW with the results-file keys (docs/cuda.md): decode_tps[_min|_max],
    peak_mib, cache_mib, next to the measured ones they are computed from."""
    row = dict(row)
    for a, b in [
        ("decode_tps", "decode_tok_s"),
        ("decode_tps_min", "decode_tok_s_min"),
        ("decode_tps_max", "decode_tok_s_max"),
    ]:
        row.setdefault(a, row.get(b))
    gb, cb = row.get("peak_memory_gb"), row.get("cache_bytes")
    row.setdefault("peak_mib", None if gb is None else gb * 1e9 / 2**20)
    # decode_profile.py measures cache_mib itself.
    if row.get("cache_mib") is None:
        row["cache_mib"] = None if cb is None else cb / 2**20
    return row


def empty_row(weights, context, cache, error):
    row = {"weights": weights, "context": context, "cache": cache, **no_stats(STATS)}
    row.update(peak_memory_gb=None, cache_bytes=None, runs=0, error=error)
    return row


def measure_context(model, prompts, weights, context, caches, warmed, args):
    """The rows of one (weights, context) for CACHES. The runs interleave
    the caches (round r runs each once), so a drift of the machine over the
    minutes a context takes (clocks, host load) spreads over every cache
    instead of biasing the ones measured last. WARMED maps each cache warmed
    up so far to its warm-up error (None if it ran): a cache whose warm-up
    failed is not run at any context (its error is recorded for each)."""
    for c in caches:
        if c not in warmed:
            warmed[c] = None
            try:
                one_run(model, prompts[min(prompts)], c, args)
            except Exception as e:
                warmed[c] = f"{type(e).__name__}: {e}"
            mx.clear_cache()
    runs = {c: [] for c in caches}
    errors = {c: warmed[c] for c in caches if warmed[c] is not None}
    for r in range(args.runs):
        for c in caches:
            if c in errors:
                continue
            try:
                runs[c].append(one_run(model, prompts[context], c, args))
                p, d = runs[c][-1][:2]
                m = runs[c][-1][4]
                log(
                    f"  run {r + 1} {c}: prefill {p:.3f} s, decode {d:.1f} tok/s, median step {m:.2f} ms"
                )
            except Exception as e:
                errors[c] = f"{type(e).__name__}: {e}"
            mx.clear_cache()
    rows = []
    for c in caches:
        if c in errors:
            rows.append(empty_row(weights, context, c, errors[c]))
            continue
        row = empty_row(weights, context, c, None)
        row.update(summarize(runs[c], STATS))
        row["prefill_s_runs"] = [x[0] for x in runs[c]]
        row["decode_tok_s_runs"] = [x[1] for x in runs[c]]
        row["decode_step_ms_median_runs"] = [x[4] for x in runs[c]]
        row["peak_memory_gb"] = max(x[2] for x in runs[c]) / 1e9
        row["cache_bytes"] = runs[c][-1][3]
        row["graph_nodes"] = runs[c][-1][5]
        row["runs"] = len(runs[c])
        rows.append(row)
    return rows


def fmt_stat(r, s, digits, bare_single=False):
    """'median [min-max]' of stat S of row R; only the median if BARE_SINGLE and one run."""
    v, lo, hi = r[s], r[s + "_min"], r[s + "_max"]
    if bare_single and r["runs"] <= 1:
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} [{lo:.{digits}f}-{hi:.{digits}f}]"


def fmt_ratio(r, b, s):
    """Stat S of row R over that of reference row B ('-' without one)."""
    return f"{r[s] / b[s]:.2f}x" if b else "-"


def fmt_steps(steps):
    """'median [min-max]' of the runs' median decode steps (ms); '-' where the run kept none.
    Host stalls move a run's mean rate more than its median step."""
    if not steps:
        return "-"
    v = sorted(steps)
    n = len(v)
    med = v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2
    return f"{med:.2f} [{v[0]:.2f}-{v[-1]:.2f}]"


def table_line(cells):
    return "| " + " | ".join(cells) + " |"


def error_line(cells, error, columns):
    """A table line of CELLS, then the first line of ERROR, blank up to COLUMNS cells."""
    err = error.splitlines()[0].replace("|", "/")[:120]
    return table_line(cells + [f"error: {err}"] + [""] * (columns - len(cells) - 1))


def markdown(rows, header):
    lines = [header, ""]
    for w in dict.fromkeys(r["weights"] for r in rows):
        lines += [
            f"### weights {w}",
            "",
            "| context | cache | prefill s (median [min-max]) | prefill vs bf16 "
            "| decode tok/s (median [min-max]) | decode vs bf16 "
            "| decode step ms (median of runs' medians [min-max]) | peak GB | cache MiB "
            "| decode step's graph nodes |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        ref = {
            r["context"]: r
            for r in rows
            if r["weights"] == w and r["cache"] == "bf16" and r["error"] is None
        }
        for r in (r for r in rows if r["weights"] == w):
            cells = [f"{r['context']:,}", r["cache"]]
            if r["error"] is not None:
                lines.append(error_line(cells, r["error"], 10))
                continue
            b = ref.get(r["context"])
            cells += [
                fmt_stat(r, "prefill_s", 3),
                fmt_ratio(r, b, "prefill_s"),
                fmt_stat(r, "decode_tok_s", 1),
                fmt_ratio(r, b, "decode_tok_s"),
                fmt_steps(r.get("decode_step_ms_median_runs")),
                f"{r['peak_memory_gb']:.2f}",
                f"{r['cache_bytes'] / 2**20:.1f}",
                str(r.get("graph_nodes", "-")),
            ]
            lines.append(table_line(cells))
        lines.append("")
    return "\n".join(lines)


def plot_panels(rows, path, title, caches, group, groups, x, panels, label, legend=0, log_y=()):
    """Two panels on a log-2 x axis, a line per (group value, cache) of the rows without error.

    GROUP: the row field whose values GROUPS pick the line style (the cache picks the colour);
    X, PANELS: (row field, axis label) of the x axis and of each panel's y axis; LABEL: a
    format of c (cache) and g (group value); LEGEND: the panel with the legend; LOG_Y: the
    panels on a log y axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = dict(zip(caches, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    styles = ["-", "--", ":", "-."]
    for g, style in zip(groups, styles * len(groups)):
        for c in caches:
            rs = [r for r in rows if (r[group], r["cache"]) == (g, c) and r["error"] is None]
            if not rs:
                continue
            xs = [r[x[0]] for r in rs]
            for ax, (s, _) in zip(axes, panels):
                ys = [r[s] for r in rs]
                ax.plot(xs, ys, style, marker="o", color=colors[c], label=label.format(c=c, g=g))
    for ax, (_, ylabel) in zip(axes, panels):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(x[1])
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    for i in log_y:
        axes[i].set_yscale("log")
    axes[legend].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot(rows, path, title):
    panels = [("prefill_s", "prefill (s)"), ("decode_tok_s", "decode (tok/s)")]
    x, label = ("context", "context (tokens)"), "{c}, {g} weights"
    plot_panels(rows, path, title, CACHES, "weights", WEIGHTS, x, panels, label, 1, log_y=[0])


def write_results(base, rows, table):
    """Rewrite BASE.json with ROWS (atomically) and BASE.md with TABLE."""
    with open(base + ".json.tmp", "w") as f:
        json.dump(rows, f, indent=1)
    os.replace(base + ".json.tmp", base + ".json")
    with open(base + ".md", "w") as f:
        f.write(table)


def recorder(rows, base, render):
    """record(row): append ROW to ROWS, rewrite BASE.json (atomically) and BASE.md
    (render(rows)), log the row."""

    def record(row):
        rows.append(with_result_keys(row))
        write_results(base, rows, render(rows))
        log(json.dumps(row))

    return record


def out_of_time(t_start, budget):
    """Whether BUDGET seconds (None: no limit) have passed since monotonic time T_START."""
    return budget and time.monotonic() - t_start > budget


def add_output_args(ap):
    ap.add_argument("--time-budget", type=float, default=None, help="seconds")
    ap.add_argument("--machine", default=None, help="file name tag (default: device)")
    ap.add_argument("--out", default="benchmarks/results")


def finish(table, plot_fn, *plot_args):
    """Print TABLE, then plot_fn(*plot_args), skipped without matplotlib."""
    print(table)
    try:
        plot_fn(*plot_args)
    except ImportError:
        log("(matplotlib missing: no plot)")


def render(path):
    """Rewrite an earlier run's JSON with the results keys, and its table and plot
    (the header line is kept from its .md)."""
    base = path[: -len(".json")]
    with open(path) as f:
        rows = [with_result_keys(r) for r in json.load(f)]
    with open(base + ".md") as f:
        header = f.readline().rstrip("\n")
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(markdown(rows, header))
    title = f"Qwen2.5-7B shape through mlx-lm, {header.split(';')[0].split(': ')[-1]}"
    finish(markdown(rows, header), plot, rows, base + ".png", title)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", default="8192,32768,131072")
    ap.add_argument("--caches", default=",".join(CACHES))
    ap.add_argument("--weights", default=",".join(WEIGHTS))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--prefill-step", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=None, help="override the layer count")
    ap.add_argument("--tiny", action="store_true", help="tiny model (CPU smoke test)")
    add_output_args(ap)
    ap.add_argument(
        "--resume", action="store_true", help="keep the measured cells of an existing JSON"
    )
    ap.add_argument(
        "--render",
        metavar="JSON",
        default=None,
        help="only rewrite JSON (the results keys added), its .md and .png from its rows",
    )
    args = ap.parse_args()
    if args.render:
        render(args.render)
        return
    contexts = sorted(int(c) for c in csv(args.contexts))
    caches, weights = csv(args.caches), csv(args.weights)
    known = set(CACHES) | {
        c + v for c in CACHES if c.startswith("turbo") for v in (":center", ":slices")
    }
    bad = set(caches) - known | set(weights) - set(WEIGHTS)
    if bad or args.gen_tokens < 2 or args.runs < 1:
        ap.error(f"bad --caches/--weights {sorted(bad)}, or --gen-tokens < 2, or --runs < 1")
    config = dict(TINY if args.tiny else QWEN25_7B)
    if args.layers:
        config["num_hidden_layers"] = args.layers
    machine = args.machine or machine_name()
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"e2e_generate_{machine}")
    shape = "tiny" if args.tiny else "Qwen2.5-7B"
    device = device_name()
    header = (
        f"device: {device}; {shape} shape, "
        f"{config['num_hidden_layers']} layers, random weights; {args.gen_tokens} "
        f"generated tokens, prefill step {args.prefill_step}, {args.runs} runs per cell "
        f"after a warm-up; mlx {mx.__version__}"
    )
    log(header)

    mx.random.seed(0)
    vocab = config["vocab_size"]
    prompts = {L: mx.random.randint(0, vocab, (L,)) for L in contexts}
    mx.eval(prompts)
    rows, t_start, done = [], time.monotonic(), {}
    if args.resume and os.path.exists(base + ".json"):
        with open(base + ".json") as f:
            done = {(r["weights"], r["context"], r["cache"]): r for r in json.load(f)}
        done = {k: r for k, r in done.items() if r["error"] != SKIPPED}

    record = recorder(rows, base, lambda rs: markdown(rs, header))
    for w in weights:
        model, build_error = None, None
        todo = any((w, L, c) not in done for L in contexts for c in caches)
        if todo and not out_of_time(t_start, args.time_budget):
            try:
                model = build_model(config, w)
            except Exception as e:
                build_error = f"building the model: {type(e).__name__}: {e}"
        warmed = {}
        for L in contexts:
            todo = [c for c in caches if (w, L, c) not in done]
            skip = None
            if build_error:
                skip = build_error
            elif todo and out_of_time(t_start, args.time_budget):
                skip = SKIPPED
            if todo and not skip:
                log(
                    f"[{time.monotonic() - t_start:.0f}s] weights {w}, context {L}: {', '.join(todo)}"
                )
                measured = measure_context(model, prompts, w, L, todo, warmed, args)
                measured = dict(zip(todo, measured))
            for c in caches:
                if (w, L, c) in done:
                    record(done[w, L, c])
                elif skip:
                    record(empty_row(w, L, c, skip))
                else:
                    record(measured[c])
            mx.clear_cache()
        del model
        mx.clear_cache()

    title = f"{shape} shape through mlx-lm, {device}"
    finish(markdown(rows, header), plot, rows, base + ".png", title)


if __name__ == "__main__":
    main()
