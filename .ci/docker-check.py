#!/usr/bin/env python3
"""Static checks of Dockerfile, .dockerignore, docker-compose.yml and config/
for machines without a Docker engine: they parse, every file they name
exists, and the rules README.md states for them hold. Standard library only,
plus PyYAML when it is there (ansible-core brings it); without it the compose
file is skipped with a note. Exit 1 on the first list of problems."""

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
problems = []


def check(ok, message):
    if not ok:
        problems.append(message)


def dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    # Join continuation lines, drop comments.
    lines = re.sub(r"\\\n", " ", text).splitlines()
    instructions = [l.strip() for l in lines if l.strip() and not l.lstrip().startswith("#")]
    froms = [l for l in instructions if l.upper().startswith("FROM ")]
    check(len(froms) >= 2, "Dockerfile: expected a multi-stage build")
    for line in instructions:
        if not line.upper().startswith("COPY ") or "--from=" in line:
            continue
        args = [a for a in line.split()[1:] if not a.startswith("--")]
        for source in args[:-1]:
            check((ROOT / source).exists(), f"Dockerfile: COPY source {source} does not exist")
    check(re.search(r'ansible-core==\d+\.\d+\.\d+|ANSIBLE_CORE_VERSION=\d+\.\d+\.\d+', text),
          "Dockerfile: ansible-core is not pinned to an exact version")
    check(any(l.upper().startswith("HEALTHCHECK ") for l in instructions), "Dockerfile: no HEALTHCHECK")
    users = [l.split()[1] for l in instructions if l.upper().startswith("USER ")]
    check(users and users[-1].split(":")[0] not in ("root", "0"), "Dockerfile: runtime user is root")
    # The dependency layer must not see the source, so a source change does
    # not rebuild the dependencies.
    cook = next((i for i, l in enumerate(instructions) if "cargo chef cook" in l), None)
    check(cook is not None, "Dockerfile: no `cargo chef cook` dependency layer")
    if cook is not None:
        stage = max(i for i, l in enumerate(instructions[:cook]) if l.upper().startswith("FROM "))
        early = [l for l in instructions[stage:cook] if l.upper().startswith("COPY ")]
        check(all("--from=planner" in l for l in early),
              "Dockerfile: source copied before the dependency layer")


def dockerignore():
    patterns = (ROOT / ".dockerignore").read_text().split()
    for needed in ("target*", ".git", "secrets"):
        check(needed in patterns, f".dockerignore: {needed} is not excluded")


def configs():
    for path in sorted((ROOT / "config").glob("*.toml")):
        try:
            tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            problems.append(f"{path.relative_to(ROOT)}: {e}")


def compose():
    try:
        import yaml
    except ImportError:
        print("docker-check: PyYAML missing; docker-compose.yml not checked")
        return
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc.get("services", {})
    for name in ("redis", "postgres", "worker"):
        check(name in services, f"compose: no service {name}")
    for name, service in services.items():
        check("healthcheck" in service, f"compose: {name} has no healthcheck")
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                check((ROOT / source).exists(), f"compose: {name} mounts missing {source}")
        for secret in service.get("secrets", []):
            secret = secret if isinstance(secret, str) else secret["source"]
            check(secret in doc.get("secrets", {}), f"compose: {name} uses undeclared secret {secret}")
    worker = services.get("worker", {})
    check("container_name" not in worker, "compose: worker has a container_name (breaks --scale)")
    check("ports" not in worker, "compose: worker publishes ports (breaks --scale)")
    depends = worker.get("depends_on", {})
    for name in ("redis", "postgres"):
        check(isinstance(depends, dict) and depends.get(name, {}).get("condition") == "service_healthy",
              f"compose: worker does not wait for {name} to be healthy")
    build = worker.get("build", {})
    check((ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).is_file(),
          "compose: worker's Dockerfile is missing")
    ignored = (ROOT / ".gitignore").read_text().split()
    for name, secret in doc.get("secrets", {}).items():
        source = secret.get("file", "")
        check(source.startswith("./secrets/"), f"compose: secret {name} is not under ./secrets/")
    check("/secrets/*" in ignored, ".gitignore: secrets/ is not ignored")
    check((ROOT / "secrets" / "README").is_file(), "secrets/README is missing")


dockerfile()
dockerignore()
configs()
compose()
if problems:
    print("\n".join(f"docker-check: {p}" for p in problems), file=sys.stderr)
    sys.exit(1)
print("docker-check: Dockerfile, .dockerignore, docker-compose.yml and config/ OK")
