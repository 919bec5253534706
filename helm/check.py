#!/usr/bin/env python3
"""The CI check of the Helm chart helm/twinbridge (helm/check runs it with the tools venv's Python).

Through the real Helm engine (helm-python-sdk, Helm v4 as a library) and the real tools:
  1. lint, strict, for Kubernetes v1.30.0, with the chart's defaults and with every values file in
     helm/twinbridge/ci/: any lint message at all fails;
  2. renders the chart with each of them and checks every rendered object with
     `kubernetes-validate -k 1.30.0 --strict` (every object must be reported as passed; the only kind
     skipped is ServiceMonitor, a CRD kubernetes-validate has no schema for — checked structurally
     here instead);
  3. tests on the rendered objects: the launcher Role grants exactly get/patch on the worker
     StatefulSet's scale subresource (resourceNames) to the scheduler's service account alone;
     securityContext and probes on every container; replica counts the chart must not own
     (launcher-scaled workers, HPA-scaled routers) absent; Services, PDBs, HPA, Ingress and
     ServiceMonitor point at what exists; secrets only by reference;
  4. `$TWINBRIDGE_BIN config check --print` on the rendered ConfigMap's TOML, once per workload with
     that pod's environment and its mounted files (ConfigMap and Secret volumes laid out under a
     temporary root, Secret files with stand-in content), then the effective configuration is
     compared with the pod spec (listen port, launcher target, ids, which secrets each pod gets);
  5. values.schema.json is what helm/values-schema.py writes, closed everywhere, and its `config`
     keys are the keys the binary knows (table by table, both ways, minus those the chart sets);
  6. bad values files (helm/bad-values/) are rejected by the schema (wrong type, unknown key,
     chart-owned key, inline secret) or refused by the templates (schema-valid but unsafe), each
     error naming the offending key.
Exits non-zero on the first stage that has any failure, after printing every failure of it.
"""

import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import helm_python
import yaml

ROOT = Path(__file__).resolve().parent
CHART = ROOT / "twinbridge"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
BAD_VALUES = sorted((ROOT / "bad-values").glob("*.yaml"))
KUBE_VERSION = "1.30.0"
RELEASE, NAMESPACE = "tb", "iot"
UID = 10001
# Kinds kubernetes-validate has no schema for (CRDs). Skipped there by kind, and only these.
NOT_VALIDATABLE_KINDS = {"ServiceMonitor"}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "Namespace", "PriorityClass", "IngressClass"}
COMPONENTS = ("scheduler", "router", "worker")
SECRET_DIR = "/var/run/secrets/twinbridge"

# Keys of twinbridge's configuration that the chart sets itself; values.schema.json leaves them out
# of `config` on purpose (table → keys). Everything else the binary knows must be in the schema.
CHART_OWNED = {
    "store": {"backend", "password", "password_file"},
    "platform": {"app_key", "app_key_file", "ca_file"},
    "scheduler": {"listen", "admin_token", "admin_token_file"},
    "scheduler.launcher": {"kind", "process", "ecs"},
    "scheduler.launcher.kubernetes": {"namespace", "workload", "name", "api_url"},
    "router": {"listen", "id", "ingest_token", "ingest_token_file"},
    "router.mqtt": {"client_id", "password", "ca_file", "cert_file", "key_file"},
    "router.kinesis": {"access_key_id", "secret_access_key", "secret_access_key_file"},
    "worker": {"listen", "id"},
    "worker.shadow": {"access_key_id", "secret_access_key", "secret_access_key_file"},
    "worker.downlink": {"password", "ca_file", "cert_file", "key_file"},
}

BIN = os.environ.get("TWINBRIDGE_BIN", "")
TOOLS_VENV = Path(os.environ.get("TOOLS_VENV", ""))
KUBERNETES_VALIDATE = TOOLS_VENV / "bin" / "kubernetes-validate"


class Failures:
    """Failures of one stage; `stage()` prints them and stops the check when there are any."""

    def __init__(self):
        self.items = []

    def add(self, where, message):
        self.items.append(f"{where}: {message}")

    def expect(self, cond, where, message):
        if not cond:
            self.add(where, message)
        return cond

    def stage(self, name, started):
        took = time.monotonic() - started
        if self.items:
            print(f"FAIL {name} ({len(self.items)} problem(s), {took:.1f}s):")
            for item in self.items:
                print(f"  - {item}")
            sys.exit(1)
        print(f"ok   {name} ({took:.1f}s)")


def cases():
    """(label, values) for the chart defaults and every ci/ values file."""
    out = [("defaults", {})]
    for path in CI_VALUES:
        out.append((f"ci/{path.name}", yaml.safe_load(path.read_text()) or {}))
    return out


# ---------------------------------------------------------------------------------------- lint


def lint_stage():
    started, f = time.monotonic(), Failures()
    for label, values in cases():
        report = helm_python.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")
        for m in report.get("messages", []):
            f.add(f"lint {label}", f"severity {m.get('severity')} {m.get('path')}: {m.get('error')}".strip())
        for e in report.get("errors", []):
            f.add(f"lint {label}", f"error: {e}".strip())
        f.expect(report.get("total_charts_linted") == 1, f"lint {label}", f"linted {report.get('total_charts_linted')} charts, expected 1")
    f.stage(f"lint --strict (kube v{KUBE_VERSION}) of defaults and {len(CI_VALUES)} ci values files", started)


# -------------------------------------------------------------------------------------- render


def render(chart, values):
    rendered = chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    objects, notes = [], None
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__template"] = template
                objects.append(doc)
    return objects, notes


def strip(obj):
    return {k: v for k, v in obj.items() if k != "__template"}


def kubernetes_validate(label, objects, f, workdir):
    """Every object through `kubernetes-validate --strict`; each must be reported as passed."""
    checked = [o for o in objects if o["kind"] not in NOT_VALIDATABLE_KINDS]
    skipped = [o for o in objects if o["kind"] in NOT_VALIDATABLE_KINDS]
    path = workdir / f"{re.sub(r'[^A-Za-z0-9]+', '-', label)}.yaml"
    path.write_text(yaml.safe_dump_all([strip(o) for o in checked], sort_keys=False))
    run = subprocess.run(
        [str(KUBERNETES_VALIDATE), "-k", KUBE_VERSION, "--strict", str(path)],
        capture_output=True, text=True, timeout=120,
    )
    passed = 0
    for line in run.stdout.splitlines():
        if line.startswith("INFO") and " passed for resource " in line:
            passed += 1
        elif line.strip():
            f.add(f"kubernetes-validate {label}", line.strip())
    if run.stderr.strip():
        f.add(f"kubernetes-validate {label}", run.stderr.strip())
    f.expect(run.returncode == 0, f"kubernetes-validate {label}", f"exit status {run.returncode}")
    f.expect(passed == len(checked), f"kubernetes-validate {label}",
             f"{passed} objects reported as passed, {len(checked)} given")
    return len(checked), [f"{o['kind']}/{o['metadata']['name']}" for o in skipped]


def validate_canary(f, workdir):
    """kubernetes-validate must catch an unknown field (it only does with --strict)."""
    path = workdir / "canary.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "canary", "namespace": NAMESPACE, "labelz": {}}, "data": {}}))
    run = subprocess.run([str(KUBERNETES_VALIDATE), "-k", KUBE_VERSION, "--strict", str(path)],
                         capture_output=True, text=True, timeout=60)
    f.expect(run.returncode != 0 and "labelz" in run.stdout, "kubernetes-validate canary",
             f"an unknown field was not reported (exit {run.returncode}): {run.stdout.strip()}")


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def workloads(objects):
    """component → Deployment or StatefulSet."""
    out = {}
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet"):
            out[o["metadata"]["labels"]["app.kubernetes.io/component"]] = o
    return out


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def duration_seconds(text):
    """humantime, as twinbridge prints durations: `5s`, `1m 30s`, `250ms`."""
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
    total = 0.0
    for n, unit in re.findall(r"([0-9]+)\s*([a-zµ]+)", text):
        total += int(n) * units[unit]
    return total


def check_objects(chart, label, values, objects, f):
    where = f"rendered {label}"
    merged = values_merged(chart, values)
    for o in objects:
        name = f"{o['kind']}/{o['metadata'].get('name')}"
        f.expect(o.get("apiVersion") and o["metadata"].get("name"), where, f"{name} without apiVersion or name")
        if o["kind"] not in CLUSTER_SCOPED:
            f.expect(o["metadata"].get("namespace") == NAMESPACE, where, f"{name} not in namespace {NAMESPACE}")
        f.expect(o["kind"] not in CLUSTER_SCOPED, where, f"{name}: the chart needs no cluster-scoped objects")
        f.expect(o["kind"] != "Secret", where, f"{name}: the chart must not create Secrets (only reference them)")

    wl = workloads(objects)
    f.expect(set(wl) == set(COMPONENTS), where, f"workloads {sorted(wl)}, expected {list(COMPONENTS)}")
    if set(wl) != set(COMPONENTS):
        return
    scheduler, router, worker = wl["scheduler"], wl["router"], wl["worker"]
    f.expect(scheduler["kind"] == "Deployment", where, "the scheduler is not a Deployment")
    f.expect(router["kind"] == "Deployment", where, "the router is not a Deployment")
    f.expect(worker["kind"] == "StatefulSet", where, "the worker is not a StatefulSet")
    f.expect(scheduler["spec"].get("replicas", 1) >= 2, where, "the scheduler needs at least 2 replicas (leader election)")

    # Pods: security context, probes, image and arguments.
    for component, w in wl.items():
        pod = w["spec"]["template"]["spec"]
        wh = f"{where} {w['kind']}/{w['metadata']['name']}"
        f.expect(matches(w["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"]), wh,
                 "selector does not match the pod template's labels")
        psc = pod.get("securityContext", {})
        f.expect(psc.get("runAsNonRoot") is True, wh, "pod securityContext.runAsNonRoot is not true")
        f.expect(psc.get("runAsUser") == UID, wh, f"pod securityContext.runAsUser is not {UID}")
        f.expect(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", wh, "pod seccompProfile is not RuntimeDefault")
        containers = pod.get("containers", []) + pod.get("initContainers", [])
        f.expect(len(pod.get("containers", [])) == 1, wh, "expected one container")
        for c in containers:
            ch = f"{wh} container {c['name']}"
            sc = c.get("securityContext")
            if not f.expect(isinstance(sc, dict), ch, "no securityContext"):
                continue
            f.expect(sc.get("runAsNonRoot") is True, ch, "securityContext.runAsNonRoot is not true")
            f.expect(sc.get("runAsUser") == UID, ch, f"securityContext.runAsUser is not {UID}")
            f.expect(sc.get("readOnlyRootFilesystem") is True, ch, "readOnlyRootFilesystem is not true")
            f.expect(sc.get("allowPrivilegeEscalation") is False, ch, "allowPrivilegeEscalation is not false")
            f.expect(sc.get("privileged") in (None, False), ch, "privileged")
            f.expect(sc.get("capabilities", {}).get("drop") == ["ALL"], ch, "capabilities.drop is not [ALL]")
            f.expect(not sc.get("capabilities", {}).get("add"), ch, "capabilities added")
            f.expect((sc.get("seccompProfile") or psc.get("seccompProfile", {})).get("type") == "RuntimeDefault", ch,
                     "seccompProfile is not RuntimeDefault")
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = (c.get(probe) or {}).get("httpGet") or {}
                f.expect(get.get("path") == path, ch, f"{probe} is not an HTTP GET of {path}")
                f.expect(get.get("port") in ports or get.get("port") in ports.values(), ch,
                         f"{probe} port {get.get('port')!r} is not a container port")
            res = c.get("resources") or {}
            f.expect(res.get("requests", {}).get("memory") and res.get("requests", {}).get("cpu"), ch,
                     "no cpu and memory requests")
            f.expect(res.get("limits", {}).get("memory"), ch, "no memory limit")
        main = pod["containers"][0]
        f.expect(main.get("args") == [component], wh, f"args {main.get('args')}, expected [{component!r}]")
        f.expect("command" not in main, wh, "command overrides the image's entrypoint /usr/local/bin/twinbridge")
        for e in main.get("env", []):
            secretish = re.search(r"(PASSWORD|TOKEN|APP_KEY|SECRET_ACCESS_KEY)$", e["name"])
            f.expect(not (secretish and "value" in e), wh,
                     f"env {e['name']} is a secret given as a plain value (use a Secret reference)")
        if component != "scheduler":
            f.expect(pod.get("automountServiceAccountToken") is False, wh,
                     "routers and workers must not mount a Kubernetes API token")

    # Replica counts the chart must not own.
    owner = merged["worker"]["replicasOwner"]
    if owner == "scheduler":
        f.expect("replicas" not in worker["spec"], where,
                 "the worker StatefulSet sets replicas although the scheduler's launcher scales it "
                 "(helm upgrade would reset the launcher's count)")
    else:
        f.expect(worker["spec"].get("replicas") == merged["worker"]["replicas"], where, "worker replicas not as in values")
    hpas = by_kind(objects, "HorizontalPodAutoscaler")
    if merged["router"]["autoscaling"]["enabled"]:
        f.expect("replicas" not in router["spec"], where, "the router Deployment sets replicas although the HPA scales it")
        f.expect(len(hpas) == 1, where, f"expected one HorizontalPodAutoscaler, found {len(hpas)}")
        for h in hpas:
            ref = h["spec"]["scaleTargetRef"]
            f.expect((ref["kind"], ref["name"]) == ("Deployment", router["metadata"]["name"]), where,
                     f"the HPA scales {ref['kind']}/{ref['name']}, not the router Deployment")
            f.expect(h["spec"]["minReplicas"] <= h["spec"]["maxReplicas"], where, "HPA minReplicas > maxReplicas")
    else:
        f.expect(not hpas, where, "an HPA although router.autoscaling.enabled is false")
        f.expect(router["spec"].get("replicas") == merged["router"]["replicas"], where, "router replicas not as in values")

    check_rbac(where, objects, wl, owner, f)

    # Worker drain: the pod gets longer than worker.shutdown_grace.
    grace = duration_seconds(str(merged["config"].get("worker", {}).get("shutdown_grace", "5s")))
    f.expect(worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace, where,
             f"worker terminationGracePeriodSeconds is not above worker.shutdown_grace ({grace}s)")

    # Services, PDBs, ServiceMonitor, Ingress point at what exists.
    services = by_kind(objects, "Service")
    for s in services:
        sel = s["spec"].get("selector", {})
        targets = [w for w in wl.values() if matches(sel, w["spec"]["template"]["metadata"]["labels"])]
        f.expect(len(targets) == 1, where, f"Service/{s['metadata']['name']} selects {len(targets)} workloads")
        for t in targets:
            names = {p["name"] for p in t["spec"]["template"]["spec"]["containers"][0].get("ports", [])}
            for p in s["spec"]["ports"]:
                f.expect(p.get("targetPort") in names, where,
                         f"Service/{s['metadata']['name']} targetPort {p.get('targetPort')} is no container port")
    f.expect(any(s["metadata"]["name"] == worker["spec"]["serviceName"] and s["spec"].get("clusterIP") == "None"
                 for s in services), where, "the worker StatefulSet's serviceName is no headless Service")
    pdbs = by_kind(objects, "PodDisruptionBudget")
    for component in COMPONENTS:
        if merged[component]["pdb"]["enabled"]:
            pod_labels = wl[component]["spec"]["template"]["metadata"]["labels"]
            f.expect(any(matches(p["spec"]["selector"]["matchLabels"], pod_labels) for p in pdbs), where,
                     f"no PodDisruptionBudget selects the {component} pods")
    for sm in by_kind(objects, "ServiceMonitor"):
        selected = [s for s in services if matches(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
                    and all(s["metadata"]["labels"].get(e["key"]) in e["values"]
                            for e in sm["spec"]["selector"].get("matchExpressions", []))]
        f.expect(len(selected) == 3, where, f"the ServiceMonitor selects {len(selected)} Services, expected 3")
        for ep in sm["spec"]["endpoints"]:
            f.expect(ep.get("path") == "/metrics", where, "ServiceMonitor endpoint path is not /metrics")
            f.expect(all(ep.get("port") in {p["name"] for p in s["spec"]["ports"]} for s in selected), where,
                     f"ServiceMonitor port {ep.get('port')} is not on every selected Service")
    f.expect(bool(by_kind(objects, "ServiceMonitor")) == merged["serviceMonitor"]["enabled"], where,
             "ServiceMonitor rendered iff serviceMonitor.enabled")
    for ing in by_kind(objects, "Ingress"):
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                svc = p["backend"]["service"]
                f.expect(svc["name"] == scheduler["metadata"]["name"] or any(
                    s["metadata"]["name"] == svc["name"] and matches(s["spec"]["selector"], scheduler["spec"]["template"]["metadata"]["labels"])
                    for s in services), where, f"Ingress backend {svc['name']} is not the scheduler's Service")
    f.expect(bool(by_kind(objects, "Ingress")) == merged["ingress"]["enabled"], where, "Ingress rendered iff ingress.enabled")

    # IRSA on the routers' and workers' service account.
    sa_name = router["spec"]["template"]["spec"]["serviceAccountName"]
    f.expect(worker["spec"]["template"]["spec"]["serviceAccountName"] == sa_name, where,
             "routers and workers should share the IRSA service account")
    role_arn = merged["serviceAccount"]["roleArn"]
    if role_arn:
        sas = [s for s in by_kind(objects, "ServiceAccount") if s["metadata"]["name"] == sa_name]
        f.expect(sas and sas[0]["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn") == role_arn,
                 where, f"ServiceAccount/{sa_name} lacks the IRSA annotation eks.amazonaws.com/role-arn")


def check_rbac(where, objects, wl, owner, f):
    """The Role grants exactly what the kubernetes launcher calls, to the scheduler alone."""
    roles, bindings = by_kind(objects, "Role"), by_kind(objects, "RoleBinding")
    scheduler_pod = wl["scheduler"]["spec"]["template"]["spec"]
    if owner != "scheduler":
        f.expect(not roles and not bindings, where, "a Role/RoleBinding although no launcher scales the workers")
        f.expect(scheduler_pod.get("automountServiceAccountToken") is False, where,
                 "the scheduler mounts an API token it does not need (replicasOwner = chart)")
        return
    if not (f.expect(len(roles) == 1, where, f"expected one Role, found {len(roles)}")
            and f.expect(len(bindings) == 1, where, f"expected one RoleBinding, found {len(bindings)}")):
        return
    role, binding = roles[0], bindings[0]
    expected_rules = [{
        "apiGroups": ["apps"],
        "resources": ["statefulsets/scale"],
        "resourceNames": [wl["worker"]["metadata"]["name"]],
        "verbs": ["get", "patch"],
    }]
    f.expect(role["rules"] == expected_rules, where,
             f"Role rules {role['rules']} are not exactly {expected_rules} "
             "(services/scheduler/src/launcher/kubernetes.rs: GET and merge PATCH of the scale subresource)")
    f.expect(binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                    "name": role["metadata"]["name"]}, where, "the RoleBinding does not bind the Role")
    sa = scheduler_pod.get("serviceAccountName")
    f.expect(binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}], where,
             f"RoleBinding subjects {binding['subjects']} are not exactly the scheduler's service account {sa}")
    f.expect(scheduler_pod.get("automountServiceAccountToken") is True, where,
             "the scheduler must mount its API token (the kubernetes launcher calls the API server)")
    for component in ("router", "worker"):
        f.expect(wl[component]["spec"]["template"]["spec"].get("serviceAccountName") != sa, where,
                 f"the {component} pods run as the scheduler's service account (which may scale workers)")


def values_merged(chart, values):
    """The values a release would use: the chart's defaults coalesced with `values`."""
    return chart.merge_values(values)


# ------------------------------------------------------------------------------- config check


def sample_pod_name(workload):
    name = workload["metadata"]["name"]
    return f"{name}-0" if workload["kind"] == "StatefulSet" else f"{name}-6d5f7c8b9-x2k4q"


def config_check_workload(label, component, workload, objects, f, tmp):
    """Runs `twinbridge config check --print` as the pod would load its configuration."""
    wh = f"config check {label} {component}"
    pod = workload["spec"]["template"]["spec"]
    container = pod["containers"][0]
    root = Path(tempfile.mkdtemp(prefix=f"{component}-", dir=tmp))
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    configmaps = {c["metadata"]["name"]: c for c in by_kind(objects, "ConfigMap")}
    mounts = []
    for m in container.get("volumeMounts", []):
        vol = volumes.get(m["name"])
        if not f.expect(vol is not None, wh, f"volumeMount {m['name']} has no volume"):
            continue
        target = root / m["mountPath"].lstrip("/")
        mounts.append(m["mountPath"])
        if "configMap" in vol:
            cm = configmaps.get(vol["configMap"]["name"])
            if not f.expect(cm is not None, wh, f"ConfigMap {vol['configMap']['name']} is not rendered"):
                continue
            files = {m["subPath"]: target} if m.get("subPath") else {k: target / k for k in cm["data"]}
            for key, path in files.items():
                if f.expect(key in cm["data"], wh, f"ConfigMap key {key} missing"):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(cm["data"][key])
        elif "secret" in vol:
            items = vol["secret"].get("items")
            if not f.expect(items, wh, f"secret volume {m['name']} mounts the whole Secret (list its items)"):
                continue
            for item in items:
                path = target / item["path"]
                path.parent.mkdir(parents=True, exist_ok=True)
                # Stand-in content: config check reads and trims every secret file, and refuses an empty one.
                path.write_text(f"stand-in-{vol['secret']['secretName']}-{item['key']}\n")
        else:
            f.add(wh, f"volume {m['name']} is neither a ConfigMap nor a Secret")

    def relocate(value):
        for mp in sorted(mounts, key=len, reverse=True):
            if value == mp or value.startswith(mp.rstrip("/") + "/"):
                return str(root) + value
        return value

    pod_name = sample_pod_name(workload)
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            value = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
        else:
            src = e.get("valueFrom", {})
            if "fieldRef" in src:
                f.expect(src["fieldRef"]["fieldPath"] == "metadata.name", wh, f"env {e['name']}: unexpected fieldRef")
                value = pod_name
            elif "secretKeyRef" in src:
                value = f"stand-in-{src['secretKeyRef']['name']}-{src['secretKeyRef']['key']}"
            else:
                f.add(wh, f"env {e['name']}: unsupported source {src}")
                continue
        env[e["name"]] = relocate(value) if e["name"] == "TWINBRIDGE_CONFIG" or e["name"].endswith("_FILE") else value
    if not f.expect("TWINBRIDGE_CONFIG" in env, wh, "no TWINBRIDGE_CONFIG"):
        return None
    # Every *_FILE path points at a mounted file.
    for k, v in env.items():
        if k.endswith("_FILE") or k == "TWINBRIDGE_CONFIG":
            f.expect(v.startswith(str(root)) and Path(v).is_file(), wh, f"{k}={v} is not a file mounted in the pod")
    run = subprocess.run(
        [BIN, "config", "check", "--print"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root), **env},
        capture_output=True, text=True, timeout=30,
    )
    if not f.expect(run.returncode == 0, wh, f"exit {run.returncode}: {run.stderr.strip() or run.stdout.strip()}"):
        return None
    out = run.stdout
    if not f.expect(out.startswith("configuration OK\n"), wh, f"unexpected output: {out[:200]!r}"):
        return None
    try:
        effective = tomllib.loads(out.split("\n", 1)[1])
    except tomllib.TOMLDecodeError as e:
        f.add(wh, f"the printed configuration is not TOML: {e}")
        return None
    return effective, env, pod_name, container


def config_stage(chart):
    started, f = time.monotonic(), Failures()
    runs = 0
    with tempfile.TemporaryDirectory(prefix="twinbridge-helm-config-") as tmp:
        for label, values in cases():
            objects, _ = render(chart, values)
            merged = values_merged(chart, values)
            wl = workloads(objects)
            keys = merged["secrets"]["keys"]
            for component in COMPONENTS:
                if component not in wl:
                    f.add(f"config check {label}", f"no {component} workload")
                    continue
                result = config_check_workload(label, component, wl[component], objects, f, Path(tmp))
                runs += 1
                if result is None:
                    continue
                eff, env, pod_name, container = result
                wh = f"config check {label} {component}"
                port = container["ports"][0]["containerPort"]
                f.expect(eff[component]["listen"] == f"0.0.0.0:{port}", wh,
                         f"{component}.listen = {eff[component]['listen']}, the pod exposes {port} (must be 0.0.0.0:{port})")
                f.expect(eff["store"]["backend"] == "redis", wh, "store.backend is not redis")
                launcher = eff["scheduler"]["launcher"]
                if merged["worker"]["replicasOwner"] == "scheduler":
                    k = launcher.get("kubernetes", {})
                    f.expect(launcher["kind"] == "kubernetes", wh, f"scheduler.launcher.kind = {launcher['kind']}")
                    f.expect((k.get("namespace"), k.get("name"), k.get("workload")) ==
                             (NAMESPACE, wl["worker"]["metadata"]["name"], "StatefulSet"), wh,
                             f"the launcher targets {k.get('workload')} {k.get('namespace')}/{k.get('name')}, "
                             f"not the worker StatefulSet {NAMESPACE}/{wl['worker']['metadata']['name']}")
                else:
                    f.expect(launcher["kind"] == "external", wh, f"scheduler.launcher.kind = {launcher['kind']}, expected external")
                if component == "worker":
                    f.expect(eff["worker"].get("id") == pod_name, wh, f"worker.id = {eff['worker'].get('id')}, not the pod name")
                    grace = duration_seconds(eff["worker"]["shutdown_grace"])
                    tgps = wl["worker"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
                    f.expect(tgps > grace, wh, f"terminationGracePeriodSeconds {tgps} is not above worker.shutdown_grace {grace}s")
                if component == "router":
                    f.expect(eff["router"].get("id") == pod_name, wh, f"router.id = {eff['router'].get('id')}, not the pod name")
                    if eff["router"]["mqtt"]["enabled"]:
                        f.expect(eff["router"]["mqtt"]["client_id"].endswith(pod_name), wh,
                                 "the MQTT client id is not unique per router pod")
                # Which secrets each pod gets (printed as ***): only what its service uses.
                wants = {
                    ("platform", "app_key"): component in ("scheduler", "worker"),
                    ("scheduler", "admin_token"): component == "scheduler" and bool(keys["adminToken"]),
                    ("router", "ingest_token"): component == "router" and bool(keys["ingestToken"]),
                    ("store", "password"): bool(keys["redisPassword"]),
                    ("router", "mqtt", "password"): component == "router" and bool(keys["mqttPassword"]),
                    ("worker", "downlink", "password"): component == "worker" and bool(keys["downlinkPassword"]),
                }
                for path, wanted in wants.items():
                    node = eff
                    for p in path[:-1]:
                        node = node.get(p, {})
                    has = node.get(path[-1]) == "***"
                    f.expect(has == wanted, wh, f"{'.'.join(path)} {'missing' if wanted else 'given to a pod that does not use it'}")
    f.stage(f"`twinbridge config check` of the rendered ConfigMap as each pod loads it ({runs} pods)", started)


# ------------------------------------------------------------------------------- schema drift


def binary_keys(table_path, is_list=False):
    """The keys the binary accepts in one table, from its unknown-key error."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as fh:
        if table_path == "":
            fh.write("zz_probe = 1\n")
        elif is_list:
            fh.write(f"[[{table_path}]]\ntemplate = \"T\"\nzz_probe = 1\n")
        else:
            fh.write(f"[{table_path}]\nzz_probe = 1\n")
        name = fh.name
    try:
        run = subprocess.run([BIN, "config", "check", "--config", name],
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                             capture_output=True, text=True, timeout=30)
    finally:
        os.unlink(name)
    m = re.search(r"zz_probe: unknown key; expected one of: ([^()\n]*)", run.stderr)
    if not m:
        return None, run.stderr.strip()
    return {k.strip() for k in m.group(1).split(",") if k.strip()}, None


def schema_drift_stage(chart):
    started, f = time.monotonic(), Failures()
    tables = 0

    def walk(schema, path, is_list=False):
        nonlocal tables
        known, err = binary_keys(path, is_list)
        tables += 1
        where = f"config table [{path or '(root)'}]"
        if not f.expect(known is not None, where, f"could not read the binary's keys: {err}"):
            return
        ours = set(schema["properties"])
        owned = CHART_OWNED.get(path, set())
        for k in sorted(ours - known):
            f.add(where, f"values.schema.json has `{k}`, which twinbridge does not know")
        for k in sorted(known - ours - owned):
            f.add(where, f"twinbridge knows `{k}`, which is neither in values.schema.json nor set by the chart (CHART_OWNED)")
        for k in sorted(owned - known):
            f.add(where, f"CHART_OWNED lists `{k}`, which twinbridge does not know")
        for k, sub in schema["properties"].items():
            child = f"{path}.{k}" if path else k
            if sub.get("type") == "object" and "properties" in sub:
                walk(sub, child)
            elif sub.get("type") == "array" and sub.get("items", {}).get("type") == "object" and "properties" in sub["items"]:
                walk(sub["items"], child, is_list=True)

    generated = subprocess.run([sys.executable, str(ROOT / "values-schema.py")], capture_output=True, text=True, timeout=60)
    f.expect(generated.returncode == 0 and generated.stdout == (CHART / "values.schema.json").read_text(),
             "values.schema.json", "differs from the output of helm/values-schema.py (regenerate it: "
             "python3 helm/values-schema.py > helm/twinbridge/values.schema.json)" + (f": {generated.stderr.strip()}" if generated.stderr else ""))
    walk(chart.schema["properties"]["config"], "")

    # additionalProperties: false on every object schema (maps of strings name their value type).
    def closed(schema, where):
        if isinstance(schema, dict):
            if schema.get("type") == "object" and "properties" in schema:
                f.expect(schema.get("additionalProperties") is False, "values.schema.json", f"{where} accepts unknown keys")
            elif schema.get("type") == "object":
                f.expect(isinstance(schema.get("additionalProperties"), dict) or "Kubernetes" in schema.get("description", ""),
                         "values.schema.json", f"{where} is an open object")
            for k, v in schema.items():
                closed(v, f"{where}.{k}" if k not in ("properties", "items") else where + ("[]" if k == "items" else ""))
        elif isinstance(schema, list):
            for v in schema:
                closed(v, where)
    closed(chart.schema, "(root)")
    f.stage(f"values.schema.json: generated, closed objects, `config` = the binary's keys ({tables} tables)", started)


# --------------------------------------------------------------------------------- bad values


def bad_values_stage(chart):
    """`# expect: X`: the schema rejects the file naming X. `# expect-render: X`: the schema accepts
    it and the templates refuse it, naming X."""
    started, f = time.monotonic(), Failures()
    f.expect(len(BAD_VALUES) >= 2, "bad-values", "expected bad values files in helm/bad-values/")
    for path in BAD_VALUES:
        text = path.read_text()
        m = re.match(r"# (expect|expect-render): (\S+)", text)
        if not f.expect(m, path.name, "first line must be `# expect: <key>` or `# expect-render: <key>`"):
            continue
        kind, key = m.groups()
        values = yaml.safe_load(text) or {}
        if kind == "expect":
            steps = (("schema", lambda: chart.validate_schema(values), helm_python.HelmValuesError),
                     ("render", lambda: chart.render(values=values, name=RELEASE, namespace=NAMESPACE),
                      helm_python.HelmValuesError))
        else:
            try:
                chart.validate_schema(values)
            except helm_python.HelmError as e:
                f.add(f"{path.name} (schema)", f"rejected by the schema, expected the templates to refuse it: {e}")
            steps = (("render", lambda: chart.render(values=values, name=RELEASE, namespace=NAMESPACE),
                      helm_python.HelmRenderError),)
        for how, call, expected in steps:
            try:
                call()
                f.add(f"{path.name} ({how})", f"accepted, expected {expected.__name__}")
            except expected as e:
                f.expect(key in str(e), f"{path.name} ({how})", f"the error does not name {key}: {e}")
            except helm_python.HelmError as e:
                f.add(f"{path.name} ({how})", f"{type(e).__name__} instead of {expected.__name__}: {e}")
    f.stage(f"{len(BAD_VALUES)} bad values files refused (schema or templates), each naming its key", started)


# -------------------------------------------------------------------------------------- main


def main():
    began = time.monotonic()
    problems = []
    if not BIN or not os.access(BIN, os.X_OK):
        problems.append(f"TWINBRIDGE_BIN={BIN!r} is not an executable (build it: cargo build -p twinbridge)")
    if not os.access(KUBERNETES_VALIDATE, os.X_OK):
        problems.append(f"{KUBERNETES_VALIDATE} missing (scripts/ensure-deps installs it)")
    if problems:
        for p in problems:
            print(f"FAIL {p}")
        sys.exit(1)
    print(f"helm engine {helm_python.helm_sdk_version()} (helm-python-sdk {helm_python.__version__}), "
          f"chart {CHART.relative_to(ROOT.parent)}, values: defaults + {', '.join(p.name for p in CI_VALUES)}")

    lint_stage()

    chart = helm_python.Chart.load(str(CHART))

    started, f = time.monotonic(), Failures()
    total, skipped_all = 0, set()
    with tempfile.TemporaryDirectory(prefix="twinbridge-helm-") as tmp:
        validate_canary(f, Path(tmp))
        for label, values in cases():
            try:
                chart.validate_schema(values)
                objects, notes = render(chart, values)
            except helm_python.HelmError as e:
                f.add(f"render {label}", f"{type(e).__name__}: {e}")
                continue
            f.expect(notes and notes.strip(), f"render {label}", "NOTES.txt is empty")
            n, skipped = kubernetes_validate(label, objects, f, Path(tmp))
            total += n
            skipped_all.update(s.split("/")[0] for s in skipped)
            check_objects(chart, label, values, objects, f)
    f.stage(f"render + kubernetes-validate --strict -k {KUBE_VERSION} ({total} objects; skipped by kind, no schema: "
            f"{', '.join(sorted(skipped_all)) or 'none'}) + object tests", started)

    config_stage(chart)
    schema_drift_stage(chart)
    bad_values_stage(chart)
    print(f"helm/check: all passed in {time.monotonic() - began:.1f}s")


if __name__ == "__main__":
    main()
