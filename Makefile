# Developer entry points. `make run` and `make test` first prepare the machine
# (scripts/prepare: installs what is missing as root, says what to install
# otherwise); PREPARE=0 skips that. `.ci/run` is `make lint`, `make run`
# from stopped services (.ci/fresh-start) and `make test`.

CARGO ?= cargo
CONFIG ?= config/local.toml
# PREPARE=0: run the target only, on a machine already prepared.
PREPARE ?= 1

# cargo's bin for rustup installs; pyenv's shims first of all, so
# `ansible-playbook` is the pinned ansible-core that scripts/prepare installed
# with that Python's pip.
ifneq ($(wildcard $(HOME)/.cargo/bin),)
export PATH := $(HOME)/.cargo/bin:$(PATH)
endif
PYENV_ROOT ?= $(HOME)/.pyenv
ifneq ($(wildcard $(PYENV_ROOT)/shims),)
export PATH := $(PYENV_ROOT)/shims:$(PYENV_ROOT)/bin:$(PATH)
endif

prepare = $(if $(filter 0,$(PREPARE)),@:,scripts/prepare $(1))

.PHONY: test lint run docker-check bench pyclient-test

## test: every test target against the local Redis and Postgres that
## scripts/prepare starts (set TEST_REDIS_URL / TEST_DATABASE_URL for others);
## the suite also needs sshd, ansible-playbook, ... (README.md, "Test it").
test: export TEST_REDIS_URL ?= redis://127.0.0.1:6379
test: export TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
test:
	$(call prepare,test)
	$(CARGO) test --all-targets

## lint: formatting, clippy with warnings as errors, ansible-lint on ansible/,
## the Kubernetes manifests validated offline (deploy/k8s/), the Python
## client (ruff, mypy --strict, its wheel built).
lint:
	$(call prepare,lint)
	cd clients/python && ruff check . && ruff format --check . && mypy --strict
	out=$$(mktemp -d) && cd clients/python && python3 -m build --wheel --no-isolation --outdir "$$out" \
		&& ls "$$out"/*.whl && rm -rf "$$out"
	python3 .ci/k8s-validate.py
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	cd ansible && ansible-lint --profile production
	cd ansible && for playbook in playbooks/*.yml; do \
		ansible-playbook --syntax-check -i localhost, "$$playbook" || exit 1; \
	done

## bench: the benchmarks of README.md "Performance" against the release
## build, local Redis, Postgres and sshd (about 11 minutes on 2 cores; not part
## of `test`).
## BENCH_RUNS=N runs per figure; `make bench ITEMS="dispatch memory"` for some.
bench:
	$(CARGO) bench --bench bench -- $(ITEMS)

## pyclient-test: the Python client's own tests alone (those against the
## worker skip; `cargo test --test suite python_client` runs them all).
pyclient-test:
	cd clients/python && python3 -m pytest -q -p no:cacheprovider

## run: a worker against local Redis 127.0.0.1:6379 and Postgres
## 127.0.0.1:5432 (started, and installed as root, if they do not answer); it
## applies the migrations itself at start.
run: export CONFIG := $(CONFIG)
run:
	$(call prepare,run)
	$(CARGO) run -- worker --config $(CONFIG)

## docker-check: static checks of Dockerfile, .dockerignore, docker-compose.yml
## and config/ (no Docker engine needed; python3, PyYAML if present).
docker-check:
	python3 .ci/docker-check.py
