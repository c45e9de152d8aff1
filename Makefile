# make demo: the whole pipeline on the embedded demo data, offline.
# make test: the whole test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# A local ImageNet weights file (air-gapped path). Default: the team's copy beside the project when
# present; otherwise Keras' cache or download, and failing both, random weights with a loud warning.
WEIGHTS ?= $(wildcard ../shared/weights/mobilenet_v2_1.0_imagenet_no_top.weights.h5)
RUN_DIR ?= runs/demo

.PHONY: demo test install clean browser emulator web arm64-check mutation

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[train,app,ray,test]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP) web

# The device page's in-browser runtimes (onnxruntime-web, LiteRT.js) from the npm registry, into the
# package, once: nothing is fetched at run time.
web:
	@$(PYTHON) scripts/fetch_web_assets.py || echo "web assets not fetched (npm missing or unreachable): the /device page and its tests are unavailable"

demo: $(STAMP) web
	$(BIN)/mstl-train full --preset demo --run-dir $(RUN_DIR) $(if $(WEIGHTS),--weights $(WEIGHTS),)
	$(BIN)/mstl-export $(RUN_DIR) --int8 --portable-int8
	$(BIN)/mstl-bench $(RUN_DIR)/exports --json $(RUN_DIR)/bench.json --markdown $(RUN_DIR)/bench.md --save-dir $(RUN_DIR)/bench
	@echo "report: $(RUN_DIR)/report.md   exports: $(RUN_DIR)/exports   bench: $(RUN_DIR)/bench.md"

# The browser tests drive Debian's chromium; it is installed here, once, never by a test.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      echo "installing Debian's chromium for the browser tests (once)"; \
	      DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null || \
	      echo "chromium could not be installed: the browser tests will be skipped"; \
	    else echo "no chromium and no root apt-get: the browser tests will be skipped"; fi; }

# The int8 artifacts' answers on another x86 CPU kind (AVX2 without VNNI) come from Debian's QEMU
# user-mode emulator; installed here, once, never by a test.
emulator:
	@command -v qemu-x86_64-static >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      echo "installing Debian's qemu-user-static for the emulated-CPU test (once)"; \
	      DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends qemu-user-static >/dev/null || \
	      echo "qemu-user-static could not be installed: the emulated-CPU test will be skipped"; \
	    else echo "no qemu-x86_64-static and no root apt-get: the emulated-CPU test will be skipped"; fi; }

# The import rules first (.importlinter: what a board runs never imports TensorFlow, no circles, ...),
# then the suite, with its slowest tests listed. Two workers, one test file each at a time (module
# fixtures stay whole): the suite keeps about 1.4 of the 2 cores busy (measured on a 2-core Xeon:
# 756 s in one process, 520 s in two; the CI machine ran it 2.4x slower than that).
test: $(STAMP) web browser emulator
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -ra -n 2 --dist loadfile --durations=15

# The Raspberry Pi path on this x86 machine: a Debian 12 arm64 root (cached), the wheel installed
# there as a Pi user installs it, mstl-bench run there on the demo's exports and their bundle (root;
# skipped with the reason elsewhere). Not part of make test: the emulated inference takes minutes.
arm64-check: $(STAMP)
	$(BIN)/python benchmarks/arm64_check.py $(RUN_DIR)/exports

# Mutation scores of the modules whose mistakes would go unseen (benchmarks/mutation_score.py): minutes
# per module, one module at a time. Not part of make test. MUTATE=src/mstl/x.py picks others.
MUTATE ?= src/mstl/edge/core/agreement.py src/mstl/edge/core/metrics.py src/mstl/edge/core/formats.py src/mstl/report/claims.py \
	src/mstl/sweep.py src/mstl/train/schedule.py src/mstl/edge/core/rundir.py
mutation: $(STAMP)
	PYTHONPATH=src $(BIN)/python benchmarks/mutation_score.py $(MUTATE)

clean:
	rm -rf $(VENV) runs test-artifacts build/mutation
