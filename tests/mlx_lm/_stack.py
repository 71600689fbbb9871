"""Skip helpers and a tiny random-weight Llama for the mlx-lm tests."""

import json

import pytest


def require_turbo_stack():
    mx = pytest.importorskip("mlx.core", reason="mlx is not installed")
    if not hasattr(mx.fast, "quantized_scaled_dot_product_attention"):
        pytest.skip(
            "the installed mlx is not the TurboQuant build "
            "(no mx.fast.quantized_scaled_dot_product_attention); run build.sh",
            allow_module_level=True,
        )
    cache = pytest.importorskip(
        "mlx_lm.models.cache", reason="mlx_lm is not installed"
    )
    if not hasattr(cache, "TurboQuantKVCache"):
        pytest.skip(
            "the installed mlx_lm is not the TurboQuant-patched build "
            "(run tools/build_mlx_lm.sh)",
            allow_module_level=True,
        )
    return mx


TINY_CONFIG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "intermediate_size": 256,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "rms_norm_eps": 1e-5,
    "vocab_size": 96,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "max_position_embeddings": 4096,
}

# Token prompts of different lengths for the tiny model (a batch of them is
# left-padded to the longest).
TINY_PROMPTS = [
    [(7 * i + 3 * j) % 90 + 3 for j in range(n)] for i, n in enumerate([5, 23, 41, 12])
]


def tiny_llama(seed=0, dtype=None, **overrides):
    import mlx.core as mx
    from mlx_lm.models import llama

    cfg = dict(TINY_CONFIG, **overrides)
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(cfg))
    # Larger-than-init weights so that the random model's greedy output
    # varies from token to token.
    from mlx.utils import tree_map

    model.update(tree_map(lambda p: p * 4.0 if p.ndim == 2 else p, model.parameters()))
    if dtype is not None:
        model.set_dtype(dtype)
    mx.eval(model.parameters())
    return model, cfg


def write_tiny_model_dir(path, seed=0, dtype="float16", chat_template=None, **overrides):
    """A loadable HF-style folder: config, safetensors and a word-level tokenizer."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model, cfg = tiny_llama(seed=seed, dtype=getattr(mx, dtype), **overrides)
    path.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(path / "model.safetensors"), weights,
                        metadata={"format": "mlx"})
    (path / "config.json").write_text(json.dumps(dict(cfg, torch_dtype=dtype)))

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(cfg["vocab_size"] - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(str(path))
    return path
