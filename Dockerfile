# infra-service: the worker image.
#
#   docker build -t infra-service .
#   docker run --rm infra-service --help
#
# Stages: `chef` (toolchain + cargo-chef), `planner` (the dependency recipe),
# `builder` (dependencies first, cached until Cargo.toml/Cargo.lock change;
# then the crate), `runtime` (Debian slim, ansible-core, the binary, ansible/).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# --- toolchain ----------------------------------------------------------------
# The full rust image: it already has pkg-config and libssl-dev for native-tls.
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /build

# --- the dependency recipe (only Cargo.toml/Cargo.lock matter to its output) ---
FROM chef AS planner
COPY Cargo.toml Cargo.lock ./
COPY src src
RUN cargo chef prepare --recipe-path recipe.json

# --- dependencies, then the crate ------------------------------------------------
FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
# Cached as long as recipe.json is unchanged: no source is in this layer.
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin infra-service
# Source last: a change here rebuilds the crate only. The migrations are
# embedded in the binary at compile time (sqlx::migrate!).
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
RUN cargo build --release --locked --bin infra-service

# --- runtime ------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# Pinned: the playbooks and the test suite are checked against this version.
ARG ANSIBLE_CORE_VERSION=2.19.14

# tini: PID 1 forwards SIGTERM to the worker and reaps whatever re-parents to it.
# libssl3: reqwest's native-tls (Time4VPS API). curl: the HEALTHCHECK.
# openssh-client: ssh and ssh-keygen for the probe and for Ansible.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates curl git libssl3 openssh-client python3 python3-venv tini \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/ansible \
    && /opt/ansible/bin/pip install --no-cache-dir --disable-pip-version-check \
        "ansible-core==${ANSIBLE_CORE_VERSION}" \
    && /opt/ansible/bin/ansible-playbook --version

# The playbook child inherits PATH, HOME, LANG and LC_ALL (and ANSIBLE_*) from
# the worker and nothing else; Ansible refuses to start without a UTF-8 locale.
ENV PATH=/opt/ansible/bin:$PATH \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8

# A real passwd entry: ssh refuses to run for a uid it cannot look up.
RUN groupadd --gid 10001 infra \
    && useradd --uid 10001 --gid infra --create-home --home-dir /home/infra \
        --shell /usr/sbin/nologin infra

# `ansible.dir` defaults to `ansible`, relative to the working directory.
WORKDIR /app
COPY ansible/ /app/ansible/
COPY config/container.toml /etc/infra-service/config.toml
COPY --from=builder /build/target/release/infra-service /usr/local/bin/infra-service
# The docker-service convention (`./main <args> <config>` in WORKDIR).
RUN ln -s /usr/local/bin/infra-service /app/main \
    && mkdir /app/tmp && chown 10001:10001 /app/tmp \
    && infra-service --version

USER 10001:10001

# /healthz on http.listen (default 127.0.0.1:9187); change both together.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9187/healthz"]

# SIGTERM starts the drain (worker.shutdown_grace_secs): give `docker stop`
# a longer timeout than that, e.g. `docker stop -t 60`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "infra-service"]
CMD ["worker", "/etc/infra-service/config.toml"]
