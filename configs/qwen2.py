"""Qwen2 decoder configs: `get_config("7b" | "0.5b" | "tiny")`, one schema for every size."""
import ml_collections

VARIANTS = {
    # Qwen2-7B (vocab from its config.json; a checkpoint's own config is authoritative).
    "7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
               num_kv_heads=4, head_dim=128, rope_theta=1e6, tie_word_embeddings=False),
    "0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
                 num_kv_heads=2, head_dim=64, rope_theta=1e6, tie_word_embeddings=True),
    "tiny": dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_layers=3, num_heads=4, num_kv_heads=2,
                 head_dim=16, rope_theta=1e4, tie_word_embeddings=False),
}


def get_config(variant: str = "7b") -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        **VARIANTS[variant],
        rms_norm_eps=1e-6,
        hidden_act="silu",
        dtype="bfloat16",
        param_dtype="float32",
        remat_policy="full",
        scan_layers=True,
    ))
