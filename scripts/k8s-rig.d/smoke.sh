#!/usr/bin/env bash
# The rig's smoke check (docs/kubernetes-rig.md): brings a rig up in a temporary directory,
# drives it with kubectl the way issue 13's contract tests will, and brings it down.
#   scripts/k8s-rig.d/smoke.sh [KUBECTL]   (default: the kubectl the rig built)
# Not for: testing Weft (it checks the rig alone). Prints "N passed, N failed".
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RIG=$HERE/../k8s-rig
BIN=$("$RIG" bin)
KUBECTL=${1:-$BIN/kubectl}
DIR=$(mktemp -d /tmp/k8s-rig-smoke.XXXXXX)
# WEFT_K8S_RIG_SMOKE_KEEP=1 keeps the directory (logs) after a failure
trap '"$RIG" down "$DIR" >/dev/null 2>&1; [ "$failed" -gt 0 ] && [ -n "${WEFT_K8S_RIG_SMOKE_KEEP:-}" ] && echo "kept $DIR" || rm -rf "$DIR"' EXIT
passed=0 failed=0
check() { # WHAT COMMAND...: pass when COMMAND succeeds
    local what=$1
    shift
    if "$@"; then passed=$((passed + 1)); echo "ok   $what"; else failed=$((failed + 1)); echo "FAIL $what"; fi
}
# bounded wait for a condition (60 s), never a fixed sleep
eventually() { local i; for i in $(seq 1 120); do "$@" && return 0; sleep 0.5; done; return 1; }

"$RIG" up "$DIR" --ttl 600 >/dev/null || exit 1
K() { "$KUBECTL" --kubeconfig "$DIR/kubeconfig" "$@"; }
count() { K get "$@" -o name 2>/dev/null | grep -c .; }

check "get ns lists default and kube-system" eventually bash -c \
    "'$KUBECTL' --kubeconfig '$DIR/kubeconfig' get ns -o name | grep -q namespace/kube-system"
check "serviceaccount controller: default/default exists" eventually K get sa default -n default
cat >"$DIR/app.yaml" <<'YAML'
apiVersion: v1
kind: Node
metadata: {name: rig-node-1}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
      - {name: echo, image: example.invalid/echo:1, ports: [{name: http, containerPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
YAML
check "apply Node, Deployment and Service" K apply -f "$DIR/app.yaml"
check "deployment controller: a ReplicaSet" eventually test "$(count rs -l app=echo)" = 1
check "replicaset controller: 2 Pods, Pending" eventually test "$(count pods -l app=echo --field-selector status.phase=Pending)" = 2
check "endpointslice controller: a slice for the Service" eventually test "$(count endpointslices -l kubernetes.io/service-name=echo)" = 1
# The scheduler's and kubelet's parts, done by hand: bind each pod, give it an address (data
# only: nothing is created on the host's network) and a Ready condition.
i=0
for pod in $(K get pods -l app=echo -o jsonpath='{.items[*].metadata.name}'); do
    i=$((i + 1))
    printf 'apiVersion: v1\nkind: Binding\nmetadata: {name: %s, namespace: default}\ntarget: {apiVersion: v1, kind: Node, name: rig-node-1}\n' "$pod" |
        K create -f - >/dev/null
    K patch pod "$pod" --subresource=status --type=merge -p "{\"status\":{\"phase\":\"Running\",\"podIP\":\"10.244.0.$i\",\"podIPs\":[{\"ip\":\"10.244.0.$i\"}],\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\"}]}}" >/dev/null
done
ready() { test "$(K get endpointslices -l kubernetes.io/service-name=echo -o jsonpath='{.items[*].endpoints[?(@.conditions.ready==true)].addresses[0]}' | wc -w)" = 2; }
check "endpointslice controller: 2 ready endpoints after bind and status" eventually ready

K create sa weft-proxy -n default >/dev/null
token=$(K create token weft-proxy -n default --audience identity.weft.io --duration 1h)
check "TokenRequest: a token for default/weft-proxy" test -n "$token"
review() { # AUDIENCE: the TokenReview's status as JSON
    printf 'apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec:\n  token: %s\n  audiences: [%s]\n' "$token" "$1" |
        K create -f - -o jsonpath='{.status.authenticated} {.status.user.username}'
}
check "TokenReview: accepted for identity.weft.io" test "$(review identity.weft.io)" = "true system:serviceaccount:default:weft-proxy"
check "TokenReview: refused for another audience" test "$(review other.example)" = " "
K delete sa weft-proxy -n default >/dev/null
refused() { [ "$(review identity.weft.io)" = " " ]; }
check "TokenReview: refused once the service account is deleted" eventually refused

check "down stops every process" "$RIG" down "$DIR"
# no process whose command line names the rig directory (this script's own does not)
none_left() { local f; for f in /proc/[0-9]*/cmdline; do ! grep -qsF -- "$DIR" "$f" || return 1; done; }
check "nothing left running" none_left
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
