# Two commands on a fresh machine: `make demo` and `make test`. Everything installs from this repo's files.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test bench install clean-venv zoo-cards sensitivity routing-study main-result ablations regime-map replacement-study \
	per-layer-account

# The core package only: what `make demo` runs (no pytest, Ray or lm-eval).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

# What the tests and the zero-shot results add: pytest, hypothesis, Ray (the ray backend), lm-eval (eval.tasks).
$(VENV)/.test-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,eval]'
	touch $@

install: $(VENV)/.installed

# The first look (romer/experiment/configs/default.yaml); the full-size job is `romer run full`.
demo: $(VENV)/.installed
	$(VENV)/bin/romer run

# aihwkit (the .bench-installed target) so that tests/test_noise_aihwkit.py's reference checks run, not skip.
test: $(VENV)/.bench-installed chromium
	$(PY) -m pytest -q

# The prepared GPU check (docs/gpu.md): every stage on the first CUDA device, JSON after each stage, docs/gpu.md's
# table. Without a venv (the GPU image: its own torch and transformers) it runs python3 on this tree.
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_JSON ?= results/gpu-check.json
.PHONY: gpu-check
gpu-check:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PY) benchmarks/gpu_check.py --json $(GPU_JSON) --update-docs

# Headless Chromium for tests/test_report_browser.py: apt-get installs it where it is missing and we are root;
# anywhere else nothing happens and that test skips, saying why.
.PHONY: chromium
chromium:
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -q && apt-get install -y -q chromium || echo "chromium not installed: the browser test skips"; fi

# aihwkit 1.1.0 is the last release with a Python 3.11 wheel; --no-deps keeps its torchvision pin from pulling a
# CUDA torch. It is needed by the benchmarks and the reference tests only, never at run time.
$(VENV)/.bench-installed: $(VENV)/.test-installed
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps aihwkit==1.1.0
	$(PY) -m pip install --quiet --disable-pip-version-check scipy scikit-learn protobuf tqdm requests
	touch $@

# benchmarks/README.md's forward-throughput and program-speed tables (workers.py prints its result only).
bench: $(VENV)/.bench-installed
	$(PY) benchmarks/forward_throughput.py --update-readme
	$(PY) benchmarks/program_speed.py --update-readme
	$(PY) benchmarks/workers.py

clean-venv:
	rm -rf $(VENV)

ZOO := olmoe-tiny qwenmoe-tiny deepseekmoe-tiny
# The deep reference model: its own runs (regime-deep, results/accuracy-deep), since it costs about twice as much.
DEEP := olmoe-deep
# The width-matched depth control (olmoe-deep's width at olmoe-tiny's depth): its own run, regime-depth.
CONTROL := olmoe-narrow

# Re-measure the zoo models' cards (test PPL, unigram baseline, expert usage) and regenerate docs/zoo.md's table.
zoo-cards: $(VENV)/.installed
	for m in $(ZOO) $(DEEP) $(CONTROL); do $(VENV)/bin/romer zoo card $$m || exit 1; done
	$(PY) scripts/update_readme.py zoo

# Noise sensitivity of the zoo models (validation split) and docs/chips.md's table.
sensitivity: $(VENV)/.installed
	mkdir -p results/sensitivity
	for m in $(ZOO); do $(VENV)/bin/romer noise sensitivity --model $$m --json results/sensitivity/$$m.json || exit 1; done
	$(PY) scripts/update_readme.py sensitivity

# Routing under the default chip for each zoo model and placement (validation split), and docs/routing.md's tables.
routing-study: $(VENV)/.installed
	mkdir -p results/routing
	for m in $(ZOO); do for p in moe experts all; do \
	  $(VENV)/bin/romer stats --model $$m --preset default --placement $$p --chips 3 --split validation --max-tokens 16384 \
	    --json results/routing/$$m-$$p.json || exit 1; done; done
	$(PY) scripts/update_readme.py routing

# docs/results.md's "Main result" and README's key result; each config resumes from its results store if interrupted.
main-result: $(VENV)/.test-installed
	$(VENV)/bin/romer run accuracy --out results/accuracy
	$(VENV)/bin/romer run accuracy --set "models=[olmoe-deep]" --out results/accuracy-deep
	$(VENV)/bin/romer run main --out results/main
	$(PY) scripts/update_readme.py main-result key-result

# docs/regime-map.md's "Which replacement" (replica vs split, alone and in ROMER) and "Depth or width" (olmoe-tiny,
# olmoe-narrow, olmoe-deep); each resumes from its results store if interrupted.
replacement-study: $(VENV)/.installed
	$(VENV)/bin/romer run regime-replacement --out results/regime-replacement
	$(VENV)/bin/romer run regime-depth --out results/regime-depth
	$(PY) scripts/update_readme.py replacement depth

# docs/results.md's "Ablations" tables (ablations, router-digital, per-layer, per-layer-0, noise-free).
ablations: $(VENV)/.installed
	for config in ablations router-digital per-layer noise-free; do \
		$(VENV)/bin/romer run $$config --out results/$$config || exit 1; done
	$(VENV)/bin/romer run per-layer --set "models=[olmoe-tiny, qwenmoe-tiny]" --set "methods=[clean, noisy, {name: P1 layer 0 only, kind: recalibrate, recalibrate: {layers: [0]}}]" --out results/per-layer-0
	$(PY) scripts/update_readme.py ablations

# docs/regime-map.md ("When ROMER helps"): the regime configs (each resumes from its store), then the map, its
# plots, the page's tables and README's key-result headline.
REGIME := regime regime-deep regime-time regime-channel regime-tensor regime-repairs
regime-map: $(VENV)/.installed
	for config in $(REGIME); do $(VENV)/bin/romer run $$config --out results/$$config || exit 1; done
	$(PY) scripts/regime_map.py --update-readme

# results/router-noise/per-layer.{json,png}, quoted by docs/regime-map.md (item 8) and docs/router-noise.md (finding 7):
# per-layer routing damage, share and P1 gain.
per-layer-account: $(VENV)/.installed
	$(PY) scripts/per_layer_account.py --models $(ZOO) $(DEEP)
