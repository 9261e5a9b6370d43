# Developer entry points. `.ci/run` prepares a machine, then runs `lint` and `test`.

CARGO ?= cargo
CONFIG ?= config/local.toml

.PHONY: test lint run docker-check bench

## test: every test target; the integration suite needs Redis, Postgres,
## sshd and ansible-playbook (see README.md, "Tests").
test:
	$(CARGO) test --all-targets

## lint: formatting, clippy with warnings as errors, ansible-lint on ansible/.
lint:
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

## run: a worker against local Redis 127.0.0.1:6379 and Postgres.
run:
	$(CARGO) run -- worker --config $(CONFIG)

## docker-check: static checks of Dockerfile, .dockerignore, docker-compose.yml
## and config/ (no Docker engine needed; python3, PyYAML if present).
docker-check:
	python3 .ci/docker-check.py
