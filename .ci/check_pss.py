#!/usr/bin/env python3
"""Checks pods against the Pod Security Standards.

Usage: check_pss.py PLAN.yaml...
       check_pss.py --self-test PLAN.yaml...

Every Pod in the files (multi-document YAML, as `kiln plan` prints) must meet
every control of the `baseline` profile
(https://kubernetes.io/docs/concepts/security/pod-security-standards/):
HostProcess, host namespaces, privileged containers, capabilities beyond the
baseline list, hostPath volumes, host ports, AppArmor, SELinux, /proc mount
type, seccomp (not Unconfined) and sysctls (the safe set). A breach fails the
check. The `restricted` controls are reported, not enforced: Kaniko runs as
root and cannot meet some of them (docs/security.md, "What Kaniko cannot meet"); a breach of a
restricted rule Kiln has not accepted (EXPECTED_RESTRICTED) fails too, so that
a new one is a decision, not an accident.

--self-test breaks every pod once per baseline control (a hostNetwork, a
privileged container, an added SYS_ADMIN, a hostPath volume, ...) and fails
unless the check catches each: a check that cannot fail is no check.
"""

import copy
import sys

import yaml

# Capabilities a baseline pod may add: the container runtimes' defaults.
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}
# The safe sysctls of the baseline profile (the kubelet's safe set). Newer
# Kubernetes releases add to it; a name missing here fails, never passes.
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
APPARMOR_TYPES = {"RuntimeDefault", "Localhost"}
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
    "persistentVolumeClaim", "projected", "secret",
}
# The restricted rules the Kaniko container breaks, knowingly (see the
# module docs); any other restricted breach fails.
EXPECTED_RESTRICTED = {
    ("kaniko", "allowPrivilegeEscalation"),
    ("kaniko", "runAsNonRoot"),
    ("kaniko", "capabilities.drop"),
}


def containers(spec):
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(kind) or []:
            yield c


def sc_of(obj):
    return obj.get("securityContext") or {}


def baseline(pod):
    """Every baseline breach of one pod, as `field: why`."""
    spec = pod.get("spec") or {}
    psc = sc_of(spec)
    bad = []
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        bad.append("spec.securityContext.windowsOptions.hostProcess: HostProcess")
    for f in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(f):
            bad.append(f"spec.{f}: host namespace")
    for v in spec.get("volumes") or []:
        if "hostPath" in v:
            bad.append(f"spec.volumes[{v.get('name')}].hostPath: hostPath volume")
    for s in psc.get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            bad.append(f"spec.securityContext.sysctls: {s.get('name')} is not a safe sysctl")
    for key, value in ((pod.get("metadata") or {}).get("annotations") or {}).items():
        if key.startswith(APPARMOR_ANNOTATION) and value != "runtime/default" \
                and not value.startswith("localhost/"):
            bad.append(f"metadata.annotations[{key}]: AppArmor {value}")
    bad += [f"spec.securityContext.{b}" for b in context_breaches(psc)]
    for c in containers(spec):
        where = f"container {c.get('name')}"
        sc = sc_of(c)
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            bad.append(f"{where}: HostProcess")
        if sc.get("privileged"):
            bad.append(f"{where}: privileged")
        added = set((sc.get("capabilities") or {}).get("add") or []) - BASELINE_CAPABILITIES
        if added:
            bad.append(f"{where}: capabilities beyond the baseline: {sorted(added)}")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                bad.append(f"{where}: hostPort {p['hostPort']}")
        if sc.get("procMount", "Default") != "Default":
            bad.append(f"{where}: procMount {sc['procMount']}")
        bad += [f"{where}: {b}" for b in context_breaches(sc)]
    return bad


def context_breaches(sc):
    """The baseline breaches a pod or container security context can hold."""
    bad = []
    seccomp = (sc.get("seccompProfile") or {}).get("type")
    if seccomp == "Unconfined":
        bad.append("seccompProfile: Unconfined")
    apparmor = (sc.get("appArmorProfile") or {}).get("type")
    if apparmor is not None and apparmor not in APPARMOR_TYPES:
        bad.append(f"appArmorProfile: {apparmor}")
    se = sc.get("seLinuxOptions") or {}
    if se.get("type", "") not in SELINUX_TYPES:
        bad.append(f"seLinuxOptions.type: {se['type']}")
    for f in ("user", "role"):
        if se.get(f):
            bad.append(f"seLinuxOptions.{f}: set")
    return bad


def restricted(pod):
    """The restricted breaches of one pod, as `(container or "pod", rule)`."""
    spec = pod.get("spec") or {}
    psc = sc_of(spec)
    out = []
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(("pod", f"volume type {sorted(kinds)}"))
    for c in containers(spec):
        name, sc = c.get("name"), sc_of(c)
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append((name, "allowPrivilegeEscalation"))
        if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            out.append((name, "runAsNonRoot"))
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            out.append((name, "runAsUser"))
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append((name, "capabilities.drop"))
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append((name, "capabilities.add"))
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append((name, "seccompProfile"))
    return out


def pods_of(files):
    for path, docs in files.items():
        for d in docs:
            if d.get("kind") == "Pod":
                yield path, d


def check(files):
    """Baseline breaches and unexpected restricted breaches; the report."""
    problems, report = [], []
    for path, pod in pods_of(files):
        name = f"{path}: pod {pod['metadata'].get('name')}"
        problems += [f"{name}: baseline: {b}" for b in baseline(pod)]
        for container, rule in restricted(pod):
            report.append(f"{name}: restricted: {container}: {rule}")
            if (container, rule) not in EXPECTED_RESTRICTED:
                problems.append(f"{name}: restricted: {container}: {rule} (not an accepted exception)")
    return problems, report


def mutations(files):
    """One broken copy of the files per pod and baseline control."""
    def container_sc(pod):
        c = pod["spec"]["containers"][0]
        return c.setdefault("securityContext", {})

    breaks = {
        "hostNetwork": lambda p: p["spec"].update(hostNetwork=True),
        "hostPID": lambda p: p["spec"].update(hostPID=True),
        "hostIPC": lambda p: p["spec"].update(hostIPC=True),
        "hostProcess": lambda p: container_sc(p).update(windowsOptions={"hostProcess": True}),
        "privileged": lambda p: container_sc(p).update(privileged=True),
        "SYS_ADMIN": lambda p: container_sc(p).update(capabilities={"add": ["SYS_ADMIN"]}),
        "hostPath": lambda p: p["spec"].setdefault("volumes", []).append(
            {"name": "host", "hostPath": {"path": "/"}}),
        "hostPort": lambda p: p["spec"]["containers"][0].update(
            ports=[{"containerPort": 80, "hostPort": 80}]),
        "AppArmor": lambda p: container_sc(p).update(appArmorProfile={"type": "Unconfined"}),
        "AppArmor annotation": lambda p: p["metadata"].setdefault("annotations", {}).update(
            {APPARMOR_ANNOTATION + "kaniko": "unconfined"}),
        "SELinux type": lambda p: container_sc(p).update(seLinuxOptions={"type": "spc_t"}),
        "SELinux user": lambda p: p["spec"].setdefault("securityContext", {}).update(
            seLinuxOptions={"user": "system_u"}),
        "procMount": lambda p: container_sc(p).update(procMount="Unmasked"),
        "seccomp": lambda p: p["spec"].setdefault("securityContext", {}).update(
            seccompProfile={"type": "Unconfined"}),
        "sysctl": lambda p: p["spec"].setdefault("securityContext", {}).update(
            sysctls=[{"name": "kernel.msgmax", "value": "65536"}]),
    }
    for path, docs in files.items():
        for i, d in enumerate(docs):
            if d.get("kind") != "Pod":
                continue
            for what, brk in breaks.items():
                broken = copy.deepcopy(files)
                brk(broken[path][i])
                yield f"{path}: pod {d['metadata'].get('name')}: {what}", broken
            # A restricted rule broken by a container other than Kaniko's
            # (the context download runs as non-root) is no accepted one.
            for j, c in enumerate(d["spec"].get("initContainers") or []):
                broken = copy.deepcopy(files)
                sc = broken[path][i]["spec"]["initContainers"][j].setdefault("securityContext", {})
                sc["allowPrivilegeEscalation"] = True
                yield f"{path}: pod {d['metadata'].get('name')}: {c['name']} escalates", broken


def main(argv):
    self_test = argv[:1] == ["--self-test"]
    if self_test:
        argv = argv[1:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    files = {p: [d for d in yaml.safe_load_all(open(p)) if isinstance(d, dict)] for p in argv}
    problems, report = check(files)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        return 1
    pods = sum(1 for _ in pods_of(files))
    if pods == 0:
        print("pss: no pods in the files", file=sys.stderr)
        return 1
    if not self_test:
        # Reported, not enforced: the restricted rules Kaniko cannot meet.
        for line in sorted(set(r.split(": ", 2)[2] for r in report)):
            print(f"pss: accepted exception: {line}")
        print(f"pss: {pods} pods meet baseline")
        return 0
    missed = [d for d, broken in mutations(files) if not check(broken)[0]]
    count = sum(1 for _ in mutations(files))
    for d in missed:
        print(f"self-test: not caught: {d}", file=sys.stderr)
    if missed:
        return 1
    print(f"pss self-test: all {count} broken variants caught")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
