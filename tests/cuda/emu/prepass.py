"""Rewrites CUDA sources for the CPU emulator (cushim/cushim.h).

    python3 tests/cuda/emu/prepass.py OUT SRC=DEST...

Copies each SRC file to OUT/DEST (a directory: its *.cuh / *.cu / *.h into
OUT/DEST/) and rewrites what a host compiler cannot take:

* ``[extern] __shared__ [__align__(N)] T name[dims];`` -> per-block storage
  from the runtime (``cushim::shared`` / ``cushim::dynamic_shared``);
* ``asm(...)`` statements, by PTX mnemonic, into calls of the emulator
  (mma.sync m16n8k16 f16/bf16, movmatrix trans, ld.shared.b32,
  ex2.approx.ftz.f32); any other PTX is an error;
* ``kernel<<<grid, block, smem, stream>>>(args)`` -> ``cushim::launch(grid,
  block, smem, stream)(kernel, args)``.

Every rewrite is counted; a file's count of ``__shared__`` / ``asm`` /
``<<<`` left over is an error, so a kernel written in a form this script does
not know fails the build instead of running wrong.
"""

import os
import re
import sys

SHARED = re.compile(
    r"(?P<extern>extern\s+)?__shared__\s+(?:__align__\((?P<align>\d+)\)\s+)?"
    r"(?P<type>[A-Za-z_][\w:]*)\s+(?P<name>\w+)(?P<dims>(?:\[[^\]]*\])*)\s*;"
)
ASM = re.compile(r"\basm\s*(?:volatile\s*)?\((?P<body>(?:[^()]|\((?:[^()]|\([^()]*\))*\))*)\)\s*;")
OPERAND = re.compile(r'"(?P<c>[=+]?\w)"\s*\((?P<e>(?:[^()]|\([^()]*\))*)\)')
LAUNCH = re.compile(r"(?P<kernel>[A-Za-z_][\w:]*(?:<[^;{}()]*?>)?)\s*<<<(?P<cfg>.*?)>>>\s*\(", re.S)


def shared(m):
    t, name, dims = m["type"], m["name"], m["dims"]
    align = m["align"] or f"alignof({t})"
    if m["extern"]:
        if dims != "[]":
            raise SystemExit(f"extern __shared__ {name}{dims}: expected an unsized array")
        return f"{t}* {name} = static_cast<{t}*>(::cushim::dynamic_shared({align}));"
    if not dims:
        return f"{t}& {name} = *::cushim::shared<{t}, {align}>();"
    return f"{t}(&{name}){dims} = *::cushim::shared<{t}{dims}, {align}>();"


def asm(m, path):
    body = m["body"]
    strings = re.findall(r'"((?:[^"\\]|\\.)*)"', body.split(":")[0])
    text = "".join(strings).replace("\\n", " ").strip()
    ops = OPERAND.findall(body)
    outs = [e.strip() for c, e in ops if c[0] in "=+"]
    ins = [e.strip() for c, e in ops if c[0] not in "=+"]
    mnem = text.split()[0]
    if mnem.startswith("mma.sync.aligned.m16n8k16.row.col.f32."):
        kind = mnem.split(".")[7]
        t = {"f16": "__half", "bf16": "__nv_bfloat16"}[kind]
        if len(outs) != 4 or len(ins) != 6:
            raise SystemExit(f"{path}: {mnem}: expected 4 accumulators and 6 registers")
        return f"::cushim::mma_m16n8k16<{t}>({', '.join(outs + ins)});"
    one = {
        "movmatrix.sync.aligned.m8n8.trans.b16": "::cushim::movmatrix_trans",
        "ld.shared.b32": "::cushim::ld_shared_b32",
        "ex2.approx.ftz.f32": "::cushim::ex2_approx_ftz",
    }
    if mnem in one and len(outs) == 1 and len(ins) == 1:
        return f"{outs[0]} = {one[mnem]}({ins[0]});"
    raise SystemExit(f"{path}: no emulation of the PTX `{text}`")


def launch(m):
    return f"::cushim::launch({m['cfg'].strip()})({m['kernel'].strip()}, "


def rewrite(src, path):
    counts = {}
    out, counts["__shared__"] = SHARED.subn(shared, src)
    out, counts["asm"] = ASM.subn(lambda m: asm(m, path), out)
    out, counts["<<<"] = LAUNCH.subn(launch, out)
    code = re.sub(r"//[^\n]*|/\*.*?\*/", "", out, flags=re.S)
    for what in ("__shared__", "<<<"):
        if what in code:
            raise SystemExit(f"{path}: a {what} the prepass does not know is left")
    if re.search(r"\basm\s*(volatile\s*)?\(", code):
        raise SystemExit(f"{path}: an asm statement the prepass does not know is left")
    return out, counts


def main():
    out_root, pairs = sys.argv[1], sys.argv[2:]
    files = []
    for pair in pairs:
        src, dest = pair.split("=", 1)
        if os.path.isdir(src):
            names = sorted(f for f in os.listdir(src) if f.endswith((".cuh", ".cu", ".h")))
            files += [(os.path.join(src, f), os.path.join(dest, f)) for f in names]
        else:
            files.append((src, dest))
    total = {}
    for src, dest in files:
        dst = os.path.join(out_root, dest)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        text, counts = rewrite(open(src).read(), src)
        with open(dst, "w") as fh:
            fh.write(text)
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
    print("prepass: " + ", ".join(f"{v} {k}" for k, v in total.items()), file=sys.stderr)


if __name__ == "__main__":
    main()
