"""Runs the pytest suite's test functions without pytest (device diagnosis).

On the H100 image every pytest process that uses the CUDA build of MLX
segfaulted at a fixed test (benchmarks/cuda_runs.md, "The CUDA build on the
H100", item 5), while the same test bodies passed in a plain Python process.
This runner imports the test modules, expands their `parametrize` marks,
builds the three fixtures they use (`rng`, `tmp_path`, and `test_errors.case`,
through the fixture's own function) and calls each test in this process, so
the GPU results of the suite do not depend on pytest's process.

    python tests/cuda/run_plain.py [--gc] [-k SUBSTRING] [MODULE ...]   (default: all)

--gc runs gc.collect() after every test, as pytest's unraisable-exception
plugin does (to see whether collecting cyclic garbage, e.g. exception
tracebacks that hold arrays, is what crashes).

Prints one line per failing test and a summary; exit status 1 on failures.
"""

import gc
import importlib
import itertools
import os
import pathlib
import sys
import tempfile
import time
import traceback

import numpy as np

TESTS = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
MODULES = ["test_attention", "test_errors", "test_format"]


def fixture_function(fix):
    """The undecorated function of a pytest fixture (pytest 7 to 9)."""
    if hasattr(fix, "_get_wrapped_function"):  # pytest >= 8.4
        return fix._get_wrapped_function()
    return getattr(fix, "__wrapped__", fix)


def param_sets(fn):
    """[(id, kwargs)] for every combination of the function's parametrize marks."""
    axes = []
    for mark in getattr(fn, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names, values = mark.args[0], mark.args[1]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        axis = []
        for v in values:
            v = v.values if hasattr(v, "values") and hasattr(v, "marks") else v
            vals = v if len(names) > 1 else (v,)
            axis.append(dict(zip(names, vals)))
        axes.append(axis)
    out = []
    for combo in itertools.product(*axes) if axes else [()]:
        kw = {}
        for d in combo:
            kw.update(d)
        out.append(("-".join(str(v) for v in kw.values()), kw))
    return out


def fixtures(mod, fn, seed):
    import inspect

    kw = {}
    for name in inspect.signature(fn).parameters:
        if name == "rng":
            kw[name] = np.random.default_rng(seed)
        elif name == "tmp_path":
            kw[name] = pathlib.Path(tempfile.mkdtemp())
        elif hasattr(mod, name):
            kw[name] = fixture_function(getattr(mod, name))()
    return kw


def main(argv):
    sel = None
    collect = "--gc" in argv
    argv = [a for a in argv if a != "--gc"]
    if "-k" in argv:
        i = argv.index("-k")
        sel = argv[i + 1]
        argv = argv[:i] + argv[i + 2 :]
    mods = argv or MODULES
    seed = int(os.environ.get("TURBO_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
    print(f"seed={seed}", flush=True)
    passed, failed = 0, []
    t0 = time.time()
    for mname in mods:
        mod = importlib.import_module(mname)
        for fname in sorted(n for n in dir(mod) if n.startswith("test_")):
            fn = getattr(mod, fname)
            if not callable(fn):
                continue
            for pid, params in param_sets(fn):
                tid = f"{mname}::{fname}[{pid}]" if pid else f"{mname}::{fname}"
                if sel and sel not in tid:
                    continue
                try:
                    kw = fixtures(mod, fn, seed)
                    kw.update(params)
                    fn(**kw)
                    passed += 1
                except Exception as e:  # noqa: BLE001 - report and go on
                    if type(e).__name__ == "Skipped":
                        continue
                    failed.append(tid)
                    print(f"FAILED {tid}: {type(e).__name__}: {e}", flush=True)
                    traceback.print_exc(limit=3)
                if collect:
                    gc.collect()
    print(f"{passed} passed, {len(failed)} failed in {time.time() - t0:.1f}s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
