"""The parameter tree a config makes, traced once per set of fields that shape it."""
from omni_jax import registry
from omni_jax.configs import omni_emotion
from omni_jax.pretrained import override_fields, with_attention


def test_how_attention_runs_does_not_trace_the_tree_again_and_a_shape_field_does():
    """A training run asks with its training config (right padding, an attention kernel) and its
    checkpoint's (another kernel, or none; no padding field): one trace for all."""
    family, config = registry.FAMILIES["omni_emotion"], omni_emotion.get_config("tiny").model.to_dict()
    training = with_attention({**config, "text": {**config["text"], "attention_padding": "right"}}, "auto")
    registry._abstract_params.cache_clear()
    tree = registry.abstract_params(family, training)
    for stored in (config, with_attention(config, "splash"), override_fields(training, attention_padding="any")):
        assert registry.abstract_params(family, stored) == tree  # splash: a TPU's kernel, never traced here
    assert registry._abstract_params.cache_info().misses == 1
    wider = {**training, "text": {**training["text"], "intermediate_size": 2 * config["text"]["intermediate_size"]}}
    shapes = registry.abstract_params(family, wider)
    assert registry._abstract_params.cache_info().misses == 2
    gate = shapes["language_model"]["model"]["layers"]["mlp"]["gate_proj"]["kernel"]
    assert gate.shape[-1] == 2 * config["text"]["intermediate_size"]
