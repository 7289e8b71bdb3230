# Two entry points for people (see README): `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEBIAN_PACKAGES := prometheus prometheus-alertmanager chromium openjdk-17-jre-headless

.PHONY: demo test test-real-servers unit fuzz generate install system-deps bench record-servers clean

# Two installs in one .venv: the demo needs the runtime and the `local` extra (the full MLflow, for its
# local store); the tests, benches and generators need `test`, which holds all of `local`.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(BIN)/.installed-local

$(BIN)/.installed-local: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[local]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed-local
	$(BIN)/mlops-kpi-exporter demo

# The tests run real promtool/Prometheus/Alertmanager binaries from Debian; as root they are installed here.
system-deps:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus-alertmanager >/dev/null 2>&1 && command -v chromium >/dev/null 2>&1 && command -v java >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES) >/dev/null; \
	  else echo "Install the Debian packages first: sudo apt-get install -y $(DEBIAN_PACKAGES)"; exit 1; fi; }

# The whole suite, real model servers included (their venvs are built in the background as it runs;
# TorchServe's frontend needs Java 17, Debian's openjdk-17-jre-headless).
test: install system-deps
	$(BIN)/pytest

# The real model servers' tier alone (tests/real_servers.py): each server from PyPI in its own venv.
test-real-servers: install system-deps
	$(BIN)/pytest tests/integration/test_real_servers.py

# The quick loop: pure tests only (no MLflow server, Prometheus or browser), in seconds.
unit: install
	$(BIN)/pytest tests/unit

# Regenerate what is generated: alert rules and dashboards (from deploy/monitoring.yml and
# alerts/src/), their Kubernetes copies (PrometheusRule, dashboard ConfigMaps), and the README's
# metric reference (from the catalogue). Tests fail when they drift.
generate: install
	$(BIN)/python alerts/generate.py
	$(BIN)/python dashboards/build.py
	$(BIN)/python deploy/kubernetes/build.py
	$(BIN)/python -m mlops_kpi_exporter.metrics.catalogue --write README.md

# Property tests at random and at length (make test runs them with a fixed, bounded profile).
fuzz: install
	HYPOTHESIS_PROFILE=explore $(BIN)/pytest -p no:cacheprovider tests/unit/test_fuzz.py tests/unit/test_runs.py

# Real model servers' /metrics pages as fixtures (tests/fixtures/metrics/<server>-real.prom): each server
# from PyPI in its own venv under .cache/server-venvs/, started on 127.0.0.1 and driven with known traffic.
record-servers: install
	$(BIN)/python tests/record_servers.py

bench: install
	$(BIN)/python bench/bench_mlflow.py
	$(BIN)/python bench/bench_endpoints.py
	$(BIN)/python bench/bench_billing.py
	$(BIN)/python bench/soak.py --duration 120
	$(BIN)/python bench/bench_runtime.py

clean:
	rm -rf $(VENV) demo-data bench/.work .pytest_cache
