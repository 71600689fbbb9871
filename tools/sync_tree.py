#!/usr/bin/env python3
"""Make DEST's source files equal to SRC's, touching only what changed.

    tools/sync_tree.py SRC DEST

build.sh assembles the patched MLX tree (tag + overlay + patches) from
scratch in SRC, then calls this to update its long-lived work tree DEST:
a file whose bytes are unchanged keeps its modification time, so CMake and
ninja in DEST's build directory rebuild only what the change affects. Files
that an earlier sync wrote and that SRC no longer has are removed; anything
else in DEST (build directories, wheels, egg-info) is left alone. The list of
synced files is kept in DEST/.turboquant-manifest.
"""

import filecmp
import os
import shutil
import sys

MANIFEST = ".turboquant-manifest"


def source_files(root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            yield os.path.relpath(os.path.join(dirpath, name), root)


def main(src, dest):
    os.makedirs(dest, exist_ok=True)
    manifest_path = os.path.join(dest, MANIFEST)
    previous = set()
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            previous = set(f.read().splitlines())
    current = set(source_files(src))
    changed = 0
    for rel in sorted(current):
        s = os.path.join(src, rel)
        d = os.path.join(dest, rel)
        if os.path.isfile(d) and filecmp.cmp(s, d, shallow=False):
            continue
        os.makedirs(os.path.dirname(d), exist_ok=True)
        if os.path.lexists(d) and not os.path.isfile(d):
            shutil.rmtree(d)
        shutil.copy2(s, d)
        os.utime(d)  # newer than any object built from the old content
        changed += 1
    removed = 0
    for rel in sorted(previous - current):
        d = os.path.join(dest, rel)
        if os.path.isfile(d) or os.path.islink(d):
            os.remove(d)
            removed += 1
    with open(manifest_path, "w") as f:
        f.write("\n".join(sorted(current)) + "\n")
    print(
        f"    work tree {dest}: {changed} files updated, {removed} removed, "
        f"{len(current) - changed} unchanged"
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
