"""Test set-up: 8 simulated CPU devices (set before JAX is imported) and tiny checkpoints.

Every checkpoint is built here with transformers' `save_pretrained` on random weights and
converted with the real converter: nothing reaches the network.
"""
import os
import shutil
import sys
import tempfile

# 8 simulated devices share 2 cores: a device's share of a sharded step can reach a collective
# more than XLA:CPU's default 40 s after the others, which then abort ("Termination timeout").
# The tests' programs are tiny: compiling them is most of the suite's time. Two flags halve it:
# LLVM's cheapest optimisation level and XLA:CPU's older elementwise emitters instead of its
# MLIR fusion emitters (the tiny train step compiles in 4.1 s instead of 8.7 s; docs/performance.md).
# Both change the machine code, not what it computes (no fast-math: no reassociation); the
# parity tests hold either way.
# tests/processes.py drops both for a process that runs more than it compiles.
COMPILE_FASTER = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
os.environ.setdefault("XLA_FLAGS", " ".join(("--xla_force_host_platform_device_count=8",
                                             "--xla_cpu_collective_call_terminate_timeout_seconds=900",
                                             "--xla_cpu_collective_timeout_seconds=900",
                                             "--xla_cpu_collective_call_warn_stuck_timeout_seconds=300",
                                             *COMPILE_FASTER)))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
from omni_jax import xla_cpu  # noqa: E402  (imports JAX, whose CPU backend has not started yet)

xla_cpu.configure()  # the parity tests run with the options users get on this CPU
# One compilation cache for the session, this process and the `omni-jax` processes tests start:
# a subprocess then loads the train step an earlier run compiled (a tiny train run: 54 s -> 24 s),
# and tests that build the same program from fresh closures share it. Fresh per session, so
# every program is compiled at least once in every run.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_XLA_CACHE = tempfile.mkdtemp(prefix="omni_jax_xla_cache_")
# every program, however quick to compile: a process the tests start compiles orbax's and the
# detector's many small programs in seconds each time otherwise (a tiny train run: 65 s → 35 s)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from omni_jax.conversion import convert_hf_to_orbax  # noqa: E402

RTOL = 5e-5  # max|Δ| / max|ref|, the project's parity bar in float32
HUNG_TEST_SECONDS = float(os.environ.get("HUNG_TEST_SECONDS", 600))  # the slowest test: ~300 s on 2 cores


# The files that take longest (docs/performance.md's table per file), longest first. `make test`
# hands whole files to its workers in collection order (--dist loadfile --no-loadscope-reorder),
# so these go first and the many short files fill in at the end: the workers end together.
# (xdist's own order, the files with the most tests first, left the demo's two tests, four
# minutes, for the end.)
LONGEST_FIRST = ("tests/train/test_train.py", "tests/test_demo.py", "tests/faces/test_job.py", "tests/eval/test_job.py",
                 "tests/test_accelerator_checks.py", "tests/models/test_qwen2.py", "tests/test_readme.py",
                 "tests/train/test_step.py", "tests/models/test_omni_emotion.py", "tests/faces/test_detector.py",
                 "tests/test_install.py", "tests/models/test_retinaface.py")


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.partition("::")[0], len(rank)))  # stable: in-file order kept


def pytest_sessionfinish(session, exitstatus):
    if "_SESSION_XLA_CACHE" in globals():
        shutil.rmtree(_SESSION_XLA_CACHE, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A test (with its fixtures' set-up) stuck past HUNG_TEST_SECONDS, e.g. in a collective
    some device never reaches (XLA:CPU would abort the whole run 900 s later, its trace cut to
    the log's last lines), ends the run with every thread's stack and, last, the test's name."""
    import faulthandler
    import threading

    def expire():
        item.config.pluginmanager.getplugin("capturemanager").suspend_global_capture()  # to the real stderr
        faulthandler.dump_traceback(all_threads=True)
        print(f"\nHUNG: {item.nodeid} ran past {HUNG_TEST_SECONDS} s; every thread's stack is above",
              file=sys.stderr, flush=True)
        os._exit(3)

    timer = threading.Timer(HUNG_TEST_SECONDS, expire)
    timer.daemon = True
    timer.start()
    yield
    timer.cancel()


def on_first_device(tree) -> int:
    """Elements of `tree`'s arrays held by the first device: below half the total = split."""
    return sum(s.data.size for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == jax.devices()[0])


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def tiny_qwen2_config(**overrides):
    from transformers import Qwen2Config

    kwargs = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000.0,
                  tie_word_embeddings=False)
    kwargs.update(overrides)
    return Qwen2Config(**kwargs)


def tiny_siglip_config(**overrides):
    from transformers import SiglipVisionConfig

    # 60 = 4 × 14 + 4: like 384 = 27 × 14 + 6, the edge that fills no patch is dropped.
    kwargs = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=60,
                  patch_size=14, vision_use_head=False)
    kwargs.update(overrides)
    return SiglipVisionConfig(**kwargs)


def tiny_llava_config(**overrides):
    from transformers import LlavaOnevisionConfig

    kwargs = dict(text_config=tiny_qwen2_config(), vision_config=tiny_siglip_config(image_size=75),
                  vision_feature_layer=-1, vision_feature_select_strategy="full", image_token_index=150,
                  video_token_index=151, tie_word_embeddings=False)
    kwargs.update(overrides)
    return LlavaOnevisionConfig(**kwargs)


def build_hf(model_cls, config, path, seed=0, **save_kwargs):
    """A random-weight transformers model saved at `path` (float32, eval mode)."""
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # make biases and norms non-trivial so a dropped tensor shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "newline" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path, **save_kwargs)
    return model


def convert(src, dst, **kwargs):
    return convert_hf_to_orbax(src, dst, **kwargs)


def _converted(tmp_path_factory, name, model_cls, config):
    root = tmp_path_factory.mktemp(name)
    hf = build_hf(model_cls, config, root / "hf")
    convert(root / "hf", root / "ox")
    return hf, root


@pytest.fixture(scope="session")
def qwen2_untied(tmp_path_factory):
    from transformers import Qwen2ForCausalLM

    return _converted(tmp_path_factory, "qwen2_untied", Qwen2ForCausalLM, tiny_qwen2_config())


@pytest.fixture(scope="session")
def qwen2_tied(tmp_path_factory):
    """Tied head and a single KV head (multi-query attention)."""
    from transformers import Qwen2ForCausalLM

    return _converted(tmp_path_factory, "qwen2_tied", Qwen2ForCausalLM,
                      tiny_qwen2_config(tie_word_embeddings=True, num_key_value_heads=1))


@pytest.fixture(scope="session")
def llava(tmp_path_factory):
    from transformers import LlavaOnevisionForConditionalGeneration

    return _converted(tmp_path_factory, "llava", LlavaOnevisionForConditionalGeneration, tiny_llava_config())


def random_checkpoint(path, model_type: str, config, seed: int = 0, tokenizer=None):
    """A checkpoint of random parameters (`synth.parts.random_params`: no init compile) at `path`,
    with `tokenizer`'s files (a run takes its tokenizer from the checkpoint it starts from)."""
    from omni_jax.checkpoint_dir import save_params
    from omni_jax.synth.parts import random_params

    save_params(path, model_type, config, random_params(model_type, config, seed))
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path
