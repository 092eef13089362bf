"""Full-size configs are checked without materialising them (jax.eval_shape)."""
import jax
import numpy as np
import pytest

from omni_jax import registry
from omni_jax.configs import facexformer, llava_onevision, omni_emotion, qwen2, siglip, swin, whisper
from omni_jax.conversion.engine import abstract_params
from omni_jax.modality_tokens import placeholder_counts, video_tokens


def _cross_attention_7b():
    cfg = omni_emotion.get_config("7b").model
    cfg.fusion = "frame_cross_attention"
    return cfg


def _count(family, config):
    return sum(int(np.prod(s.shape)) for s in abstract_params(registry.FAMILIES[family], config).values())


@pytest.mark.parametrize(
    "family,config,expected",
    [
        ("qwen2", qwen2.get_config("7b"), 7_615_616_512),  # Qwen2-7B
        ("qwen2", qwen2.get_config("0.5b"), 494_032_768),  # Qwen2-0.5B
        # 26 layers × 15,239,504 + patch conv 678,528 + 729 positions × 1152 + post-LN 2,304
        ("siglip_vision_model", siglip.get_config("so400m"), 397_747_744),
        ("llava_onevision", llava_onevision.get_config("7b"), 8_030_000_000),
        # = transformers WhisperEncoder at large-v3 size (incl. the 1500×1280 position table)
        ("whisper", whisper.get_config("large-v3"), 636_968_960),
        # torchvision swin_b's published 87,768,224 minus its 1000-class head (1,025,000)
        ("swin", swin.get_config("base"), 86_743_224),
        # + fusion (4 Linear to 256: 492,544; 1×1 conv 1024 → 256: 262,144) + projector 256 → 3584 → 3584
        ("facexformer", facexformer.get_config("base"), 86_743_224 + 754_688 + 13_769_728),
        # LLaVA-OV-7B exactly (Qwen2-7B 7,615,616,512 + so400m 397,747,744 + projector 1152·3584 + 3584 + 3584² + 3584
        # = 16,980,992 + newline 3,584 = 8,030,348,832) + Whisper-large-v3 encoder 636,968,960 + audio projector
        # (1280·3584 + 3584 + 3584² + 3584 = 17,439,744) + face encoder 101,267,640 + frame embeddings 8 × 3584
        (
            "omni_emotion",
            omni_emotion.get_config("7b").model,
            8_030_348_832 + 636_968_960 + 17_439_744 + 101_267_640 + 28_672,
        ),
        # the default (8,786,053,848) + the cross-attention block: q, k, v, o (3584² + 3584 each) and two
        # LayerNorms (2 × 2 × 3584)
        ("omni_emotion", _cross_attention_7b(), 8_786_053_848 + 4 * (3584**2 + 3584) + 4 * 3584),
    ],
)
def test_full_size_parameter_counts(family, config, expected):
    n = _count(family, config)
    if family == "llava_onevision":
        assert abs(n - expected) / expected < 0.01  # "8.03B" as published
    else:
        assert n == expected


def test_llava_7b_video_token_count():
    cfg = llava_onevision.get_config("7b")
    assert video_tokens(cfg, 1) == 14 * 14 + 1  # 27×27 patches pooled to 14×14, plus the newline
    assert video_tokens(cfg, 8) == 8 * 196 + 1


def test_omni_emotion_7b_placeholder_counts():
    # 8 frames × (196 visual + 196 face tokens) + the newline; one 30-s window of 1500 / 3 audio tokens
    assert placeholder_counts(omni_emotion.get_config("7b").model) == {"video": 8 * (196 + 196) + 1, "audio": 500}


def test_the_mesh_comes_from_the_config():
    import jax

    from omni_jax.sharding import make_mesh

    cfg = omni_emotion.get_config("tiny")
    assert dict(make_mesh(**cfg.mesh).shape) == {"data": 1, "fsdp": jax.device_count(), "tensor": 1}
    cfg.mesh.update(data=2, fsdp=2, tensor=2)
    assert dict(make_mesh(**cfg.mesh).shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_every_parameter_has_logical_axes():
    model = registry.build(registry.FAMILIES["llava_onevision"], llava_onevision.get_config("tiny"))
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), **registry.FAMILIES["llava_onevision"]
                                              .dummy_inputs(llava_onevision.get_config("tiny"))))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: hasattr(x, "names"))
    assert leaves and all(hasattr(x, "names") and len(x.names) == len(x.value.shape) for x in leaves)
