#!/usr/bin/env python3
"""Regenerates tests/golden/turbo_golden.json from the spec reference.

Inputs are fixed (seeded) float32 vectors, kept only when every coordinate is
at least 1e-3 (sqrt(D) units) from a decision boundary, so that any correct
float32 encoder, whatever its operation order, produces the same words.
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import reference as ref  # noqa: E402

rng = np.random.default_rng(20261123)
cases = []
for mode in ("turbo3", "turbo4"):
    for dim in ref.SUPPORTED_DIMS:
        rows = []
        while len(rows) < 3:
            x = (rng.standard_normal(dim) * rng.uniform(0.5, 4.0)).astype(np.float32)
            if ref.encode(x[None], mode)[3].min() > 1e-3:
                rows.append(x)
        x = np.stack(rows)
        _, packed, scales, _ = ref.encode(x, mode)
        cases.append(
            {
                "mode": mode,
                "shape": list(x.shape),
                "x": [float(v) for v in x.ravel()],
                "packed": [int(v) for v in packed.ravel()],
                "scales": [float(np.float32(v)) for v in scales.ravel()],
            }
        )
out = os.path.join(os.path.dirname(__file__), "..", "tests", "golden", "turbo_golden.json")
with open(out, "w") as f:
    json.dump({"spec": "docs/format.md", "cases": cases}, f, indent=1)
print(f"wrote {len(cases)} cases to {out}")
