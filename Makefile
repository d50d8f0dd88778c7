# Every target installs what it needs first, so each works on a fresh machine.
PYTHON ?= python
TORCH  ?= torch==2.14.1 torchvision==0.29.1
OUT    ?= runs/demo

.PHONY: install test demo

install:
	$(PYTHON) -m pip install -q $(TORCH)
	$(PYTHON) -m pip install -q -e ".[dev]"
	@# Fashion-MNIST (MIT) for the real-data tests and benchmarks; optional, needs root + apt.
	-@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 || true; fi

# The test suite (what CI runs). pytest exits 5 when it selects no test; that is not a failure here.
test: install
	$(PYTHON) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests selected"; exit 0; fi; exit $$rc

# The whole pipeline on the bundled digits set: teacher -> search (50% FLOPs) -> distil -> ONNX.
demo: install
	$(PYTHON) -m tas.pipeline --output $(OUT)
