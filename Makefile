# The two commands a new user needs: `make demo` and `make test`. Both install first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
export REDIS_URL ?= localhost:6379
export PYTHONHASHSEED := 0
# Test processes (pytest-xdist; TEST_WORKERS=0 runs the suite in one process). `--dist loadfile`
# keeps a module's tests in one process, so a module's world is built once; the modules that use the
# session's trained world run together in one process (tests/conftest.py, TRAINED_WORLD_MODULES).
TEST_WORKERS ?= 2

.PHONY: install browser demo movielens test test-fast serve bench bench-movielens lock clean doctor feast-ui

$(INSTALLED): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	@java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])' || { echo "Java 17+ is required for Spark: install openjdk-17-jre-headless or set JAVA_HOME"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	@# Bytecode for python -O, which the data-moving feast commands run under (feast_ext/repo.py);
	@# compiled here because environments with PYTHONDONTWRITEBYTECODE never cache it. Files some
	@# packages ship for other Python versions fail to compile; that is expected.
	$(PY) -O -m compileall -q -j 0 $(VENV)/lib/python3.11/site-packages > /dev/null 2>&1 || true
	@$(MAKE) --no-print-directory browser
	touch $@

install: $(INSTALLED)

# Debian's Chromium for the explorer's browser tests (driven by Playwright, no browser download).
# Installed when missing and possible (root with apt-get); otherwise those tests skip and say why.
browser:
	@if command -v chromium >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium (apt-get) for the browser tests"; \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)) >/dev/null 2>&1 \
	    || echo "chromium could not be installed: the browser tests will skip"; \
	else echo "chromium not found (needs root and apt-get to install): the browser tests will skip"; fi

doctor: install
	$(PY) -m training doctor

demo: install
	$(PY) -m workflows demo $(ARGS)

# The whole platform on MovieLens-100K (RECSYS_MOVIELENS_DIR, default ../shared/datasets/ml-100k).
movielens: install
	$(PY) -m workflows movielens $(ARGS)

serve: install
	$(PY) -m serving

# Feast's web UI on the shipped repository (entities, views, services): http://localhost:8888
feast-ui: install
	$(VENV)/bin/feast ui --host 127.0.0.1 --port 8888

test: install
	$(PY) -m training doctor
	$(PY) -m pytest -q --durations=40 -n $(TEST_WORKERS) --dist loadfile $(ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(ARGS)

bench: install
	$(PY) benchmarks/feature_pipeline.py $(ARGS)

# Quality against popularity, item-kNN, implicit ALS/BPR on MovieLens-100K (both protocols).
bench-movielens: install
	$(PY) benchmarks/movielens.py $(ARGS)

lock:
	$(PY) -m pip freeze --exclude-editable | sed 's/+cpu$$//' > requirements.lock

clean:
	rm -rf data artifacts reports spark-warehouse metastore_db derby.log
