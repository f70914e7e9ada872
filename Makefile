# The README's two commands: `make demo` and `make test`. Each sets up a fresh machine
# by itself: a .venv with the pinned packages and the demo data (Fashion-MNIST from
# Debian's dataset-fashion-mnist, or FMNIST_DIR pointing at the four IDX files).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= dev
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
# The benchmark split lists (tests read them; mutmut runs the tests from a copy under mutants/)
LT_SHARED ?= ../shared
DEMO_SHARDS := shards/fashion_mnist_lt
DEMO_RUN := runs/demo
DEMO_FEATURES := features/demo
DEMO_RESULTS := results/demo
DEMO_MODEL := model/demo
DEMO_EPOCHS ?= 20
# Where DeepSpeed caches its JIT-compiled ops between runs.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: help setup demo-data browser nginx demo test test-all mutation bench bench-remote bench-fashion-lt bench-pipeline gpu-wheels clean

help:
	@echo "make demo   set up, then the whole pipeline on Fashion-MNIST-LT: pack, stage 1 with"
	@echo "            deepspeed (2 CPU processes), extract, stage-2 search with Ray, report"
	@echo "make test   set up and run the test suite (without the tests marked slow)"
	@echo "make test-all   the whole suite, slow multi-process tests included"
	@echo "make mutation   mutation testing of the pure maths modules (MUTANTS='lt_dist.losses*' for one)"
	@echo "make bench  run the benchmarks under bench/ (tables + bench/results/*.json)"
	@echo "make bench-fashion-lt   the seeds x samplers table of the README (about an hour)"
	@echo "make bench-pipeline   where stage 1's time goes: step, loop part by part, real run, extract (QUICK=1: short)"
	@echo "make gpu-wheels   what bench/gpu_check.py needs on a bare GPU machine, in gpu-wheels/"

setup: $(VENV)/.installed-$(EXTRAS)

# Re-installs when setup.cfg changes; torch/torchvision come from the machine's disk.
$(VENV)/.installed-$(EXTRAS): setup.cfg setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

demo-data:
	@if ls $(FMNIST_DIR)/train-images-idx3-ubyte* >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
		echo "Fashion-MNIST not found in $(FMNIST_DIR): run 'sudo apt-get install dataset-fashion-mnist'"; \
		echo "or set FMNIST_DIR to a folder with the four IDX files"; exit 1; \
	fi

demo: setup demo-data
	$(BIN)/lt_dist pack --idx $(FMNIST_DIR) --out $(DEMO_SHARDS) \
		--profile exp --imbalance 100 --max-per-class 1000 --val-per-class 20 --seed 0 \
		--class-names @shards/fashion-mnist.classes --workers 2
	$(BIN)/lt_dist verify $(DEMO_SHARDS)
	$(BIN)/lt_dist stats $(DEMO_SHARDS) --plot $(DEMO_SHARDS)/class_counts.png
	$(BIN)/lt_dist launch --num_gpus 2 launch/train_repr.py --ds_config launch/ds_demo.json \
		--data $(DEMO_SHARDS) --out $(DEMO_RUN) --arch resnet10 --small-input \
		--train-preset small_train --eval-preset small_eval --image-size 28 \
		--epochs $(DEMO_EPOCHS) --sampler instance --decoder dali --workers 1 --log-every 10 \
		$$(test -f $(DEMO_RUN)/checkpoints/latest && echo --resume)
	$(BIN)/lt_dist extract --ckpt $(DEMO_RUN) --data $(DEMO_SHARDS) --out $(DEMO_FEATURES) --workers 1
	$(BIN)/python tune/search_stage2.py --features $(DEMO_FEATURES) --out $(DEMO_RESULTS) --num-cpus 2 --methods all \
		$$(test -f $(DEMO_RESULTS)/search_plan.json && echo --resume)
	$(BIN)/lt_dist report $(DEMO_RESULTS)
	@# the README shows these two: written by every demo run, so they cannot drift from the code
	cp $(DEMO_RESULTS)/table.png $(DEMO_RESULTS)/tau_curve.png docs/figures/
	$(BIN)/lt_dist export --run $(DEMO_RUN) --results $(DEMO_RESULTS) --method crt --out $(DEMO_MODEL) --format onnx
	$(BIN)/lt_dist evaluate $(DEMO_MODEL) --data $(DEMO_SHARDS) --split test --workers 1
	@echo "open $(DEMO_RESULTS)/report.html in a browser; the cRT model is in $(DEMO_MODEL)/"

# Headless Chromium for the report test (Debian's package; needs root, as CI runs).
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's chromium for the report test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "chromium not found: the report test will be skipped (install Debian's chromium)"; fi

# Debian's nginx serves packed datasets over HTTP to the remote-storage tests (started by
# the tests themselves on 127.0.0.1; needs root to install, as CI runs).
nginx:
	@if command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's nginx for the remote-storage tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; \
	else echo "nginx not found: the HTTP storage tests will be skipped (install Debian's nginx)"; fi

# The default run keeps one test of each kind; the slowest (marked slow) run in test-all.
test: setup demo-data browser nginx
	FMNIST_DIR=$(FMNIST_DIR) $(BIN)/python -m pytest -q -m "not slow"

test-all: setup demo-data browser nginx
	FMNIST_DIR=$(FMNIST_DIR) $(BIN)/python -m pytest -q

# Mutation testing (mutmut, configured in setup.cfg): one process, one module at a time by
# default; scores go to docs/TESTING.md. Torch runs single-threaded: mutmut forks the test
# process per mutant, and a forked child of a process that used an OpenMP pool can hang.
MUTATION_MODULES ?= lt_dist.metrics* lt_dist.losses* lt_dist.data.balance* lt_dist.data.sampler* \
	lt_dist.stage2.select* lt_dist.stage2.heads* lt_dist.stage2.methods* lt_dist.shards.format*
MUTANTS ?= $(MUTATION_MODULES)
mutation: setup
	@set -f; for module in $(MUTANTS); do \
		echo "mutation testing $$module (mutmut, one process)"; \
		OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 LT_SHARED=$(abspath $(LT_SHARED)) \
			$(BIN)/mutmut run --max-children 1 "$$module" >/dev/null || exit 1; \
	done
	$(BIN)/python tests/mutation_scores.py $(foreach m,$(MUTANTS),'$(m)')

bench: EXTRAS = all
bench: setup demo-data
	FMNIST_DIR=$(FMNIST_DIR) $(BIN)/python bench/pack.py
	$(BIN)/python bench/loader.py
	$(BIN)/python bench/loader_scale.py
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/stage2.py

# The loader from local disk vs nginx on loopback (cold / warm cache, 20 ms per request).
bench-remote: EXTRAS = all
bench-remote: setup demo-data nginx
	$(BIN)/python bench/remote.py

# The demo pipeline (its 20 epochs) over 3 seeds and 5 stage-1 samplers/losses, then every
# stage-2 method with the balanced ceiling (i): about 1.7 hours on 2 cores at 200 images/s.
bench-fashion-lt: setup demo-data
	$(BIN)/python bench/fashion_lt.py --configs instance,class,sqrt,logit_adjusted,mixup \
		--balanced --ceilings balanced_equal
	$(BIN)/python bench/stage2_methods.py --representations instance,mixup

# Where stage 1's time goes (issue 13): the plain and DeepSpeed steps, the real loop one part at a
# time, the demo's stage 1 read from its log.jsonl, and extract against the forward pass, on the
# demo's shards (`make demo` packs them). 11.5 minutes with another job holding one of the 2
# cores (QUICK=1: 4.3 there, about 2.5 on quiet cores).
bench-pipeline: setup
	@test -f $(DEMO_SHARDS)/train/manifest.parquet || { echo "bench-pipeline reads the demo's shards: run make demo first"; exit 1; }
	$(BIN)/python bench/pipeline.py $(if $(QUICK),--quick)

# What a bare GPU machine (Python 3.12 with torch, numpy, tqdm; no network) lacks for
# bench/gpu_check.py, as Python 3.12 manylinux x86_64 wheels in gpu-wheels/ (ignored by
# git, carried to that machine): DeepSpeed, built here from its sdist without ops (a
# pure-Python wheel), its small needs at the versions tested here, and the two photos
# the check cuts its JPEGs from. Refused above 40 MiB. See docs/BENCHMARKS.md.
GPU_WHEELS := gpu-wheels
GPU_WHEEL_DEPS := einops==0.8.2 hjson==3.1.0 msgpack==1.2.4 ninja==1.13.2 psutil==7.2.2 py-cpuinfo==9.0.0 \
	pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-extensions==4.16.0 \
	typing-inspection==0.4.5 packaging==26.3 tqdm==4.70.1
GPU_PLATFORMS := $(foreach p,manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
	manylinux_2_12_x86_64 manylinux2010_x86_64,--platform $(p))

gpu-wheels: setup
	rm -rf $(GPU_WHEELS).tmp && mkdir -p $(GPU_WHEELS).tmp/photos
	DS_BUILD_OPS=0 $(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w $(GPU_WHEELS).tmp deepspeed==0.19.8
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--abi cp312 $(GPU_PLATFORMS) -d $(GPU_WHEELS).tmp $(GPU_WHEEL_DEPS)
	$(BIN)/python -c "import os, shutil, sklearn.datasets as d; \
		[shutil.copy(os.path.join(os.path.dirname(d.__file__), 'images', n), '$(GPU_WHEELS).tmp/photos') \
		 for n in ('china.jpg', 'flower.jpg')]"
	@kib=$$(du -sk $(GPU_WHEELS).tmp | cut -f1); if [ $$kib -gt 40960 ]; then \
		echo "gpu-wheels: $$kib KiB is over the 40 MiB a device call may carry"; exit 1; fi
	rm -rf $(GPU_WHEELS) && mv $(GPU_WHEELS).tmp $(GPU_WHEELS)
	@du -sh $(GPU_WHEELS); ls $(GPU_WHEELS)

clean:
	rm -rf $(VENV) .cache .pytest_cache test-artifacts mutants
