#!/usr/bin/env python3
"""The Prometheus Operator and Grafana objects of deploy/, checked without a
cluster.

  check_monitoring.py --write
      Regenerates deploy/prometheus/prometheusrule.yaml from
      deploy/prometheus/rules.yaml (run it after editing the rules).

  check_monitoring.py [--labels K=V,...] FILE...
      - deploy/prometheus/prometheusrule.yaml is exactly what rules.yaml
        generates (one source: promtool tests the plain file, the operator
        loads the PrometheusRule, and they cannot drift apart);
      - every PrometheusRule and PodMonitor in FILEs validates against the
        Prometheus Operator's schema for it, as the npm package
        @kubernetes-models/prometheus-operator compiles it (.ci/validate_crds.mjs,
        one Node process for the whole run), strictly: a field the schema does
        not know fails, as `kubectl apply` with server-side field validation
        would;
      - every ConfigMap labelled grafana_dashboard holds deploy/grafana/kiln.json
        unchanged;
      - with --labels: FILEs hold at least one PrometheusRule, PodMonitor and
        dashboard ConfigMap, and the first two carry every label K=V (the
        labels Prometheus' ruleSelector and podMonitorSelector match);
      - when FILEs also hold the workloads (the rendered base), every
        PodMonitor selects pods of one of them, in a namespace it looks in,
        and names a port their containers have: a PodMonitor that matches
        nothing scrapes nothing, silently.

  check_monitoring.py --dashboard-rules OUT.yaml [--break]
      Writes every query of deploy/grafana/kiln.json as a recording rule, so
      that `promtool check rules OUT.yaml` parses them as PromQL (Grafana's
      variables replaced: $job by .*, $__rate_interval and the like by 5m).
      With --break, one query is made invalid, for a run that must fail.

  check_monitoring.py --self-test [--labels K=V,...] FILE...
      Breaks the inputs in each way the check guards against and fails unless
      every break is caught.

Needs PyYAML (in the venv of .ci/validate-manifests), Node and the npm
package above in target/ci-node/ (.ci/validate-manifests installs it);
--write needs none of them.
"""

import copy
import json
import pathlib
import subprocess
import sys

import selftest

ROOT = pathlib.Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy/prometheus/rules.yaml"
PROMETHEUS_RULE = ROOT / "deploy/prometheus/prometheusrule.yaml"
DASHBOARD = ROOT / "deploy/grafana/kiln.json"
# The kinds .ci/validate_crds.mjs validates.
CRD_KINDS = ("PrometheusRule", "PodMonitor")
VALIDATE_CRDS = ROOT / ".ci/validate_crds.mjs"
DASHBOARD_LABEL = "grafana_dashboard"

HEADER = """\
# GENERATED from rules.yaml by `python3 .ci/check_monitoring.py --write`:
# edit rules.yaml, not this file (CI fails while they differ).
# The alert rules as a Prometheus Operator PrometheusRule. Prometheus picks it
# up only if it carries the labels of its ruleSelector (kube-prometheus-stack:
# release: <Helm release>); deploy/kustomize/monitoring sets them, see
# docs/operations.md#deploy.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: kiln
  namespace: kiln-system
  labels:
    app.kubernetes.io/name: kiln-worker
    app.kubernetes.io/part-of: kiln
spec:
"""


def generate(rules_text):
    """The PrometheusRule for a rules file: its groups, verbatim (comments
    included), indented under `spec:`. Text, not a YAML round trip, so the
    comments that explain each rule survive in the generated file."""
    lines = rules_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = [("  " + line) if line.strip() else "" for line in lines[start:]]
    return HEADER + "\n".join(body) + "\n"


def drift_problems(rules_text, committed_text):
    import yaml

    problems = []
    generated = generate(rules_text)
    # The generator itself: the spec must be the rules file, value for value.
    if yaml.safe_load(generated)["spec"] != yaml.safe_load(rules_text):
        problems.append("generator: the generated spec differs from rules.yaml (indentation?)")
    if committed_text != generated:
        problems.append(
            f"{PROMETHEUS_RULE.relative_to(ROOT)}: differs from what {RULES.relative_to(ROOT)} "
            "generates; run `python3 .ci/check_monitoring.py --write`"
        )
    return problems


class CrdValidator:
    """The Prometheus Operator objects' schema validation, done by
    .ci/validate_crds.mjs in one Node process that lives as long as this
    one: one JSON line per object there, one line of errors back."""

    def __init__(self):
        self.node = subprocess.Popen(
            ["node", str(VALIDATE_CRDS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def errors(self, doc):
        """[(path, message)] for `doc`; empty when it is valid."""
        # default=str: YAML may hold timestamps, which JSON has no type for.
        self.node.stdin.write(json.dumps(doc, default=str) + "\n")
        self.node.stdin.flush()
        line = self.node.stdout.readline()
        if not line:
            raise SystemExit(
                f"{VALIDATE_CRDS.relative_to(ROOT)} ended (exit code {self.node.wait()}); its message is above"
            )
        return [(error["path"], error["message"]) for error in json.loads(line)["errors"]]


def is_dashboard(doc):
    return doc.get("kind") == "ConfigMap" and DASHBOARD_LABEL in (
        (doc.get("metadata") or {}).get("labels") or {}
    )


def metadata_problems(where, doc):
    meta = doc.get("metadata") or {}
    problems = []
    if not meta.get("name"):
        problems.append(f"{where}: metadata.name is missing")
    for field in ("labels", "annotations"):
        for key, value in (meta.get(field) or {}).items():
            if not isinstance(value, str):
                problems.append(f"{where}: metadata.{field}.{key} must be a string, not {value!r}")
    return problems


def document_problems(where, doc, validator, want_labels):
    kind = doc.get("kind")
    name = (doc.get("metadata") or {}).get("name", "?")
    where = f"{where}: {kind} {name}"
    problems = []
    if kind in CRD_KINDS:
        problems += metadata_problems(where, doc)
        for path, message in sorted(validator.errors(doc)):
            problems.append(f"{where}: {'.'.join(path) or '(top)'}: {message}")
        labels = (doc.get("metadata") or {}).get("labels") or {}
        for key, value in want_labels.items():
            if labels.get(key) != value:
                problems.append(
                    f"{where}: label {key}={value} missing (has {key}={labels.get(key)!r});"
                    " Prometheus' selector would not pick it up"
                )
    if is_dashboard(doc):
        if doc["metadata"]["labels"][DASHBOARD_LABEL] != "1":
            problems.append(f"{where}: label {DASHBOARD_LABEL} must be \"1\" (the sidecar's default)")
        data = doc.get("data") or {}
        if list(data) != ["kiln.json"]:
            problems.append(f"{where}: data must hold kiln.json alone, has {sorted(data)}")
        elif json.loads(data["kiln.json"]) != json.loads(DASHBOARD.read_text()):
            problems.append(f"{where}: kiln.json differs from {DASHBOARD.relative_to(ROOT)}")
    return problems


WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")


def scrape_problems(docs):
    """PodMonitors that would find no pod, or no port, among the workloads
    in `docs` (none when `docs` holds no workload)."""
    workloads = [d for d in docs if d.get("kind") in WORKLOADS]
    if not workloads:
        return []
    problems = []
    for monitor in (d for d in docs if d.get("kind") == "PodMonitor"):
        name = monitor["metadata"]["name"]
        spec = monitor.get("spec") or {}
        where = spec.get("namespaceSelector") or {}
        namespaces = None if where.get("any") else (
            where.get("matchNames") or [monitor["metadata"].get("namespace")]
        )
        want = ((spec.get("selector") or {}).get("matchLabels") or {}).items()
        matched = [
            w
            for w in workloads
            if (namespaces is None or w["metadata"].get("namespace") in namespaces)
            and want <= (w["spec"]["template"]["metadata"].get("labels") or {}).items()
        ]
        if not matched:
            problems.append(
                f"PodMonitor {name}: selects no pod of the workloads given"
                f" (labels {dict(want)} in namespaces {namespaces})"
            )
        for w in matched:
            ports = {
                port.get("name")
                for c in w["spec"]["template"]["spec"].get("containers", [])
                for port in c.get("ports") or []
            }
            for endpoint in spec.get("podMetricsEndpoints") or []:
                if endpoint.get("port") not in ports:
                    problems.append(
                        f"PodMonitor {name}: port {endpoint.get('port')!r} is no container port of"
                        f" {w['kind']} {w['metadata']['name']} (it has {sorted(ports)})"
                    )
    return problems


def check(files, want_labels, rules_text, committed_text, validator):
    """Every problem of the inputs; `files` maps a name to its documents."""
    problems = drift_problems(rules_text, committed_text)
    problems += scrape_problems([d for docs in files.values() for d in docs])
    kinds = set()
    for where, docs in files.items():
        for doc in docs:
            kinds.add(doc.get("kind"))
            if is_dashboard(doc):
                kinds.add("dashboard")
            problems += document_problems(where, doc, validator, want_labels)
    if want_labels:
        for kind in ("PrometheusRule", "PodMonitor", "dashboard"):
            if kind not in kinds:
                problems.append(f"{', '.join(files)}: no {kind} found")
    return problems


def read(paths):
    import yaml

    return {
        str(p): [d for d in yaml.safe_load_all(pathlib.Path(p).read_text()) if isinstance(d, dict)]
        for p in paths
    }


def self_test(files, want_labels, rules_text, committed_text, validator):
    """Each break must produce at least one problem; the unbroken input none."""

    def first(kind):
        for docs in files.values():
            for doc in docs:
                if doc.get("kind") == kind:
                    return doc
        return None

    def broken(kind, change, only=lambda doc: True):
        changed = copy.deepcopy(files)
        for docs in changed.values():
            for doc in docs:
                if doc.get("kind") == kind and only(doc):
                    change(doc)
                    return changed
        raise SystemExit(f"self-test: no {kind} in the inputs to break")

    def rule(doc):
        return doc["spec"]["groups"][0]["rules"][0]

    def endpoint(doc):
        return doc["spec"]["podMetricsEndpoints"][0]

    breaks = {
        "the PrometheusRule edited by hand": dict(
            committed_text=committed_text.replace("for: 5m", "for: 6m", 1)
        ),
        "rules.yaml edited without regenerating": dict(
            rules_text=rules_text.replace("severity: warning", "severity: page", 1)
        ),
        "a rule's `for` not a duration": dict(
            files=broken("PrometheusRule", lambda d: rule(d).update({"for": "5 minutes"}))
        ),
        "a rule with a misspelt field": dict(
            files=broken("PrometheusRule", lambda d: rule(d).update({"annotation": {"a": "b"}}))
        ),
        "a rule without expr": dict(files=broken("PrometheusRule", lambda d: rule(d).pop("expr"))),
        "a group without name": dict(
            files=broken("PrometheusRule", lambda d: d["spec"]["groups"][0].pop("name"))
        ),
        "a numeric label value": dict(
            files=broken("PrometheusRule", lambda d: rule(d)["labels"].update({"tier": 1}))
        ),
        "a PodMonitor port given as a number": dict(
            files=broken("PodMonitor", lambda d: endpoint(d).update({"port": 9090}))
        ),
        "a PodMonitor with a misspelt field": dict(
            files=broken(
                "PodMonitor",
                lambda d: d["spec"].update({"podMetricsEndpoint": d["spec"]["podMetricsEndpoints"]}),
            )
        ),
        "a PodMonitor without a selector": dict(
            files=broken("PodMonitor", lambda d: d["spec"].pop("selector"))
        ),
    }
    if any(is_dashboard(d) for docs in files.values() for d in docs):
        breaks["a dashboard that differs from kiln.json"] = dict(
            files=broken(
                "ConfigMap",
                lambda d: d["data"].update(
                    {"kiln.json": d["data"]["kiln.json"].replace('"Kiln"', '"Kiln (edited)"', 1)}
                ),
                only=is_dashboard,
            )
        )
    if first("Deployment") is not None:
        breaks["a PodMonitor port the pods do not have"] = dict(
            files=broken("PodMonitor", lambda d: endpoint(d).update({"port": "http"}))
        )
        breaks["a PodMonitor moved away without a namespaceSelector"] = dict(
            files=broken(
                "PodMonitor",
                lambda d: (d["spec"].pop("namespaceSelector"), d["metadata"].update({"namespace": "monitoring"})),
            )
        )
        breaks["a PodMonitor selecting other pods"] = dict(
            files=broken(
                "PodMonitor",
                lambda d: d["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "kiln"}),
            )
        )
    if want_labels:
        key = next(iter(want_labels))
        breaks[f"a PrometheusRule without {key}"] = dict(
            files=broken("PrometheusRule", lambda d: d["metadata"]["labels"].pop(key))
        )
        breaks[f"a PodMonitor with another {key}"] = dict(
            files=broken("PodMonitor", lambda d: d["metadata"]["labels"].update({key: "other"}))
        )
    base = dict(files=files, rules_text=rules_text, committed_text=committed_text)

    def run(change):
        args = {**base, **change}
        return lambda: check(
            args["files"], want_labels, args["rules_text"], args["committed_text"], validator
        )

    return selftest.verdict(
        "monitoring", run({})(), {name: run(change) for name, change in breaks.items()}
    )


# Grafana's variables in the queries, and a value each that PromQL accepts.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "5m",
    "$__range": "5m",
    "$job": ".*",
}


def dashboard_rules(breaking):
    """The dashboard's queries as a Prometheus rule file (text)."""
    import yaml

    rules = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                expr = target.get("expr", "")
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                if "$" in expr:
                    raise SystemExit(
                        f"{DASHBOARD.relative_to(ROOT)}: panel {panel.get('title')!r} uses a"
                        f" variable this check does not know: {expr}"
                    )
                rules.append(
                    {"record": f"kiln:dashboard:panel{panel['id']}_{target.get('refId', 'A')}", "expr": expr}
                )
            walk(panel.get("panels", []))

    walk(json.loads(DASHBOARD.read_text())["panels"])
    if not rules:
        raise SystemExit(f"{DASHBOARD.relative_to(ROOT)}: no queries found")
    if breaking:
        rules[0]["expr"] += ")"
    return yaml.safe_dump({"groups": [{"name": "kiln-dashboard", "rules": rules}]}, sort_keys=False)


def main(argv):
    if argv[:1] == ["--dashboard-rules"]:
        pathlib.Path(argv[1]).write_text(dashboard_rules("--break" in argv[2:]))
        return 0
    if argv == ["--write"]:
        PROMETHEUS_RULE.write_text(generate(RULES.read_text()))
        print(f"wrote {PROMETHEUS_RULE.relative_to(ROOT)}")
        return 0
    testing = "--self-test" in argv
    argv = [a for a in argv if a != "--self-test"]
    want_labels = {}
    if argv[:1] == ["--labels"]:
        want_labels = dict(pair.split("=", 1) for pair in argv[1].split(","))
        argv = argv[2:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    files = read(argv)
    rules_text, committed_text = RULES.read_text(), PROMETHEUS_RULE.read_text()
    validator = CrdValidator()
    if testing:
        return self_test(files, want_labels, rules_text, committed_text, validator)
    problems = check(files, want_labels, rules_text, committed_text, validator)
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        counted = sum(1 for docs in files.values() for d in docs if d.get("kind") in CRD_KINDS)
        labels = f", labelled {want_labels}" if want_labels else ""
        print(f"monitoring: {counted} PrometheusRule/PodMonitor objects valid{labels}; prometheusrule.yaml matches rules.yaml")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
