#!/usr/bin/env bash
# End-to-end test on a throw-away kind or k3d cluster; needs docker, kubectl, helm and kind or k3d,
# and network access to pull the base images. Not part of .ci/run (no cluster there).
#
#   tests/cluster/e2e.sh
#
# It builds the operator and demo images (docker buildx --load), loads them into the cluster, runs
# the Cloud Spanner emulator in the cluster (instance e2e, database hedge), applies the CRD
# server-side and installs the chart (with a database allowlist), applies the example HedgeGroup
# and member Deployment (pointed at the emulator), waits for the group's Ready condition, checks
# status.leader, the finalizer and the owned objects, re-applies the member Deployment with
# `kubectl apply` (a change of the owner's) and expects exactly one rollout with the HEDGE_*
# variables still there, then deletes the group and checks that the finalizer ran: the group is
# gone, its tables are dropped (deletionPolicy DropTables, confirmed by annotation) and its owned
# objects are garbage-collected.
#
# Environment:
#   E2E_CLUSTER_TOOL   kind or k3d (default: whichever is installed, kind first)
#   E2E_CLUSTER_NAME   cluster name (default hedge-e2e); an existing cluster of that name is reused
#   E2E_KEEP_CLUSTER   1: keep a cluster this script created (default: delete it at the end)
#   E2E_SKIP_BUILD     1: use already built images hedge-operator:e2e and hedge-demo:e2e
#   E2E_TIMEOUT        how long to wait for each step, in seconds (default 300)
set -euo pipefail
# Command substitutions fail the script too (a failed read must never look like an empty answer).
shopt -s inherit_errexit

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cluster=${E2E_CLUSTER_NAME:-hedge-e2e}
timeout_s=${E2E_TIMEOUT:-300}
timeout=${timeout_s}s
operator_ns=hedge-system
ns=hedge-e2e
release=hedge-operator
group=demo
operator_image=hedge-operator:e2e
demo_image=hedge-demo:e2e
emulator_image=gcr.io/cloud-spanner-emulator/emulator:1.5.28
database=projects/e2e/instances/e2e/databases/hedge
emulator_host=spanner-emulator.$ns.svc.cluster.local:9010
created_cluster=0
work=$(mktemp -d "${TMPDIR:-/tmp}/hedge-e2e.XXXXXX")

log() { printf '\n=== %s\n' "$*"; }
die() {
    printf 'e2e: FAIL: %s\n' "$*" >&2
    exit 1
}
need() { command -v "$1" >/dev/null || die "$1 is not installed"; }

# --- cluster ---------------------------------------------------------------------------------------

pick_cluster_tool() {
    if [[ -n ${E2E_CLUSTER_TOOL:-} ]]; then
        [[ $E2E_CLUSTER_TOOL == kind || $E2E_CLUSTER_TOOL == k3d ]] ||
            die "E2E_CLUSTER_TOOL must be kind or k3d, not $E2E_CLUSTER_TOOL"
        echo "$E2E_CLUSTER_TOOL"
    elif command -v kind >/dev/null; then
        echo kind
    elif command -v k3d >/dev/null; then
        echo k3d
    else
        die "neither kind nor k3d is installed"
    fi
}

cluster_exists() {
    case $tool in
    kind) kind get clusters 2>/dev/null | grep -qx "$cluster" ;;
    k3d) k3d cluster get "$cluster" >/dev/null 2>&1 ;;
    esac
}

create_cluster() {
    if cluster_exists; then
        log "reusing $tool cluster $cluster"
    else
        log "creating $tool cluster $cluster"
        case $tool in
        kind) kind create cluster --name "$cluster" --wait "$timeout" ;;
        k3d) k3d cluster create "$cluster" --wait --timeout "$timeout" ;;
        esac
        created_cluster=1
    fi
    case $tool in
    kind) kubectl config use-context "kind-$cluster" ;;
    k3d) kubectl config use-context "k3d-$cluster" ;;
    esac
}

load_image() {
    case $tool in
    kind) kind load docker-image "$1" --name "$cluster" ;;
    k3d) k3d image import "$1" --cluster "$cluster" ;;
    esac
}

diagnostics() {
    log "diagnostics"
    kubectl get hedgegroups -A -o yaml || true
    kubectl get all,configmaps,secrets,networkpolicies -n "$ns" || true
    kubectl get events -n "$ns" --sort-by=.lastTimestamp || true
    kubectl -n "$operator_ns" describe pods || true
    kubectl -n "$operator_ns" logs "deployment/$release" --tail=200 || true
    kubectl -n "$ns" logs deployment/hedge-demo --tail=50 --all-containers || true
}

cleanup() {
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        diagnostics
    fi
    rm -rf "$work"
    if [[ $created_cluster -eq 1 && ${E2E_KEEP_CLUSTER:-0} != 1 ]]; then
        log "deleting $tool cluster $cluster"
        case $tool in
        kind) kind delete cluster --name "$cluster" || true ;;
        k3d) k3d cluster delete "$cluster" || true ;;
        esac
    fi
    if [[ $rc -eq 0 ]]; then
        printf '\ne2e: PASS\n'
    fi
    exit "$rc"
}

# --- the Spanner emulator ----------------------------------------------------------------------------

# emulator_rest METHOD PATH [BODY]: the emulator's REST gateway through the API server's service proxy.
emulator_rest() {
    local method=$1 path=$2 proxy="/api/v1/namespaces/$ns/services/spanner-emulator:rest/proxy"
    case $method in
    GET) kubectl get --raw "$proxy$path" ;;
    POST)
        printf '%s' "$3" >"$work/body.json"
        kubectl create --raw "$proxy$path" -f "$work/body.json"
        ;;
    esac
}

start_emulator() {
    log "starting the Spanner emulator ($emulator_image)"
    kubectl apply -n "$ns" -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: spanner-emulator
spec:
  replicas: 1
  selector:
    matchLabels: {app: spanner-emulator}
  template:
    metadata:
      labels: {app: spanner-emulator}
    spec:
      containers:
        - name: emulator
          image: $emulator_image
          ports:
            - {name: grpc, containerPort: 9010}
            - {name: rest, containerPort: 9020}
          readinessProbe:
            tcpSocket: {port: rest}
            periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata:
  name: spanner-emulator
spec:
  selector: {app: spanner-emulator}
  ports:
    - {name: grpc, port: 9010, targetPort: grpc}
    - {name: rest, port: 9020, targetPort: rest}
EOF
    kubectl -n "$ns" rollout status deployment/spanner-emulator --timeout "$timeout"
    local deadline=$((SECONDS + timeout_s))
    until emulator_rest GET /v1/projects/e2e/instanceConfigs >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "the emulator's REST gateway does not answer"
        sleep 2
    done
    if ! emulator_rest GET /v1/projects/e2e/instances/e2e >/dev/null 2>&1; then
        emulator_rest POST /v1/projects/e2e/instances \
            '{"instanceId":"e2e","instance":{"config":"emulator-config","displayName":"e2e","nodeCount":1}}' >/dev/null
    fi
    if ! emulator_rest GET "/v1/$database" >/dev/null 2>&1; then
        emulator_rest POST /v1/projects/e2e/instances/e2e/databases '{"createStatement":"CREATE DATABASE hedge"}' >/dev/null
    fi
    emulator_rest GET "/v1/$database" >/dev/null || die "database $database was not created"
}

# tables: the names of the tables in the database, one per line; fails when the DDL can't be read.
tables() {
    local ddl
    ddl=$(emulator_rest GET "/v1/$database/ddl") || return 1
    grep -o 'CREATE TABLE [`A-Za-z0-9_]*' <<<"$ddl" | sed 's/CREATE TABLE //; s/`//g' || true
}

# --- steps -------------------------------------------------------------------------------------------

build_images() {
    if [[ ${E2E_SKIP_BUILD:-0} == 1 ]]; then
        log "using the existing images $operator_image and $demo_image"
    else
        log "building $operator_image and $demo_image"
        # --load: buildx builds into its own store otherwise, and `kind load` would not find them.
        docker buildx build --load -f "$root/docker/operator.Dockerfile" -t "$operator_image" "$root"
        docker buildx build --load -f "$root/docker/demo.Dockerfile" -t "$demo_image" "$root"
    fi
    load_image "$operator_image"
    load_image "$demo_image"
}

install_chart() {
    # The CRD first, server-side (what an upgrade must do too: Helm never upgrades a CRD);
    # --force-conflicts takes over fields an earlier client-side or Helm install wrote.
    log "applying the CRD server-side"
    kubectl apply --server-side --force-conflicts -f "$root/crds/hedgegroup.yaml"
    kubectl wait --for condition=Established crd/hedgegroups.hedge.dev --timeout "$timeout"
    log "installing the chart"
    helm upgrade --install "$release" "$root/charts/hedge-operator" --skip-crds \
        --namespace "$operator_ns" --create-namespace \
        --set-json "operator.allowedDatabases={\"$ns\":[\"projects/e2e/instances/e2e\"]}" \
        --set image.repository="${operator_image%:*}" --set image.tag="${operator_image#*:}" \
        --set image.pullPolicy=Never --set operator.logFormat=text \
        --set 'operator.logLevel=info\,hedge_operator=debug' \
        --wait --timeout "$timeout"
}

# The examples, changed only where the cluster differs: the emulator database and endpoint
# (spec.spanner.emulatorHost, nothing in the operator's or the members' environment), the local
# demo image, and DropTables so that the finalizer's clean-up can be observed.
apply_examples() {
    log "applying the example HedgeGroup and member Deployment"
    cp "$root/examples/hedgegroup.yaml" "$root/examples/member-deployment.yaml" "$work/"
    cat >"$work/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: $ns
resources:
  - hedgegroup.yaml
  - member-deployment.yaml
images:
  - name: ghcr.io/hedge-rs/hedge-demo
    newName: ${demo_image%:*}
    newTag: ${demo_image#*:}
patches:
  - target: {kind: HedgeGroup, name: $group}
    patch: |-
      - {op: replace, path: /spec/database, value: $database}
      - {op: replace, path: /spec/deletionPolicy, value: DropTables}
      - {op: add, path: /metadata/annotations, value: {hedge.dev/confirm-drop-tables: "true"}}
      # One endpoint for the operator and the members: the operator uses it for this group and
      # writes it into the members' ConfigMap.
      - {op: add, path: /spec/spanner, value: {emulatorHost: "$emulator_host"}}
  - target: {kind: Deployment, name: hedge-demo}
    patch: |-
      - {op: replace, path: /spec/template/spec/containers/0/imagePullPolicy, value: Never}
EOF
    kubectl apply -k "$work"
}

# field PATH: a jsonpath field of the HedgeGroup.
field() { kubectl -n "$ns" get "hedgegroup/$group" -o jsonpath="{$1}"; }

check_ready() {
    log "waiting for HedgeGroup $group to be Ready"
    kubectl -n "$ns" wait "hedgegroup/$group" --for condition=Ready --timeout "$timeout"
    # The operator wires the group into the Deployment's pod template: wait for that rollout.
    kubectl -n "$ns" rollout status deployment/hedge-demo --timeout "$timeout"

    # After the rollout the leader must be one of the current pods (an old pod may have led before).
    local leader pods deadline=$((SECONDS + timeout_s))
    while :; do
        leader=$(field .status.leader)
        pods=$(kubectl -n "$ns" get pods -l app.kubernetes.io/name=hedge-demo \
            --field-selector status.phase=Running -o jsonpath='{.items[*].metadata.name}')
        [[ -n $leader && " $pods " == *" $leader "* ]] && break
        ((SECONDS < deadline)) || die "status.leader='$leader' is not one of the running members ($pods)"
        sleep 2
    done
    kubectl -n "$ns" get "hedgegroup/$group"

    local token members finalizers ddl_tables
    token=$(field .status.token)
    members=$(field .status.members)
    finalizers=$(field .metadata.finalizers)
    [[ $token =~ ^[1-9][0-9]*$ ]] || die "status.token='$token' is not a positive fencing token"
    [[ $members =~ ^[1-9][0-9]*$ ]] || die "status.members='$members' is not a positive count"
    [[ $finalizers == *hedge.dev/cleanup* ]] || die "finalizer hedge.dev/cleanup missing: $finalizers"
    echo "leader $leader, token $token, members $members, finalizers $finalizers"

    ddl_tables=$(tables)
    grep -qx hedge_locks <<<"$ddl_tables" || die "table hedge_locks was not created: $ddl_tables"
    echo "tables: $(tr '\n' ' ' <<<"$ddl_tables")"
}

# revision: the member Deployment's rollout revision.
revision() {
    kubectl -n "$ns" get deployment/hedge-demo \
        -o jsonpath='{.metadata.annotations.deployment\.kubernetes\.io/revision}'
}

# hedge_vars: how many HEDGE_* variables the member container has.
hedge_vars() {
    local names
    names=$(kubectl -n "$ns" get deployment/hedge-demo \
        -o jsonpath='{range .spec.template.spec.containers[0].env[*]}{.name}{"\n"}{end}')
    grep -c '^HEDGE_' <<<"$names" || true
}

# The owner of the Deployment applies its manifest again with a change of its own (what kubectl,
# Helm, Argo CD or Flux do): exactly one rollout, the operator's variables stay, and the operator
# does not roll the pods again.
check_reapply() {
    log "re-applying the member Deployment with kubectl apply (RUST_LOG=debug)"
    local before after vars
    before=$(revision)
    vars=$(hedge_vars)
    ((vars >= 13)) || die "expected the HEDGE_* variables in the pod template, found $vars"
    sed -i 's/value: info/value: debug/' "$work/member-deployment.yaml"
    kubectl apply -k "$work"
    kubectl -n "$ns" rollout status deployment/hedge-demo --timeout "$timeout"
    # Time for the operator to react to the new generation (wrongly, by rolling again).
    sleep 30
    after=$(revision)
    [[ $after == $((before + 1)) ]] ||
        die "expected exactly one rollout (revision $before -> $((before + 1))), got revision $after"
    [[ $(hedge_vars) == "$vars" ]] || die "the HEDGE_* variables changed: $vars -> $(hedge_vars)"
    kubectl -n "$ns" wait "hedgegroup/$group" --for condition=Ready --timeout "$timeout"
    echo "one rollout (revision $after), $vars HEDGE_* variables kept"
}

# owned UID: the ConfigMaps and Secrets in the namespace that UID owns, as kind/name lines.
owned() {
    local listing
    listing=$(kubectl -n "$ns" get configmaps,secrets -o jsonpath='{range .items[*]}{.kind}/{.metadata.name}{" "}{.metadata.ownerReferences[*].uid}{"\n"}{end}') || return 1
    awk -v uid="$1" '{ for (i = 2; i <= NF; i++) if ($i == uid) { print $1; next } }' <<<"$listing"
}

check_delete() {
    local uid owned_now ddl_tables deadline
    uid=$(field .metadata.uid)
    owned_now=$(owned "$uid")
    [[ -n $owned_now ]] || die "the HedgeGroup owns no ConfigMap or Secret"
    echo "owned by the group: $(tr '\n' ' ' <<<"$owned_now")"

    log "deleting HedgeGroup $group (deletionPolicy DropTables)"
    # --wait returns once the object is gone, that is once the operator removed its finalizer.
    kubectl -n "$ns" delete "hedgegroup/$group" --wait --timeout "$timeout"
    if kubectl -n "$ns" get "hedgegroup/$group" >/dev/null 2>&1; then
        die "HedgeGroup $group still exists after delete"
    fi
    ddl_tables=$(tables)
    if grep -qx hedge_locks <<<"$ddl_tables"; then
        die "deletionPolicy DropTables: the tables are still there: $ddl_tables"
    fi

    deadline=$((SECONDS + timeout_s))
    while :; do
        owned_now=$(owned "$uid")
        [[ -z $owned_now ]] && break
        ((SECONDS < deadline)) || die "owned objects not garbage-collected: $owned_now"
        sleep 2
    done
    echo "finalizer ran: group deleted, tables dropped, owned objects collected"
}

uninstall() {
    log "uninstalling"
    # HedgeGroups go before the operator (their finalizers need it); none are left here.
    kubectl delete hedgegroups --all -n "$ns" --wait --timeout "$timeout"
    kubectl delete namespace "$ns" --wait --timeout "$timeout"
    helm uninstall "$release" --namespace "$operator_ns" --wait --timeout "$timeout"
}

main() {
    for command in docker kubectl helm; do need "$command"; done
    tool=$(pick_cluster_tool)
    need "$tool"
    trap cleanup EXIT
    create_cluster
    build_images
    kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
    start_emulator
    install_chart
    apply_examples
    check_ready
    check_reapply
    check_delete
    uninstall
}

main "$@"
