#!/usr/bin/env python3
"""Offline checks of deploy/k8s/ (no cluster, no kubectl, no network).

1. Renders deploy/k8s/kustomization.yaml itself (only `namespace`,
   `resources` and `images`; anything else is refused, so the rendering here
   is the one `kubectl apply -k` does).
2. Validates every built-in resource with kubernetes-validate against
   Kubernetes K8S_VERSION in strict mode (unknown fields are errors), and the
   KEDA resources against the openAPIV3Schema of the CRDs committed in
   deploy/k8s/schemas/, made strict the same way.
3. Checks what the worker needs (README "Kubernetes" in deploy/k8s/README.md):
   the drain fits in terminationGracePeriodSeconds, non-root with a
   read-only root filesystem, every path the worker writes on a writable
   volume, probes on /healthz and /readyz at http.listen's port, every
   config key known to src/config.rs, every `file:` reference and certificate
   path on a mounted volume, and a ScaledObject whose triggers are the
   contract's two queues in the configured group.

Usage: .ci/k8s-validate.py [DIR]        (DIR defaults to deploy/k8s)
       .ci/k8s-validate.py --self-test  (breaks the manifests in memory, one
                                         way at a time, and expects a failure)
Needs: kubernetes-validate, jsonschema, PyYAML (pinned in .ci/run).
Exit 1 with the list of problems on failure."""

import copy
import re
import sys
import tomllib
import urllib.parse
from pathlib import Path, PurePosixPath

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
# The oldest Kubernetes the manifests are meant for (PDB
# unhealthyPodEvictionPolicy is GA since 1.31).
K8S_VERSION = "1.33.0"
# CONTRACT.md section 1; cross-checked against src/queue/names.rs.
CONTRACT_QUEUES = {"provisioner:queue", "ansible:deploy:queue"}
# Seconds the worker needs after the jobs' drain and kill: hand the entries
# back, leave the group, close connections, exit.
EXIT_MARGIN_SECS = 30
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "images"}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole",
                  "ClusterRoleBinding", "PriorityClass", "StorageClass"}
CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.yaml",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_triggerauthentications.yaml",
}


class Problems(list):
    def add(self, where, message):
        self.append(f"{where}: {message}")


def name_of(doc):
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


# --- the repository's own facts --------------------------------------------------

def source_facts():
    """Defaults, known keys, the image's user and working directory, queue
    names and the run directory's length limit, read from the sources."""
    config_rs = (ROOT / "src/config.rs").read_text()
    block = re.search(r"const DEFAULTS: [^=]*= &\[(.*?)\n\];", config_rs, re.S)
    if block is None:
        sys.exit("k8s-validate: cannot find `const DEFAULTS` in src/config.rs")
    defaults = dict(re.findall(r'\(\s*"([a-z0-9_]+\.[a-z0-9_]+)",\s*"([^"]*)"\s*,?\s*\)', block.group(1)))
    structs = {}
    for name, body in re.findall(r"struct (\w+) \{(.*?)\n\}", config_rs, re.S):
        fields, rename = [], None
        for line in body.splitlines():
            line = line.strip()
            m = re.match(r'#\[serde\(rename = "(\w+)"\)\]', line)
            if m:
                rename = m.group(1)
                continue
            m = re.match(r"(?:pub(?:\(crate\))? )?(\w+): (\w+)", line)
            if m:
                fields.append((rename or m.group(1), m.group(2)))
                rename = None
        structs[name] = fields
    if "RawSettings" not in structs:
        sys.exit("k8s-validate: cannot find `struct RawSettings` in src/config.rs")
    known = set()
    for section, type_name in structs["RawSettings"]:
        for key, _ in structs.get(type_name, []):
            known.add(f"{section}.{key}")
    dockerfile = (ROOT / "Dockerfile").read_text()
    user = re.findall(r"^USER\s+(\d+)", dockerfile, re.M)
    workdir = re.findall(r"^WORKDIR\s+(\S+)", dockerfile, re.M)
    names_rs = (ROOT / "src/queue/names.rs").read_text()
    queues = set(re.findall(r'with_prefix\("([^"]+:queue)"\)', names_rs))
    workspace_rs = (ROOT / "src/ansible/workspace.rs").read_text()
    max_tmp = re.search(r"MAX_BASE_DIR_LEN: usize = (\d+)", workspace_rs)
    return {
        "defaults": defaults,
        "known_keys": known,
        "uid": int(user[-1]) if user else None,
        "workdir": workdir[-1] if workdir else "/",
        "queues": queues,
        "max_tmpdir_len": int(max_tmp.group(1)) if max_tmp else 32,
    }


# --- rendering -------------------------------------------------------------------

def render(directory):
    """The resources `kubectl apply -k DIRECTORY` would apply, in order, each
    with `_file` (its source file; removed before schema validation)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    extra = set(kustomization) - KUSTOMIZATION_KEYS
    if extra:
        sys.exit(f"k8s-validate: kustomization.yaml uses {sorted(extra)}, which this "
                 f"script does not render; keep to {sorted(KUSTOMIZATION_KEYS)} or extend it")
    images = {i["name"]: i for i in kustomization.get("images", [])}
    docs = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if not path.is_file():
            sys.exit(f"k8s-validate: kustomization.yaml lists {resource}, which is not a file")
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            doc["_file"] = resource
            if "namespace" in kustomization and doc.get("kind") not in CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = kustomization["namespace"]
            for container in pod_containers(doc):
                image = images.get(re.split(r"[:@]", container.get("image", ""))[0])
                if image:
                    container["image"] = (f"{image.get('newName', image['name'])}"
                                          f":{image.get('newTag', 'latest')}")
            docs.append(doc)
    return docs


def pod_spec(doc):
    return (((doc.get("spec") or {}).get("template") or {}).get("spec")) or {}


def pod_containers(doc):
    return pod_spec(doc).get("containers", []) if doc.get("kind") == "Deployment" else []


# --- schemas ---------------------------------------------------------------------

def strict(schema):
    """An openAPIV3Schema as the API server's strict field validation reads
    it: an object with listed properties takes no others."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_validators(directory):
    validators = {}
    for (api_version, kind), file in CRDS.items():
        crd = yaml.safe_load((directory / "schemas" / file).read_text())
        group = crd["spec"]["group"]
        for version in crd["spec"]["versions"]:
            if f"{group}/{version['name']}" == api_version:
                schema = strict(version["schema"]["openAPIV3Schema"])
                validators[(api_version, kind)] = jsonschema.Draft7Validator(schema)
    return validators


def check_schemas(docs, validators, problems):
    for doc in docs:
        where = f"{doc['_file']} {name_of(doc)}"
        body = {k: v for k, v in doc.items() if k != "_file"}
        key = (body.get("apiVersion"), body.get("kind"))
        if key in validators:
            for error in sorted(validators[key].iter_errors(body), key=lambda e: list(e.path)):
                path = ".".join(str(p) for p in error.absolute_path) or "(top)"
                problems.add(where, f"{path}: {error.message} (KEDA CRD schema)")
            continue
        try:
            kubernetes_validate.validate(body, K8S_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problems.add(where, f"no schema for {key[0]} {key[1]} in Kubernetes "
                         f"{K8S_VERSION} nor in deploy/k8s/schemas/")
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.absolute_path) or "(top)"
            problems.add(where, f"{path}: {e.message} (Kubernetes {K8S_VERSION}, strict)")


# --- the worker's invariants -------------------------------------------------------

def flatten(table, prefix=""):
    out = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted != "ansible.extra_vars":
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def under(path, roots):
    path = PurePosixPath(path)
    return any(path == PurePosixPath(r) or PurePosixPath(r) in path.parents for r in roots)


def check_worker(docs, facts, problems):
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc.get("kind"), []).append(doc)
    deployments = by_kind.get("Deployment", [])
    if len(deployments) != 1:
        problems.add("kustomization", f"expected one Deployment, found {len(deployments)}")
        return
    deployment = deployments[0]
    where = f"{deployment['_file']} {name_of(deployment)}"
    spec = pod_spec(deployment)
    containers = spec.get("containers", [])
    container = next((c for c in containers if c.get("name") == "infra-service"), None)
    if container is None:
        problems.add(where, "no container named infra-service")
        return
    if "replicas" in deployment.get("spec", {}):
        problems.add(where, "spec.replicas is set: KEDA owns the count, and every apply "
                     "would reset it")
    volumes = {v.get("name"): v for v in spec.get("volumes", [])}
    mounts = container.get("volumeMounts", [])
    env = {e["name"]: e for e in container.get("env", [])}

    # The configuration file the worker reads, and what it says.
    args = container.get("args", [])
    config_path = args[-1] if args else ""
    config_text = None
    for mount in mounts:
        volume = volumes.get(mount.get("name"), {})
        if "configMap" in volume and PurePosixPath(config_path).parent == PurePosixPath(mount["mountPath"]):
            cm = next((d for d in by_kind.get("ConfigMap", [])
                       if d["metadata"]["name"] == volume["configMap"]["name"]), None)
            if cm is None:
                problems.add(where, f"ConfigMap {volume['configMap']['name']} is not in the kustomization")
            else:
                config_text = cm.get("data", {}).get(PurePosixPath(config_path).name)
    if args[:1] != ["worker"] or config_text is None:
        problems.add(where, f"args {args} must be [worker, FILE] with FILE a key of a mounted ConfigMap")
        config_text = ""
    try:
        file_keys = flatten(tomllib.loads(config_text))
    except tomllib.TOMLDecodeError as e:
        problems.add(where, f"the ConfigMap's {PurePosixPath(config_path).name} is not TOML: {e}")
        file_keys = {}
    env_keys = {}
    for name, var in env.items():
        if name.startswith("INFRA__"):
            parts = name[len("INFRA__"):].lower().split("__")
            env_keys[".".join(parts)] = var.get("value", "<from a reference>")
    known = facts["known_keys"]
    for key in sorted(set(file_keys) | set(env_keys)):
        if key not in known and not key.startswith("ansible.extra_vars"):
            problems.add(where, f"configuration key `{key}` is not read by src/config.rs "
                         "(the worker refuses unknown keys at start)")
    settings = {**facts["defaults"], **{k: v for k, v in file_keys.items()}, **env_keys}

    def number(key):
        try:
            return int(settings[key])
        except (KeyError, TypeError, ValueError):
            problems.add(where, f"`{key}` is not a number here: {settings.get(key)!r}")
            return 0

    # Drain: running jobs, then their playbooks' kill, then the exit.
    shutdown, kill = number("worker.shutdown_grace_secs"), number("worker.kill_grace_secs")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace < shutdown + kill + EXIT_MARGIN_SECS:
        problems.add(where, f"terminationGracePeriodSeconds {grace} must be at least "
                     f"worker.shutdown_grace_secs {shutdown} + worker.kill_grace_secs {kill} "
                     f"+ {EXIT_MARGIN_SECS} s to exit, or the kubelet's SIGKILL cuts the drain")

    # Who runs it.
    pod_sc, sc = spec.get("securityContext", {}), container.get("securityContext", {})
    run_as = sc.get("runAsUser", pod_sc.get("runAsUser"))
    if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
        problems.add(where, "runAsNonRoot must be true")
    if run_as != facts["uid"]:
        problems.add(where, f"runAsUser {run_as} is not the image's user {facts['uid']} "
                     "(Dockerfile USER): ssh needs a uid with a passwd entry")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.add(where, "readOnlyRootFilesystem must be true")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.add(where, "allowPrivilegeEscalation must be false")
    if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
        problems.add(where, "capabilities must drop ALL")

    # Where it writes: only emptyDirs are writable.
    writable = [m["mountPath"] for m in mounts
                if "emptyDir" in volumes.get(m.get("name"), {}) and not m.get("readOnly")]
    tmp = next((m for m in mounts if m["mountPath"] == "/tmp"), None)
    if tmp is None or (volumes.get(tmp["name"], {}).get("emptyDir") or {}).get("medium") != "Memory":
        problems.add(where, "/tmp must be an emptyDir with medium: Memory (run directories "
                     "hold private keys)")

    def literal(name):
        return env.get(name, {}).get("value")

    tmpdir = literal("TMPDIR") or "/tmp"
    if not under(tmpdir, writable):
        problems.add(where, f"TMPDIR {tmpdir} (the run directories) is not on a writable emptyDir")
    if len(tmpdir) > facts["max_tmpdir_len"]:
        problems.add(where, f"TMPDIR {tmpdir} is longer than {facts['max_tmpdir_len']} "
                     "characters: the worker would fall back to /tmp")
    home = literal("HOME")
    if not home or not under(home, writable):
        problems.add(where, f"HOME ({home}) must be set to a writable emptyDir "
                     "(Ansible's ~/.ansible/tmp, ssh's ~/.ssh)")
    if literal("ANSIBLE_LOCAL_TEMP") and not under(literal("ANSIBLE_LOCAL_TEMP"), writable):
        problems.add(where, "ANSIBLE_LOCAL_TEMP is not on a writable emptyDir")
    heartbeat = str(settings.get("heartbeat.path", ""))
    if heartbeat:
        workdir = container.get("workingDir", facts["workdir"])
        heartbeat_abs = str(PurePosixPath(workdir) / heartbeat)
        if not under(heartbeat_abs, writable):
            problems.add(where, f"heartbeat.path {heartbeat_abs} is not on a writable emptyDir")

    # Secrets and certificates: on mounted read-only volumes.
    secret_mounts = [m["mountPath"] for m in mounts
                     if {"secret", "projected"} & set(volumes.get(m.get("name"), {}))]
    secrets_dir = str(settings.get("secrets.dir", "/run/secrets"))
    for key, value in sorted(settings.items()):
        if key.endswith("_ref") and isinstance(value, str) and value.startswith("file:"):
            path = str(PurePosixPath(secrets_dir) / value[len("file:"):])
            if not under(path, secret_mounts):
                problems.add(where, f"`{key}` = {value} reads {path}, which no Secret volume mounts")
        if key.endswith(("ca_cert", "client_cert")) and value:
            if not under(str(value), secret_mounts):
                problems.add(where, f"`{key}` = {value} is on no Secret volume")
    if settings.get("vault.auth") == "kubernetes" and settings.get("vault.addr"):
        jwt = str(settings.get("vault.kubernetes_jwt_path"))
        projected = [m for m in mounts if "projected" in volumes.get(m.get("name"), {})
                     and PurePosixPath(jwt).parent == PurePosixPath(m["mountPath"])]
        tokens = [s.get("serviceAccountToken", {}).get("path")
                  for m in projected for s in volumes[m["name"]]["projected"]["sources"]]
        automount = spec.get("automountServiceAccountToken", True)
        if PurePosixPath(jwt).name not in tokens and not (
                automount and jwt.startswith("/var/run/secrets/kubernetes.io/serviceaccount/")):
            problems.add(where, f"vault.kubernetes_jwt_path {jwt} is no mounted service-account token")
    for var in env.values():
        ref = ((var.get("valueFrom") or {}).get("secretKeyRef") or {})
        if ref and var["name"].startswith("INFRA__") and not var["name"].endswith("__USERNAME"):
            problems.add(where, f"{var['name']} takes a Secret's value into the environment: "
                         "use a `*_ref = \"file:...\"` key and a Secret volume")

    # Probes at http.listen.
    listen = str(settings.get("http.listen", ""))
    host, _, port = listen.rpartition(":")
    if host.strip("[]") in ("127.0.0.1", "::1", "localhost"):
        problems.add(where, f"http.listen {listen} is loopback: the kubelet's probes and "
                     "Prometheus cannot reach it")
    ports = {p.get("name"): p.get("containerPort") for p in container.get("ports", [])}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                        ("startupProbe", "/healthz")):
        get = (container.get(probe) or {}).get("httpGet")
        if not get:
            if probe != "startupProbe":
                problems.add(where, f"{probe} must be an httpGet on {path}")
            continue
        if get.get("path") != path:
            problems.add(where, f"{probe} asks {get.get('path')}, not {path}")
        probe_port = ports.get(get.get("port"), get.get("port"))
        if str(probe_port) != port:
            problems.add(where, f"{probe} port {get.get('port')} is not http.listen's port {port}")

    labels = (deployment["spec"].get("template", {}).get("metadata") or {}).get("labels", {})

    def selects(selector):
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    account = spec.get("serviceAccountName", "default")
    if account not in {d["metadata"]["name"] for d in by_kind.get("ServiceAccount", [])}:
        problems.add(where, f"ServiceAccount {account} is not in the kustomization")
    for service in by_kind.get("Service", []):
        at = f"{service['_file']} {name_of(service)}"
        if not selects(service["spec"].get("selector")):
            problems.add(at, "its selector does not select the worker's pods")
        annotations = service["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true" or annotations.get("prometheus.io/port") != port:
            problems.add(at, f"needs prometheus.io/scrape \"true\" and prometheus.io/port \"{port}\"")
    pdbs = by_kind.get("PodDisruptionBudget", [])
    if not pdbs:
        problems.add("kustomization", "no PodDisruptionBudget")
    for pdb in pdbs:
        at = f"{pdb['_file']} {name_of(pdb)}"
        if not selects(pdb["spec"].get("selector", {}).get("matchLabels")):
            problems.add(at, "its selector does not select the worker's pods")

    check_scaling(by_kind, deployment, settings, facts, problems)


def check_scaling(by_kind, deployment, settings, facts, problems):
    objects = by_kind.get("ScaledObject", [])
    if len(objects) != 1:
        problems.add("kustomization", f"expected one ScaledObject, found {len(objects)}")
        return
    so = objects[0]
    where = f"{so['_file']} {name_of(so)}"
    spec = so.get("spec", {})
    target = spec.get("scaleTargetRef", {})
    if target.get("kind", "Deployment") != "Deployment" or target.get("name") != deployment["metadata"]["name"]:
        problems.add(where, f"scaleTargetRef {target} is not the Deployment")
    if facts["queues"] != CONTRACT_QUEUES:
        problems.add("src/queue/names.rs", f"queues {sorted(facts['queues'])} differ from the "
                     f"contract's {sorted(CONTRACT_QUEUES)}")
    url = urllib.parse.urlsplit(str(settings.get("redis.url", "")))
    address = f"{url.hostname}:{url.port or 6379}"
    tls = url.scheme == "rediss"
    group = settings.get("redis.group", "infra-service")
    auths = {d["metadata"]["name"] for d in by_kind.get("TriggerAuthentication", [])}
    modes = {}
    triggers = spec.get("triggers", [])
    for trigger in triggers:
        meta = trigger.get("metadata", {})
        label = f"trigger {trigger.get('name') or trigger.get('type')}"
        if trigger.get("type") != "redis-streams":
            problems.add(where, f"{label}: type {trigger.get('type')}, expected redis-streams")
            continue
        if meta.get("address") != address:
            problems.add(where, f"{label}: address {meta.get('address')} is not redis.url's {address}")
        if (meta.get("enableTLS") == "true") != tls:
            problems.add(where, f"{label}: enableTLS {meta.get('enableTLS')!r} does not match "
                         f"redis.url's scheme {url.scheme}")
        if meta.get("consumerGroup") != group:
            problems.add(where, f"{label}: consumerGroup {meta.get('consumerGroup')} is not "
                         f"redis.group {group}")
        name = (trigger.get("authenticationRef") or {}).get("name")
        if name not in auths:
            problems.add(where, f"{label}: TriggerAuthentication {name} is not in the kustomization")
        if "lagCount" in meta and "pendingEntriesCount" in meta:
            problems.add(where, f"{label}: lagCount and pendingEntriesCount in one trigger "
                         "(KEDA then uses lagCount only)")
        mode = "lag" if "lagCount" in meta else "pending" if "pendingEntriesCount" in meta else None
        if mode is None:
            problems.add(where, f"{label}: neither lagCount nor pendingEntriesCount")
        modes.setdefault(meta.get("stream"), set()).add(mode)
    if set(modes) != CONTRACT_QUEUES:
        problems.add(where, f"trigger streams {sorted(map(str, modes))} are not the contract's "
                     f"queues {sorted(CONTRACT_QUEUES)}")
    for stream, seen in modes.items():
        if seen != {"lag", "pending"}:
            problems.add(where, f"stream {stream} needs one lagCount trigger (backlog) and one "
                         f"pendingEntriesCount trigger (running jobs), has {sorted(map(str, seen))}")
    modifiers = spec.get("advanced", {}).get("scalingModifiers")
    if modifiers:
        names = [t.get("name") for t in triggers]
        missing = [n for n in names if not n or not re.search(rf"\b{re.escape(n)}\b",
                                                               modifiers.get("formula", ""))]
        if missing:
            problems.add(where, f"scalingModifiers.formula leaves out triggers {missing}: "
                         "every job outstanding must count")
        if str(modifiers.get("target")) != str(settings.get("worker.concurrency")):
            problems.add(where, f"scalingModifiers.target {modifiers.get('target')} is not "
                         f"worker.concurrency {settings.get('worker.concurrency')}")
    low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if low < 1:
        problems.add(where, f"minReplicaCount {low}: keep one worker (it also reclaims the "
                     "entries of workers that died)")
    if high < low:
        problems.add(where, f"maxReplicaCount {high} < minReplicaCount {low}")
    down = (spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {})
            .get("behavior", {}).get("scaleDown", {}))
    if down.get("stabilizationWindowSeconds", 300) < 300 or not down.get("policies"):
        problems.add(where, "scaleDown needs a stabilizationWindowSeconds of at least 300 and "
                     "a policy: scale-down must be slow")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        floor = pdb["spec"].get("minAvailable")
        if isinstance(floor, int) and floor >= low:
            problems.add(f"{pdb['_file']} {name_of(pdb)}", f"minAvailable {floor} >= "
                         f"minReplicaCount {low} blocks every node drain at the minimum")


# --- main --------------------------------------------------------------------------

def run(docs, directory, facts):
    problems = Problems()
    check_schemas(docs, crd_validators(directory), problems)
    check_worker(docs, facts, problems)
    return problems


def container_of(docs):
    return next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]


def config_toml(docs, edit):
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    cm["data"]["config.toml"] = edit(cm["data"]["config.toml"])


def scaled(docs):
    return next(d for d in docs if d["kind"] == "ScaledObject")["spec"]


# Each breaks one thing; --self-test expects every one to be reported.
MUTATIONS = {
    "unknown Deployment field": lambda d: container_of(d).update(imagePullPolicyy="Always"),
    "unknown ScaledObject field": lambda d: scaled(d).update(maxReplicas=3),
    "short grace period": lambda d: next(x for x in d if x["kind"] == "Deployment")
    ["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=60),
    "longer drain in the ConfigMap": lambda d: config_toml(
        d, lambda t: t.replace("shutdown_grace_secs = 900", "shutdown_grace_secs = 1800")),
    "drain from the environment": lambda d: container_of(d)["env"].append(
        {"name": "INFRA__WORKER__SHUTDOWN_GRACE_SECS", "value": "3000"}),
    "writable root": lambda d: container_of(d)["securityContext"].update(readOnlyRootFilesystem=False),
    "root user": lambda d: next(x for x in d if x["kind"] == "Deployment")
    ["spec"]["template"]["spec"]["securityContext"].update(runAsUser=0),
    "/tmp on disk": lambda d: next(v for v in next(x for x in d if x["kind"] == "Deployment")
                                   ["spec"]["template"]["spec"]["volumes"]
                                   if v["name"] == "tmp")["emptyDir"].pop("medium"),
    "no HOME": lambda d: container_of(d).update(
        env=[e for e in container_of(d)["env"] if e["name"] != "HOME"]),
    "liveness on /readyz": lambda d: container_of(d)["livenessProbe"]["httpGet"].update(path="/readyz"),
    "loopback listen": lambda d: config_toml(d, lambda t: t.replace("0.0.0.0:9187", "127.0.0.1:9187")),
    "unknown config key": lambda d: config_toml(d, lambda t: t.replace("[worker]", "[worker]\nconcurency = 4")),
    "wrong stream": lambda d: scaled(d)["triggers"][0]["metadata"].update(stream="provision:queue"),
    "one stream missing": lambda d: scaled(d).update(triggers=scaled(d)["triggers"][:2]),
    "wrong group": lambda d: scaled(d)["triggers"][1]["metadata"].update(consumerGroup="workers"),
    "formula misses a trigger": lambda d: scaled(d)["advanced"]["scalingModifiers"].update(
        formula="provision_lag + deploy_lag"),
    "unmounted secret ref": lambda d: config_toml(
        d, lambda t: t.replace("file:ssh/deploy_key", "file:deploy_ssh_key")),
    "replicas set": lambda d: next(x for x in d if x["kind"] == "Deployment")["spec"].update(replicas=2),
}


def main():
    args = sys.argv[1:]
    self_test = "--self-test" in args
    args = [a for a in args if a != "--self-test"]
    directory = Path(args[0]) if args else ROOT / "deploy/k8s"
    facts = source_facts()
    docs = render(directory)
    problems = run(docs, directory, facts)
    if problems:
        print(f"k8s-validate: {directory} FAILED, {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        sys.exit(1)
    print(f"k8s-validate: {len(docs)} resources of {directory.relative_to(ROOT) if directory.is_relative_to(ROOT) else directory} "
          f"valid (Kubernetes {K8S_VERSION} strict, KEDA CRDs) and the worker's invariants hold")
    if self_test:
        missed = []
        for what, mutate in MUTATIONS.items():
            broken = copy.deepcopy(docs)
            mutate(broken)
            found = run(broken, directory, facts)
            print(f"  self-test {what}: {found[0] if found else 'NOT DETECTED'}")
            if not found:
                missed.append(what)
        if missed:
            sys.exit(f"k8s-validate: the self-test did not detect: {missed}")
        print(f"k8s-validate: self-test detected all {len(MUTATIONS)} breakages")


if __name__ == "__main__":
    main()
