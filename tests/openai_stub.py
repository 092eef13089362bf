"""`experiments/openai_stub.py` (the OpenAI-compatible stub server) for the tests: experiments/
is not a package, so it is loaded from its file."""
import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("openai_stub", Path(__file__).parents[1] / "experiments" / "openai_stub.py")
_module = sys.modules.setdefault("openai_stub", importlib.util.module_from_spec(_spec))
if not hasattr(_module, "StubServer"):
    _spec.loader.exec_module(_module)
Reply, Request, StubServer = _module.Reply, _module.Request, _module.StubServer
