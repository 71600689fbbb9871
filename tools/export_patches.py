#!/usr/bin/env python3
"""Developer tool: export a patched MLX dev tree into mlx_overlay/ + patches/.

New files (untracked in the dev tree) go to mlx_overlay/ at their MLX paths;
changes to files that exist upstream become the ordered patch series, one patch
per step as listed in SERIES. Usage:

    tools/export_patches.py ~/.cache/turboquant-mlx/dev/mlx
"""
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# step name -> upstream files it modifies (a file belongs to one step).
SERIES = {
    "0001-quantize-turbo-modes": [
        "mlx/primitives.h",
        "mlx/primitives.cpp",
        "mlx/ops.cpp",
        "mlx/fast.cpp",
        "mlx/CMakeLists.txt",
        "mlx/backend/cpu/CMakeLists.txt",
        "mlx/backend/cpu/quantized.cpp",
        "python/src/ops.cpp",
    ],
    "0002-fast-quantized-sdpa": [
        "mlx/fast.h",
        "mlx/fast_primitives.h",
        "mlx/export.cpp",
        "mlx/backend/no_gpu/CMakeLists.txt",
        "mlx/backend/metal/CMakeLists.txt",
        "mlx/backend/cuda/CMakeLists.txt",
        "python/src/fast.cpp",
    ],
}
# Patches numbered 0010+ (Metal), 0020+ (CUDA) are maintained in patches/
# directly and are not touched here.


def git(tree, *args):
    return subprocess.run(
        ["git", "-C", str(tree), *args], check=True, capture_output=True, text=True
    ).stdout


def main():
    tree = pathlib.Path(sys.argv[1]).expanduser()
    changed = set(git(tree, "diff", "--name-only", "v0.32.1").split())
    listed = {f for files in SERIES.values() for f in files}
    unlisted = changed - listed
    if unlisted:
        sys.exit(f"files changed but not in SERIES: {sorted(unlisted)}")
    for name, files in SERIES.items():
        diff = git(tree, "diff", "v0.32.1", "--", *files)
        (ROOT / "patches" / f"{name}.patch").write_text(diff)
    new = git(tree, "ls-files", "--others", "--exclude-standard").split()
    new = [f for f in new if not f.startswith("build/") and "__pycache__" not in f]
    for f in new:
        if f.startswith("mlx/backend/metal/") or f.startswith("mlx/backend/cuda/"):
            dst = ROOT / "mlx_overlay" / f
            if dst.exists():
                continue  # owned by the Metal / CUDA work, not overwritten
        dst = ROOT / "mlx_overlay" / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(tree / f, dst)
    print(f"{len(SERIES)} patches, {len(new)} overlay files")


if __name__ == "__main__":
    main()
