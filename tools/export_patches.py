#!/usr/bin/env python3
"""Developer tool: export a patched MLX dev tree into mlx_overlay/ + patches/.

The dev tree is a clone of MLX at the pinned tag with one commit per step of
the series (commit subject = step name, e.g. "quantize-turbo-modes"). For step
N, the hunks to files that exist upstream become patches/000N-<subject>.patch;
files added by any step go to mlx_overlay/ at their MLX paths. Metal (0010+)
and CUDA (0020+) patches and overlay files are maintained in this repository
directly and are never overwritten.

    tools/export_patches.py ~/.cache/turboquant-mlx/dev/mlx
"""

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
TAG = "v0.32.1"


def git(tree, *args):
    return subprocess.run(
        ["git", "-C", str(tree), *args], check=True, capture_output=True, text=True
    ).stdout


def main():
    tree = pathlib.Path(sys.argv[1]).expanduser()
    upstream = set(git(tree, "ls-tree", "-r", "--name-only", TAG).split())
    commits = git(tree, "rev-list", "--reverse", f"{TAG}..HEAD").split()
    for old in ROOT.glob("patches/000[0-9]-*.patch"):
        old.unlink()
    added = set()
    for n, c in enumerate(commits, start=1):
        subject = git(tree, "log", "-1", "--format=%s", c).strip()
        files = git(tree, "diff", "--name-only", f"{c}~1", c).split()
        existing = [f for f in files if f in upstream]
        added |= {f for f in files if f not in upstream}
        diff = git(tree, "diff", f"{c}~1", c, "--", *existing) if existing else ""
        (ROOT / "patches" / f"{n:04d}-{subject}.patch").write_text(diff)
    copied = 0
    for f in sorted(added):
        dst = ROOT / "mlx_overlay" / f
        backend_owned = f.startswith(("mlx/backend/metal/", "mlx/backend/cuda/"))
        if backend_owned and dst.exists():
            continue
        if not (tree / f).exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(tree / f, dst)
        copied += 1
    print(f"{len(commits)} patches, {copied} overlay files copied")


if __name__ == "__main__":
    main()
