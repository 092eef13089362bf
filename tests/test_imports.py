"""Importing omni_jax needs no torch (only the `convert` and `test` extras bring it): every module
of the package, the CLI and the PyTorch references included, imports where torch cannot."""
import subprocess
import sys

# In a fresh process, a path finder blind to torch: `import torch` fails and `find_spec("torch")`
# is None, as where torch is not installed (transformers, which the tokenizers import, then says
# it found no PyTorch and goes on; `sys.modules["torch"] = None` would break scipy, which looks
# there for torch's Tensor).
# (Also tests/test_install.py's, and a sitecustomize.py for processes those start.)
WITHOUT_TORCH = """
import importlib, importlib.machinery, importlib.util, sys

class WithoutTorch(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.partition(".")[0] == "torch" else super().find_spec(name, path, target)

sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = WithoutTorch
assert importlib.util.find_spec("torch") is None
"""
IMPORT_ALL = WITHOUT_TORCH + """
import pkgutil
import omni_jax
for module in pkgutil.walk_packages(omni_jax.__path__, "omni_jax."):
    importlib.import_module(module.name)
    print(module.name)
"""


def test_every_module_imports_without_torch():
    result = subprocess.run([sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    imported = result.stdout.split()
    assert {"omni_jax.cli", "omni_jax.testing.reference.facexformer", "omni_jax.models.qwen2"} <= set(imported), imported
