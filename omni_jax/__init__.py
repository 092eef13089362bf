"""omni_jax: Omni-Emotion (video, face and audio emotion MLLM) in JAX/Flax."""
from omni_jax.pretrained import load_pretrained

__version__ = "0.1.0"
__all__ = ["load_pretrained"]
