# The README's two commands are `make demo` and `make test`; both set up .venv/ first.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: setup
	$(PY) experiments/demo.py

# Two processes: the sharded and multi-process tests compile dozens of 8-device programs; run
# after the rest in one long process, XLA:CPU aborted twice in them (issue 5's note).
SHARDED_TESTS := tests/test_sharding.py tests/test_distributed.py tests/train

test: setup
	$(PY) -m pytest -q tests $(addprefix --ignore=,$(SHARDED_TESTS))
	$(PY) -m pytest -q $(SHARDED_TESTS)

bench: setup
	$(PY) experiments/bench_qwen2.py
	$(PY) experiments/bench_convert_memory.py
	$(PY) experiments/bench_face_encoder.py
	$(PY) experiments/bench_audio.py --large
	$(PY) experiments/bench_data.py

clean:
	rm -rf $(VENV) build *.egg-info
