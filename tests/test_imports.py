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
    assert {"omni_jax.cli", "omni_jax.testing.reference.facexformer", "omni_jax.models.qwen2"} <= set(imported), (
        imported
    )


def package_imports() -> dict[str, set[str]]:
    """The package's imports, static ones and those inside functions alike, between its parts:
    each subpackage or top-level module of omni_jax (the configs are omni_jax.configs) → the parts
    it imports."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = {path: ("omni_jax", *path.relative_to(root / "omni_jax").with_suffix("").parts)
             for path in (root / "omni_jax").rglob("*.py")}
    files.update({path: ("omni_jax", "configs", path.stem) for path in (root / "configs").glob("*.py")})
    edges: dict[str, set[str]] = {}
    for path, parts in files.items():
        package = parts[:-1] if parts[-1] == "__init__" else parts[:-1]
        part = parts[1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = list(package[:len(package) - node.level + 1]) if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                names = [module] + [f"{module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                target = name.split(".")
                if target[0] == "tests" or (target[0] == "omni_jax" and len(target) > 1 and target[1] != part):
                    edges.setdefault(part, set()).add(target[1] if target[0] == "omni_jax" else "tests")
    return edges


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected groups of more than one part (Tarjan)."""
    index, low, stack, found, counter = {}, {}, [], [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        for other in edges.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = set()
            while not group or node not in group:
                group.add(stack.pop())
            if len(group) > 1:
                found.append(group)

    for node in list(edges):
        if node not in index:
            visit(node)
    return found


def test_the_packages_imports_point_one_way():
    """No cycle between the package's parts; the jobs never import omni_jax.testing (the tests'
    and benchmarks' references, scenes and stub server), and nothing imports tests/."""
    edges = package_imports()
    assert {"registry", "conversion", "checkpoint_dir", "configs"} <= set(edges)
    assert "conversion" not in edges["registry"] and "registry" in edges["conversion"]
    assert cycles(edges) == []
    assert [part for part, targets in edges.items() if "testing" in targets and part != "testing"] == []
    assert [part for part, targets in edges.items() if "tests" in targets] == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]  # it finds one
