#!/usr/bin/env python3
"""Developer tool: recompute the line counts of every hunk header of the given
unified diffs in place (after editing a patch in patches/ by hand), e.g.

    tools/recount_hunks.py patches/0002-fast-quantized-sdpa.patch
"""
import re, sys
for path in sys.argv[1:]:
    lines = open(path).read().split('\n')
    out = []
    i = 0
    while i < len(lines):
        m = re.match(r'^@@ -(\d+),?(\d*) \+(\d+),?(\d*) @@(.*)$', lines[i])
        if not m:
            out.append(lines[i]); i += 1; continue
        j = i + 1
        old = new = 0
        while j < len(lines):
            l = lines[j]
            if l.startswith('@@') or l.startswith('diff --git') or (l == '' and j == len(lines) - 1):
                break
            if l.startswith('-'):
                old += 1
            elif l.startswith('+'):
                new += 1
            elif l.startswith(' ') or l == '':
                old += 1; new += 1
            elif l.startswith('\\'):
                pass
            else:
                break
            j += 1
        out.append(f'@@ -{m.group(1)},{old} +{m.group(3)},{new} @@{m.group(5)}')
        out.extend(lines[i + 1:j])
        i = j
    open(path, 'w').write('\n'.join(out))
