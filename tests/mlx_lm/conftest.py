"""Shared fixtures for the mlx-lm integration tests.

Every test module here first calls ``require_turbo_stack()``, which skips the
module (with the reason) unless both the patched MLX (with
``mx.fast.quantized_scaled_dot_product_attention``) and the patched mlx-lm
(``tools/build_mlx_lm.sh``) are importable.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# This folder's _stack, and the suite's helpers (tests/helpers.py) also when
# pytest runs from here, where tests/conftest.py is not loaded.
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
