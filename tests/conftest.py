import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))


def pytest_report_header(config):
    import mlx.core as mx

    return f"mlx {mx.__version__} from {os.path.dirname(mx.__file__)}"


@pytest.fixture
def rng(request):
    """Fresh random inputs on every run; the seed is printed on failure."""
    seed = int(os.environ.get("TURBO_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
    request.node.user_properties.append(("seed", seed))
    print(f"seed={seed} (rerun with TURBO_TEST_SEED={seed})")
    return np.random.default_rng(seed)


# tests/cuda runs on the CUDA device machine with PyTorch (tests/cuda/run_device.sh),
# not under this pytest session.
collect_ignore = ["cuda"]
