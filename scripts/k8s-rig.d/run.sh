# Sourced by scripts/k8s-rig: `up`, `down`, `status`. Runs the built binaries on loopback.
# Not for: building them (build.sh).
#
# Layout of a rig directory: pki/ (CA, serving and client certificates, service-account key
# pair), etcd/ (data), logs/, run/ (pid files, ports), kubeconfig (cluster-admin),
# kube-controller-manager.kubeconfig, and the marker $RIG_MARK.

# The controllers the contract tests need: workloads and their pods, EndpointSlices (and the
# deprecated Endpoints), service accounts and their tokens, namespace deletion, owner
# reference garbage collection, the kube-root-ca.crt ConfigMap that projected tokens mount.
KCM_CONTROLLERS=deployment-controller,replicaset-controller,statefulset-controller,daemonset-controller
KCM_CONTROLLERS=$KCM_CONTROLLERS,job-controller,cronjob-controller,ttl-after-finished-controller
KCM_CONTROLLERS=$KCM_CONTROLLERS,endpointslice-controller,endpointslice-mirroring-controller,endpoints-controller
KCM_CONTROLLERS=$KCM_CONTROLLERS,serviceaccount-controller,serviceaccount-token-controller
KCM_CONTROLLERS=$KCM_CONTROLLERS,namespace-controller,garbage-collector-controller
KCM_CONTROLLERS=$KCM_CONTROLLERS,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller
KCM_CONTROLLERS=$KCM_CONTROLLERS,pod-garbage-collector-controller,node-lifecycle-controller

PROCS="etcd kube-apiserver kube-controller-manager kube-scheduler"

# N free TCP ports on 127.0.0.1, all held open at once so that they differ.
rig_free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

rig_leaf_cert() { # NAME SUBJECT EXTENSIONS
    local pki=$1 name=$2 subj=$3 ext=$4
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$pki/$name.key" -out "$pki/$name.csr" -subj "$subj" 2>/dev/null
    printf '%s\n' "$ext" >"$pki/$name.ext"
    openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
        -CAcreateserial -days 365 -sha256 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
    rm -f "$pki/$name.csr" "$pki/$name.ext"
}

rig_pki() {
    local pki=$1
    mkdir -p "$pki"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
        -keyout "$pki/ca.key" -out "$pki/ca.crt" -subj "/CN=weft-k8s-rig-ca" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    # 10.96.0.1 is the `kubernetes` Service's ClusterIP: only a name in the certificate,
    # nothing routes to it
    rig_leaf_cert "$pki" apiserver "/CN=kube-apiserver" \
        "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth"
    rig_leaf_cert "$pki" admin "/O=system:masters/CN=weft-rig-admin" \
        "keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
    # the bootstrap RBAC policy binds this user to the controller manager's roles
    rig_leaf_cert "$pki" kube-controller-manager "/CN=system:kube-controller-manager" \
        "keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
    rig_leaf_cert "$pki" kube-scheduler "/CN=system:kube-scheduler" \
        "keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
    # RS256 service-account tokens: every JWT library verifies them
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key" 2>/dev/null
    openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
    chmod 600 "$pki"/*.key
}

rig_kubeconfig() { # FILE SERVER PKI USER
    local file=$1 server=$2 pki=$3 user=$4
    cat >"$file" <<KC
apiVersion: v1
kind: Config
clusters:
- name: k8s-rig
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$pki/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$pki/$user.crt")
    client-key-data: $(base64 -w0 <"$pki/$user.key")
contexts:
- name: k8s-rig
  context:
    cluster: k8s-rig
    user: $user
current-context: k8s-rig
KC
    chmod 600 "$file"
}

# Start one process in its own session (a signal to the caller's process group does not
# reach it), output to logs/NAME.log, pid to run/NAME.pid.
rig_start() {
    local dir=$1 name=$2
    shift 2
    setsid "$@" >"$dir/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$dir/run/$name.pid"
}

# Is the pid in run/NAME.pid alive and still the process the rig started (a pid is reused
# after its process ends)?
rig_alive() {
    local dir=$1 name=$2 pid
    pid=$(cat "$dir/run/$name.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$dir" || return 1
    # a zombie (ended, not yet reaped) is not alive
    [ "$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)" != Z ]
}

rig_fail() { # DIR NAME MESSAGE: say what failed, show the log's end, stop the rest
    local dir=$1 name=$2
    echo "k8s-rig: $3; the end of $dir/logs/$name.log:" >&2
    tail -n 25 "$dir/logs/$name.log" 2>/dev/null | sed 's/^/    /' >&2
    rig_down "$dir" >/dev/null 2>&1 || true
    exit 1
}

# Poll CHECK (a command) until it succeeds, NAME's process dies, or the deadline passes.
rig_wait() { # DIR NAME DEADLINE WHAT CHECK...
    local dir=$1 name=$2 deadline=$3 what=$4
    shift 4
    while ! "$@" >/dev/null 2>&1; do
        rig_alive "$dir" "$name" || rig_fail "$dir" "$name" "$name exited before $what"
        [ "$(date +%s)" -lt "$deadline" ] ||
            rig_fail "$dir" "$name" "$what: no answer within ${TIMEOUT}s (WEFT_K8S_RIG_TIMEOUT)"
        sleep 0.3
    done
}

# The API server of the rig in DIR (its ports from run/ports.env), up to its /readyz by DEADLINE.
rig_start_apiserver() { # DIR DEADLINE
    local dir=$1 deadline=$2 pki=$1/pki ETCD_PORT APISERVER_PORT APISERVER
    # shellcheck disable=SC1091
    . "$dir/run/ports.env"
    # --endpoint-reconciler-type none: the API server refuses to write a loopback address
    # into the `kubernetes` Service's endpoints ("may not be in the loopback range"), so that
    # Service has none (nothing off the machine could use them anyway).
    # --etcd-compaction-interval 10s (default 5 min) and no watch cache for PodTemplates (a kind
    # nothing else uses): a watch of PodTemplates from an old resource version gets `410 Gone`
    # within seconds of start-up, as any kind does on a long-running cluster (the informers'
    # contract tests need one; with the watch cache, a fresh server still has every version)
    rig_start "$dir" kube-apiserver "$BIN/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
        --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
        --client-ca-file "$pki/ca.crt" \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --service-account-key-file "$pki/sa.pub" \
        --service-account-signing-key-file "$pki/sa.key" \
        --authorization-mode RBAC \
        --service-cluster-ip-range 10.96.0.0/16 --endpoint-reconciler-type none \
        --cert-dir "$dir/pki/apiserver-generated" \
        --etcd-compaction-interval 10s --watch-cache-sizes 'podtemplates#0' \
        --profiling=false
    rig_wait "$dir" kube-apiserver "$deadline" "kube-apiserver /readyz" \
        curl -sf --max-time 2 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
        "$APISERVER/readyz"
}

# The controller manager of the rig in DIR (its port from run/ports.env), healthy by DEADLINE.
rig_start_kcm() { # DIR DEADLINE
    local dir=$1 deadline=$2 pki=$1/pki KCM_PORT
    # shellcheck disable=SC1091
    . "$dir/run/ports.env"
    # --authentication-skip-lookup: the API server has no front proxy (requestheader) CA,
    # and looking it up only fills the log with "missing content for CA bundle"
    rig_start "$dir" kube-controller-manager "$BIN/kube-controller-manager" \
        --kubeconfig "$dir/kube-controller-manager.kubeconfig" \
        --authentication-kubeconfig "$dir/kube-controller-manager.kubeconfig" \
        --authorization-kubeconfig "$dir/kube-controller-manager.kubeconfig" \
        --authentication-skip-lookup \
        --bind-address 127.0.0.1 --secure-port "$KCM_PORT" \
        --cert-dir "$dir/pki/kcm-generated" \
        --service-account-private-key-file "$pki/sa.key" \
        --root-ca-file "$pki/ca.crt" \
        --use-service-account-credentials \
        --controllers "$KCM_CONTROLLERS" \
        --kube-api-qps 200 --kube-api-burst 400 \
        --leader-elect=false --profiling=false
    # its serving certificate is self-signed and in memory: -k, on loopback
    rig_wait "$dir" kube-controller-manager "$deadline" "kube-controller-manager /healthz" \
        curl -sfk --max-time 2 "https://127.0.0.1:$KCM_PORT/healthz"
}

# The scheduler of the rig in DIR, healthy by DEADLINE: it binds pods to the nodes that register
# (none but a node agent's: with no node, pods stay Pending as before).
rig_start_scheduler() { # DIR DEADLINE
    local dir=$1 deadline=$2 SCHED_PORT
    # shellcheck disable=SC1091
    . "$dir/run/ports.env"
    rig_start "$dir" kube-scheduler "$BIN/kube-scheduler" \
        --kubeconfig "$dir/kube-scheduler.kubeconfig" \
        --authentication-kubeconfig "$dir/kube-scheduler.kubeconfig" \
        --authorization-kubeconfig "$dir/kube-scheduler.kubeconfig" \
        --authentication-skip-lookup \
        --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" \
        --cert-dir "$dir/pki/scheduler-generated" \
        --leader-elect=false --profiling=false
    rig_wait "$dir" kube-scheduler "$deadline" "kube-scheduler /healthz" \
        curl -sfk --max-time 2 "https://127.0.0.1:$SCHED_PORT/healthz"
}

rig_up() {
    local dir=$1 ttl=7200
    shift
    while [ $# -gt 0 ]; do
        case "$1" in
            --ttl) ttl=${2:?--ttl needs seconds}; shift 2 ;;
            *) die "up: unknown argument $1" ;;
        esac
    done
    case "$ttl" in *[!0-9]* | '') die "--ttl takes whole seconds, not $ttl" ;; esac
    local n
    for n in $PROCS; do
        [ -x "$BIN/$n" ] || die "$BIN/$n is missing: run scripts/k8s-rig build first"
    done
    command -v openssl >/dev/null || die "openssl not found (needed for the rig's certificates)"
    command -v curl >/dev/null || die "curl not found (needed for the readiness checks)"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ -n "$(ls -A "$dir")" ] && [ ! -e "$dir/$RIG_MARK" ]; then
        die "$dir is not empty and is not a rig directory: give an empty or new one"
    fi
    for n in $PROCS watchdog; do
        ! rig_alive "$dir" "$n" || die "$dir is up ($n is running): scripts/k8s-rig down $dir first"
    done
    # a rig directory that was brought down is started afresh: new keys, empty etcd
    rm -rf "${dir:?}/pki" "$dir/etcd" "$dir/logs" "$dir/run" "$dir/kubeconfig" "$dir/kube-controller-manager.kubeconfig" "$dir/kube-scheduler.kubeconfig"
    touch "$dir/$RIG_MARK"
    mkdir -p "$dir/logs" "$dir/run"
    local t0 ports etcd_port peer_port api_port kcm_port sched_port
    t0=$(date +%s.%N)
    rig_pki "$dir/pki"
    read -r etcd_port peer_port api_port kcm_port sched_port <<<"$(rig_free_ports 5)"
    local api="https://127.0.0.1:$api_port" pki=$dir/pki
    printf 'ETCD_PORT=%s\nAPISERVER_PORT=%s\nKCM_PORT=%s\nSCHED_PORT=%s\nAPISERVER=%s\n' \
        "$etcd_port" "$api_port" "$kcm_port" "$sched_port" "$api" >"$dir/run/ports.env"
    rig_kubeconfig "$dir/kubeconfig" "$api" "$pki" admin
    rig_kubeconfig "$dir/kube-controller-manager.kubeconfig" "$api" "$pki" kube-controller-manager
    rig_kubeconfig "$dir/kube-scheduler.kubeconfig" "$api" "$pki" kube-scheduler
    local deadline=$(($(date +%s) + TIMEOUT))

    # The watchdog first: whatever happens to the caller, the rig ends after --ttl seconds.
    if [ "$ttl" -gt 0 ]; then
        rig_start "$dir" watchdog bash -c \
            'trap "kill \$s 2>/dev/null; exit 0" TERM; sleep "$1" & s=$!; wait $s && exec "$2" down "$3"' \
            "k8s-rig-watchdog" "$ttl" "$REPO/scripts/k8s-rig" "$dir"
    fi

    # etcd without TLS and without fsync: loopback only, and a test rig's data is thrown away
    rig_start "$dir" etcd "$BIN/etcd" --name rig --data-dir "$dir/etcd" \
        --listen-client-urls "http://127.0.0.1:$etcd_port" \
        --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-cluster "rig=http://127.0.0.1:$peer_port" \
        --unsafe-no-fsync --log-level warn
    rig_wait "$dir" etcd "$deadline" "etcd /health" \
        curl -sf --max-time 2 "http://127.0.0.1:$etcd_port/health"

    rig_start_apiserver "$dir" "$deadline"

    rig_start_kcm "$dir" "$deadline"

    rig_start_scheduler "$dir" "$deadline"

    say "up in $(printf '%.1f' "$(echo "$(date +%s.%N) - $t0" | bc)")s: $api ($dir/logs)"
    echo "$dir/kubeconfig"
}

# Stop NAME's process of the rig in DIR: TERM, up to 10 s, then KILL.
rig_stop_one() { # DIR NAME
    local dir=$1 n=$2 pid i
    [ -f "$dir/run/$n.pid" ] || return 0
    pid=$(cat "$dir/run/$n.pid")
    if rig_alive "$dir" "$n"; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 100); do rig_alive "$dir" "$n" || break; sleep 0.1; done
        if rig_alive "$dir" "$n"; then
            say "$n ($pid) did not end within 10s of TERM: KILL"
            kill -KILL "$pid" 2>/dev/null || true
            for i in $(seq 1 50); do rig_alive "$dir" "$n" || break; sleep 0.1; done
            ! rig_alive "$dir" "$n" || die "$n ($pid) is still running after KILL"
        fi
    fi
    rm -f "$dir/run/$n.pid"
}

# The API server alone, for outage tests: `apiserver stop DIR`, `apiserver start DIR`.
rig_apiserver() { # stop|start DIR
    local dir
    [ -d "$2" ] || die "$2: no such directory"
    dir=$(cd "$2" && pwd)
    [ -e "$dir/$RIG_MARK" ] || die "$dir is not a rig directory"
    case $1 in
        stop) rig_stop_one "$dir" kube-apiserver && say "kube-apiserver stopped" ;;
        start)
            rig_alive "$dir" kube-apiserver && die "kube-apiserver is running already"
            rig_start_apiserver "$dir" $(($(date +%s) + TIMEOUT))
            say "kube-apiserver up"
            # the controller manager exits if the API server goes away while it starts its
            # controllers; a cluster's kubelet would restart it
            if ! rig_alive "$dir" kube-controller-manager; then
                rig_start_kcm "$dir" $(($(date +%s) + TIMEOUT))
                say "kube-controller-manager up"
            fi
            if ! rig_alive "$dir" kube-scheduler; then
                rig_start_scheduler "$dir" $(($(date +%s) + TIMEOUT))
                say "kube-scheduler up"
            fi
            ;;
        *) die "apiserver: stop or start" ;;
    esac
}

# Stop: TERM, a bounded wait, then KILL; the controller manager first, etcd last.
rig_down() {
    local dir=$1 n pid i
    [ -d "$dir" ] || die "$dir: no such directory"
    dir=$(cd "$dir" && pwd)
    [ -e "$dir/$RIG_MARK" ] || die "$dir is not a rig directory"
    for n in watchdog kube-scheduler kube-controller-manager kube-apiserver etcd; do
        [ -f "$dir/run/$n.pid" ] || continue
        pid=$(cat "$dir/run/$n.pid")
        # the watchdog execs `down` when its time is up: that is this very process
        if [ "$n" = watchdog ] && [ "$pid" = "$$" ]; then rm -f "$dir/run/$n.pid"; continue; fi
        rig_stop_one "$dir" "$n"
    done
    say "down: $dir"
}

rig_status() {
    local dir=$1 n up=0
    dir=$(cd "$dir" && pwd) || exit 1
    for n in etcd kube-apiserver kube-controller-manager kube-scheduler watchdog; do
        if rig_alive "$dir" "$n"; then
            echo "$n running (pid $(cat "$dir/run/$n.pid"))"
            up=$((up + 1))
        else
            echo "$n stopped"
        fi
    done
    [ "$up" -gt 0 ]
}
