"""Helpers for .ci/chart-checks.sh; run with the tools venv's python (it has PyYAML).

  crd-schema CRD.yaml OUT.json          the CRD's openAPIV3Schema as a strict JSON Schema
  split DIR FILE...                     each HedgeGroup document of FILEs -> DIR/<name>.json,
                                        every other document -> DIR/others.yaml
  break IN.json OUT.json                a copy of a HedgeGroup with an unknown and a mistyped field
  policy RENDERED.yaml [--expect-annotation KIND/KEY=VALUE] [--expect-arg ARG]
         [--expect-rbac cluster|namespaced]...
                                        the security and RBAC rules the chart promises
"""

import copy
import json
import sys
from pathlib import Path

import yaml


def die(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def load_all(path):
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


# --- CRD schema -> JSON Schema ------------------------------------------------------------------


def to_json_schema(node):
    """Translates an OpenAPI v3 structural schema node into JSON Schema (draft 2020-12).

    * `nullable: true` (schemars emits it for Option) is not JSON Schema: explicit nulls are allowed
      by adding "null" to the type (or an anyOf branch when the node has no type).
    * `x-kubernetes-int-or-string` becomes integer-or-string.
    * Objects with `properties` and no `additionalProperties` / `x-kubernetes-preserve-unknown-fields`
      reject unknown fields, as kubectl's default strict field validation does.
    """
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties", "definitions", "$defs"):
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = to_json_schema(value) if isinstance(value, (dict, list)) else value
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_json_schema(sub) for sub in value]
        elif key == "nullable":
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = out.get("anyOf", []) + [{"type": "integer"}, {"type": "string"}]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if node.get("nullable"):
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
        elif isinstance(kind, list):
            if "null" not in kind:
                out["type"] = kind + ["null"]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def crd_schema(crd_path, out_path):
    crds = [d for d in load_all(crd_path) if d.get("kind") == "CustomResourceDefinition"]
    if len(crds) != 1:
        die(f"{crd_path}: expected one CustomResourceDefinition, found {len(crds)}")
    spec = crds[0]["spec"]
    versions = [v for v in spec["versions"] if v.get("storage")] or spec["versions"]
    version = versions[0]
    schema = to_json_schema(version["schema"]["openAPIV3Schema"])
    # The apiserver checks apiVersion and kind itself; pin them so a typo in an example is caught.
    properties = schema.setdefault("properties", {})
    properties["apiVersion"] = {"const": f"{spec['group']}/{version['name']}"}
    properties["kind"] = {"const": spec["names"]["kind"]}
    properties["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}},
    }
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"{spec['names']['kind']} {spec['group']}/{version['name']}"
    Path(out_path).write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{schema['title']}: schema written to {out_path}")


# --- examples -----------------------------------------------------------------------------------


def split(out_dir, files):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups, others = 0, []
    for path in files:
        for doc in load_all(path):
            if doc.get("kind") == "HedgeGroup":
                name = f"{Path(path).stem}-{doc.get('metadata', {}).get('name', groups)}.json"
                (out / name).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
                groups += 1
            else:
                others.append(doc)
    (out / "others.yaml").write_text(yaml.safe_dump_all(others, sort_keys=False), encoding="utf-8")
    print(f"{groups} HedgeGroup(s), {len(others)} other document(s)")
    if groups == 0:
        die("no HedgeGroup found in " + " ".join(files))


def break_example(in_path, out_path):
    doc = json.loads(Path(in_path).read_text(encoding="utf-8"))
    bad = copy.deepcopy(doc)
    bad["spec"]["noSuchField"] = True
    bad["spec"]["database"] = 42
    Path(out_path).write_text(json.dumps(bad, indent=2) + "\n", encoding="utf-8")


# --- policy on the rendered chart ---------------------------------------------------------------


def policy(rendered, expectations, args=(), rbac=None):
    docs = load_all(rendered)
    problems = []

    def need(ok, message):
        if not ok:
            problems.append(message)

    for doc in docs:
        kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
        where = f"{kind}/{name}"
        if kind == "Deployment":
            spec = doc["spec"]
            need(spec.get("replicas") == 1, f"{where}: replicas must be 1")
            need(spec.get("strategy", {}).get("type") == "Recreate", f"{where}: strategy must be Recreate")
            pod = spec["template"]["spec"]
            pod_sc = pod.get("securityContext", {})
            for c in pod.get("containers", []) + pod.get("initContainers", []):
                cw = f"{where} container {c['name']}"
                sc = c.get("securityContext", {})
                need(sc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation must be false")
                need(sc.get("readOnlyRootFilesystem") is True, f"{cw}: readOnlyRootFilesystem must be true")
                need(not sc.get("privileged"), f"{cw}: must not be privileged")
                caps = sc.get("capabilities", {})
                need("ALL" in caps.get("drop", []), f"{cw}: capabilities must drop ALL")
                need(not caps.get("add"), f"{cw}: must not add capabilities")
                need(
                    sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True,
                    f"{cw}: runAsNonRoot must be true",
                )
                need(sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0, f"{cw}: must not run as uid 0")
                seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
                need(seccomp.get("type") == "RuntimeDefault", f"{cw}: seccompProfile must be RuntimeDefault")
                resources = c.get("resources", {})
                need(resources.get("requests"), f"{cw}: resource requests must be set")
                need(resources.get("limits", {}).get("memory"), f"{cw}: a memory limit must be set")
                ports = {p.get("name"): p for p in c.get("ports", [])}
                need("http-metrics" in ports, f"{cw}: container port http-metrics missing")
                cargs = c.get("args", [])
                if "--metrics-addr" in cargs:
                    addr = cargs[cargs.index("--metrics-addr") + 1]
                    need(addr.startswith("[::]:"), f"{cw}: --metrics-addr {addr} is not the IPv6 wildcard")
                for arg in args:
                    need(arg in cargs, f"{cw}: argument {arg} missing from {cargs}")
                for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                    get = c.get(probe, {}).get("httpGet", {})
                    need(
                        get.get("path") == path and get.get("port") == "http-metrics",
                        f"{cw}: {probe} must GET {path} on http-metrics",
                    )
        elif kind in ("ClusterRole", "Role"):
            for rule in doc.get("rules", []):
                for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                    need("*" not in rule.get(field, []), f"{where}: wildcard in {field}: {rule}")
                for verb in ("escalate", "bind", "impersonate"):
                    need(verb not in rule.get("verbs", []), f"{where}: verb {verb} is not needed: {rule}")

    kinds_present = {d.get("kind") for d in docs}
    if rbac == "namespaced":
        need({"Role", "RoleBinding"} <= kinds_present, "a Role and RoleBinding are expected")
        need(not kinds_present & {"ClusterRole", "ClusterRoleBinding"}, "no cluster-wide RBAC is expected")
        for d in docs:
            if d.get("kind") in ("Role", "RoleBinding"):
                need(d.get("metadata", {}).get("namespace"), f"{d.get('kind')} without a namespace")
    elif rbac == "cluster":
        need({"ClusterRole", "ClusterRoleBinding"} <= kinds_present, "a ClusterRole and ClusterRoleBinding are expected")

    for expectation in expectations:
        target, _, pair = expectation.partition("/")
        key, _, value = pair.partition("=")
        found = [
            d for d in docs
            if d.get("kind") == target and d.get("metadata", {}).get("annotations", {}).get(key) == value
        ]
        need(found, f"no {target} with annotation {key}={value}")

    kinds = sorted({f"{d.get('kind')}" for d in docs})
    if problems:
        for problem in problems:
            print(f"policy: {problem}")
        sys.exit(1)
    print(f"policy ok for {len(docs)} documents ({', '.join(kinds)})")


def main(argv):
    if len(argv) >= 3 and argv[0] == "crd-schema":
        crd_schema(argv[1], argv[2])
    elif len(argv) >= 3 and argv[0] == "split":
        split(argv[1], argv[2:])
    elif len(argv) == 3 and argv[0] == "break":
        break_example(argv[1], argv[2])
    elif len(argv) >= 2 and argv[0] == "policy":
        expectations, args, rbac = [], [], None
        rest = argv[2:]
        while rest:
            if len(rest) < 2:
                die(f"unexpected argument {rest[0]}")
            if rest[0] == "--expect-annotation":
                expectations.append(rest[1])
            elif rest[0] == "--expect-arg":
                args.append(rest[1])
            elif rest[0] == "--expect-rbac" and rest[1] in ("cluster", "namespaced"):
                rbac = rest[1]
            else:
                die(f"unexpected argument {rest[0]}")
            rest = rest[2:]
        policy(argv[1], expectations, args, rbac)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
