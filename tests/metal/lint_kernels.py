#!/usr/bin/env python3
"""Checks C++ mode cannot express for the TurboQuant kernel sources (gaps of
the shim's clang++ type check, which accepts them while the Metal compiler
rejects them or computes differently):
  - `double` (Metal has no double; clang++ would compute in double on the CPU),
  - unsuffixed floating literals (double in C++, float on the GPU: the CPU
    model would round differently),
  - `static` / namespace-scope mutable variables (Metal needs `constant`),
  - function pointers / virtual functions / exceptions / recursion markers.
usage: lint_kernels.py KERNEL_DIR"""
import os, re, sys
kdir = sys.argv[1]
files = ["turbo_bindings.h", "turbo_common.h", "sdpa_vector_turbo.h", "sdpa_prefill_turbo.h",
         "turbo_quantize.h", "sdpa_vector_turbo.metal", "sdpa_prefill_turbo.metal", "turbo_quantize.metal"]
bad = 0
def strip(src):
    src = re.sub(r"/\*.*?\*/", lambda m: re.sub(r"[^\n]", " ", m.group(0)), src, flags=re.S)
    src = re.sub(r"//[^\n]*", "", src)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', src)
for f in files:
    p = os.path.join(kdir, f)
    if not os.path.exists(p):
        print(f"  FAIL missing {f}"); bad += 1; continue
    src = strip(open(p).read())
    # host-only part of turbo_bindings.h
    if f == "turbo_bindings.h":
        src = src.split("#ifndef __METAL_VERSION__\n#include <string>")[0]
    for n, line in enumerate(src.splitlines(), 1):
        checks = [
            (r"\bdouble\b", "double"),
            (r"(?<![\w.])(\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.fFhH])", "unsuffixed floating literal"),
            (r"\bvirtual\b|\bthrow\b|\btry\b|\bcatch\b", "virtual / exceptions"),
            (r"\(\s*\*\s*\w+\s*\)\s*\(", "function pointer"),
            (r"^\s*static\s+(?!constant|constexpr|inline|METAL_FUNC|_assert)", "static variable without constant"),
        ]
        for rx, what in checks:
            if re.search(rx, line):
                print(f"  FAIL {f}:{n}: {what}: {line.strip()[:100]}"); bad += 1
print("  ok  kernel sources: no double, no unsuffixed float literals, no static/virtual/exceptions/function pointers" if not bad else "")
sys.exit(1 if bad else 0)
