"""Tensor-parallel generation with TurboQuant caches over MLX's ring backend.

Two real processes on 127.0.0.1, started by ``mlx.launch --backend ring``,
load a tiny Llama with mlx-lm's ``sharded_load`` (each rank: half of the
query and KV heads) and generate greedily with a turbo cache; the tokens
must equal those of one process with the same cache type, before and after
a per-rank prompt-cache save/load round trip.
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


@pytest.mark.parametrize("kv", ["turbo4", "turbo3", "turbo4-turbo3"])
def test_ring_tensor_parallel_equals_one_process(model_dir, tmp_path, kv):
    # The ring backend reduces on the CPU: both runs use the CPU device.
    args = [str(model_dir), "--kv-cache-type", kv, "--max-tokens", "16", "--cpu"]
    one = run_json([sys.executable, SCRIPT, *args, "--cache-file", str(tmp_path / "one")])
    port = free_port_block(2)
    two = run_json([launcher(), "--backend", "ring", "-n", "2", "--starting-port", str(port),
                    "--", sys.executable, SCRIPT, *args, "--cache-file", str(tmp_path / "two")])
    assert one["size"] == 1 and two["size"] == 2
    assert one["modes"] == two["modes"] == list(kv.split("-") * 2)[:2]
    # Each rank holds half of the KV heads, and half of the cache bytes.
    ranks = [json.loads((tmp_path / f"{name}.rank{r}.json").read_text())
             for name, r in [("one", 0), ("two", 0), ("two", 1)]]
    assert all(h == 2 for h in ranks[0]["kv_heads"])
    assert all(h == 1 for r in ranks[1:] for h in r["kv_heads"])
    assert 2 * ranks[1]["cache_bytes"] == 2 * ranks[2]["cache_bytes"] == ranks[0]["cache_bytes"]
    assert two["tokens"] == one["tokens"]
    assert two["continued"] == one["continued"]
    assert len(set(one["tokens"])) > 3, "the random model repeats one token"
