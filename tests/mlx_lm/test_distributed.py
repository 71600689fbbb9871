"""Tensor-parallel generation with TurboQuant caches over MLX's ring backend.

Two real processes on 127.0.0.1, started by ``mlx.launch --backend ring``,
load a tiny Llama with mlx-lm's ``sharded_load`` (each rank: half of the
query and KV heads) and generate with a turbo cache along the tokens one
process generated greedily with the same cache type; both runs'
log-probabilities must agree within rounding, before and after a per-rank
prompt-cache save/load round trip.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from _stack import require_turbo_stack, write_tiny_model_dir

require_turbo_stack()

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dist_generate.py")


def free_port_block(n):
    """A port P with P..P+n-1 free now (the ring backend listens on P + rank)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + n > 65535:
            continue
        try:
            socks = []
            for i in range(n):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", p + i))
            return p
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    pytest.skip("no free block of ports on 127.0.0.1")


def run_json(cmd, timeout=240):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    assert len(lines) == 1, r.stdout + r.stderr
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model_dir(tmp_path_factory.mktemp("tp") / "model", seed=3, dtype="float32")


def launcher():
    exe = shutil.which("mlx.launch", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("mlx.launch is not installed next to this python")
    return exe


# How far rounding may move a log-probability between the two runs. The
# sharded run sums the row-split projections across ranks (and its BLAS
# blocks the half-width matmuls its own way), so the residual stream differs
# from one process's in the last bits; a turbo code whose input lies that
# close to a decision boundary flips, and the tiny model (weights x4) carries
# a flip on. benchmarks/rounding_sensitivity.py measured on this model that
# 1e-6 relative noise on the weights, about ten times this rounding, moves a
# turbo3 token's log-probability by up to 0.155 nats (turbo4 0.005, a plain
# cache 1e-4); twice that is the bound. A sharding error (heads or caches of
# the wrong rank) moves them by nats.
ROUNDING_NATS = 0.31


def check_same_path(one, two, key):
    """TWO, forced along ONE's tokens, gives the same log-probabilities within
    ROUNDING_NATS, and picks ONE's token wherever ONE's margin over the
    runner-up exceeds twice that."""
    tokens, a, b = one[key[0]], one[key[1]], two[key[1]]
    assert two[key[0]] == tokens and len(a) == len(b) == len(tokens)
    worst = max(abs(x - y) for u, v in zip(a, b) for x, y in zip(u, v))
    assert worst <= ROUNDING_NATS, f"{key[1]}: max |dlogp| {worst:.4f} nats"
    for i, (t, u, v) in enumerate(zip(tokens, a, b)):
        first, second = sorted(u, reverse=True)[:2]
        if first - second > 2 * ROUNDING_NATS:
            assert max(range(len(v)), key=v.__getitem__) == t, f"{key[0]}[{i}]"


@pytest.mark.parametrize("kv", ["turbo4", "turbo3", "turbo4-turbo3"])
def test_ring_tensor_parallel_equals_one_process(model_dir, tmp_path, kv):
    # The ring backend reduces on the CPU: both runs use the CPU device. The
    # sharded run is forced along the tokens one process generated, and the
    # two runs' log-probabilities are compared along that path.
    args = [str(model_dir), "--kv-cache-type", kv, "--max-tokens", "16", "--cpu"]
    one = run_json([sys.executable, SCRIPT, *args, "--cache-file", str(tmp_path / "one")])
    force = ["--force", json.dumps(one["tokens"]),
             "--force-continued", json.dumps(one["continued"])]
    port = free_port_block(2)
    two = run_json([launcher(), "--backend", "ring", "-n", "2", "--starting-port", str(port),
                    "--", sys.executable, SCRIPT, *args, *force,
                    "--cache-file", str(tmp_path / "two")])
    assert one["size"] == 1 and two["size"] == 2
    assert one["modes"] == two["modes"] == list(kv.split("-") * 2)[:2]
    # Each rank holds half of the KV heads, and half of the cache bytes.
    ranks = [json.loads((tmp_path / f"{name}.rank{r}.json").read_text())
             for name, r in [("one", 0), ("two", 0), ("two", 1)]]
    assert all(h == 2 for h in ranks[0]["kv_heads"])
    assert all(h == 1 for r in ranks[1:] for h in r["kv_heads"])
    assert 2 * ranks[1]["cache_bytes"] == 2 * ranks[2]["cache_bytes"] == ranks[0]["cache_bytes"]
    check_same_path(one, two, ("tokens", "logprobs"))
    check_same_path(one, two, ("continued", "continued_logprobs"))
    assert len(set(one["tokens"])) > 3, "the random model repeats one token"
