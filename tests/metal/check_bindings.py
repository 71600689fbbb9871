#!/usr/bin/env python3
"""Static checks that the host dispatch and the kernels agree through
turbo_bindings.h:
 1. the set of kernel names the host can request (turbo_names.cpp, built from
    the naming functions of turbo_bindings.h) equals the set of [[host_name]]s
    instantiated by the .metal files (after the preprocessor);
 2. every [[buffer(...)]] / [[function_constant(...)]] index in the TurboQuant
    kernels and every buffer index / function constant passed by
    the host dispatch (turboquant.cpp, turboquant_attention.cpp) is a TURBO_* macro from turbo_bindings.h (no literals);
 3. each kernel binds each buffer index at most once; the TURBO_FC_* indices
    are distinct;
 4. an argument's [[function_constant(c)]] names a declared function constant
    (`constant bool c [[function_constant(TURBO_FC_...)]]`); in turbo_quantize.h (the cache update, which binds only the
    buffer it writes, and the cache dequantize, which binds first / shift /
    freqs / waves only when used) every use of such an argument lies in an
    `if (...) {` block whose condition names c;
 5. every TURBO_FC_ index a kernel declares is set by the host dispatch.
usage: check_bindings.py KERNEL_ROOT PP_DIR OVERLAY_OR_TREE_ROOT BUILD_DIR"""
import os, re, subprocess, sys

root, pp, host_root, build = sys.argv[1:5]
here = os.path.dirname(os.path.abspath(__file__))
cxx = os.environ.get("CLANGXX", "clang++-19")
kdir = os.path.join(root, "mlx/backend/metal/kernels")
fails = 0

def fail(msg):
    global fails
    fails += 1
    print("  FAIL " + msg)

# 1. names
exe = os.path.join(build, "turbo_names")
subprocess.run([cxx, "-std=c++17", "-O0", "-I" + root, os.path.join(here, "turbo_names.cpp"), "-o", exe], check=True)
host = set(subprocess.run([exe], capture_output=True, text=True, check=True).stdout.split())
inst = set()
for f in ("sdpa_vector_turbo.metal", "sdpa_prefill_turbo.metal", "turbo_quantize.metal"):
    out = subprocess.run([cxx, "-x", "c++", "-std=c++17", "-E", "-P", "-I" + os.path.join(here, "shim/include"),
                          "-I" + pp, "-include", "mshim/mshim.h", os.path.join(pp, "mlx/backend/metal/kernels", f)],
                         capture_output=True, text=True, check=True).stdout
    for m in re.finditer(r'annotate\("host_name",\s*((?:"[^"]*"\s*)+)\)', out):
        inst.add("".join(re.findall(r'"([^"]*)"', m.group(1))))
missing, extra = sorted(host - inst), sorted(inst - host)
if missing: fail(f"{len(missing)} kernel names requested by the host are not instantiated, e.g. {missing[:3]}")
if extra: fail(f"{len(extra)} instantiated kernels the host never requests, e.g. {extra[:3]}")
if not missing and not extra:
    print(f"  ok  {len(host)} host kernel names == instantiated [[host_name]]s")

# 2./3. binding indices
for f in ("sdpa_vector_turbo.h", "sdpa_prefill_turbo.h", "turbo_quantize.h"):
    src = open(os.path.join(kdir, f)).read()
    for m in re.finditer(r"\[\[\s*(buffer|function_constant)\s*\(\s*([^),\]]+)", src):
        arg = m.group(2).strip()
        if m.group(1) == "function_constant" and not arg.startswith("TURBO_") and not arg.startswith("turbo_"):
            fail(f"{f}: function_constant({arg}) is not a TURBO_ macro / turbo_ constant")
        if m.group(1) == "buffer" and not arg.startswith("TURBO_"):
            fail(f"{f}: buffer({arg}) is not a TURBO_ macro")
    for km in re.finditer(r"\[\[kernel\]\] void (\w+)\((.*?)\)\s*\{", src, re.S):
        idx = re.findall(r"\[\[\s*buffer\s*\(\s*(TURBO_\w+)", km.group(2))
        if len(idx) != len(set(idx)):
            fail(f"{f}:{km.group(1)} binds a buffer index twice")
        # distinct macro values
        vals = {}
        defs = dict(re.findall(r"#define (TURBO_\w+) (\d+)", open(os.path.join(kdir, "turbo_bindings.h")).read()))
        for i in idx:
            v = defs.get(i)
            if v in vals: fail(f"{km.group(1)}: {i} and {vals[v]} have the same index {v}")
            vals[v] = i
fc_defs = re.findall(r"#define (TURBO_FC_\w+) (\d+)", open(os.path.join(kdir, "turbo_bindings.h")).read())
fc_vals = [v for _, v in fc_defs]
for n, v in fc_defs:
    if fc_vals.count(v) > 1:
        fail(f"turbo_bindings.h: function constant index {v} of {n} is used twice")

# 4. function-constant gates of kernel arguments
def guarded_uses(body, name):
    """For each use of `name` in body: the conditions of the enclosing
    `if (...) {` blocks (None for other blocks)."""
    out, stack = [], []
    for m in re.finditer(r"[{}]|\b%s\b" % re.escape(name), body):
        t = m.group(0)
        if t == "{":
            head = re.split(r"[;{}]", body[:m.start()])[-1]
            c = re.match(r"\s*if\s*\((.*)\)\s*$", head, re.S)
            stack.append(c.group(1) if c else None)
        elif t == "}":
            if stack: stack.pop()
        else:
            out.append([c for c in stack if c])
    return out

n_gated, fails_before = {}, fails
KFILES = ("sdpa_vector_turbo.h", "sdpa_prefill_turbo.h", "turbo_quantize.h")
declared = set()
for f in KFILES:
    declared |= set(re.findall(r"constant\s+bool\s+(\w+)\s*\[\[\s*function_constant\s*\(\s*TURBO_FC_\w+\s*\)\s*\]\]",
                               open(os.path.join(kdir, f)).read()))
for f in KFILES:
    src = re.sub(r"//[^\n]*", "", open(os.path.join(kdir, f)).read())
    for km in re.finditer(r"\[\[kernel\]\] void (\w+)\((.*?)\)\s*\{", src, re.S):
        gates = re.findall(r"(\w+)\s*\[\[\s*buffer\s*\([^)]*\)\s*,\s*function_constant\s*\(\s*(\w+)\s*\)", km.group(2))
        # the kernel body: up to the matching brace
        depth, i = 1, km.end()
        while depth and i < len(src):
            depth += {"{": 1, "}": -1}.get(src[i], 0); i += 1
        body = src[km.end():i - 1]
        for arg, c in gates:
            if c not in declared:
                fail(f"{f}:{km.group(1)}: argument {arg} gated by {c}, not a declared TURBO_FC_ function constant")
            if f != "turbo_quantize.h":
                continue
            for conds in guarded_uses(body, arg):
                if not any(re.search(r"\b%s\b" % c, cd) for cd in conds):
                    fail(f"{f}:{km.group(1)}: {arg} (bound only with {c}) used outside an if ({c}) block")
                    break
                n_gated[km.group(1)] = n_gated.get(km.group(1), 0) + 1
if fails == fails_before:
    print(f"  ok  function-constant gates: declared constants, distinct TURBO_FC_ indices; gated argument uses "
          f"all under if (gate): " + ", ".join(f"{k} {v}" for k, v in sorted(n_gated.items())))

HOST_FILES = ("turboquant.cpp", "turboquant_attention.cpp")
cpps = [os.path.join(host_root, "mlx/backend/metal", f) for f in HOST_FILES]
cpp = cpps[0]
if all(os.path.exists(c) for c in cpps):
    src = "".join(open(c).read() for c in cpps)
    for m in re.finditer(r"set_(?:input_array|output_array|bytes)\([^;]*?,\s*([^,;()]+)\)\s*;", src):
        if not m.group(1).strip().startswith("TURBO_"):
            fail(f"host dispatch: buffer index {m.group(1).strip()} is not a TURBO_ macro")
    for m in re.finditer(r"MTL::DataType::\w+,\s*([^}]+)\}", src):
        if not m.group(1).strip().startswith("TURBO_FC_"):
            fail(f"host dispatch: function constant index {m.group(1).strip()} is not a TURBO_FC_ macro")
    print("  ok  binding indices are TURBO_* macros (kernels and " + ", ".join(HOST_FILES) + ")" if not fails else "")
    # 5. every function constant a kernel declares is set by the host
    host_fc = set(re.findall(r"MTL::DataType::\w+,\s*(TURBO_FC_\w+)\s*\}", src))
    kern_fc = set()
    for f in KFILES:
        kern_fc |= set(re.findall(r"\[\[\s*function_constant\s*\(\s*(TURBO_FC_\w+)\s*\)\s*\]\]",
                                  open(os.path.join(kdir, f)).read()))
    unset = sorted(kern_fc - host_fc)
    if unset:
        fail(f"the host dispatch never sets the function constants {unset}")
    else:
        print(f"  ok  the {len(kern_fc)} function constants the kernels declare are all set by the host dispatch")
else:
    fail(f"{' or '.join(cpps)} not found")
sys.exit(1 if fails else 0)
