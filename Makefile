# The README's two commands: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
OUT    ?= out

.PHONY: demo test test-slow bench venv clean

venv: $(STAMP)

# torch is installed first and pinned: anything that depends on a plain `torch` would otherwise
# pull a multi-GB CUDA build. It is only used to export the model to ONNX and for reference checks.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==2.13.0"
	@# The three ONNX Runtime distributions share one module: clear any other one first, so an
	@# old venv that had plain onnxruntime switches cleanly to the cpu extra's (OpenVINO on x86-64).
	$(PIP) uninstall -y -q onnxruntime onnxruntime-openvino onnxruntime-gpu >/dev/null 2>&1 || true
	$(PIP) install -q -e ".[cpu,export,dev,pg,s3]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/producer run examples/sample.jsonl --out $(OUT)

test: $(STAMP)
	$(PY) -m pytest -q --durations=15

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) benchmarks/bench_core.py

clean:
	rm -rf $(VENV) $(OUT)
