# Sourced by scripts/k8s-rig: `build`. Builds the pinned upstream binaries from their Go
# modules into $BIN. Not for: running them (run.sh).

# The Go environment of the build: caches inside the build directory (unless the caller set
# its own), a writable module cache (so `clean` can delete it), no toolchain download
# (Kubernetes v1.37 asks for go 1.26.0: the machine's Go is enough), static binaries.
rig_go_env() {
    command -v go >/dev/null || die "go not found: the build needs Go >= 1.26 on PATH"
    export GOPATH=${GOPATH:-$BUILD/go}
    export GOMODCACHE=${GOMODCACHE:-$BUILD/go/mod}
    export GOCACHE=${GOCACHE:-$BUILD/go/cache}
    export GOFLAGS="-modcacherw -mod=mod"
    export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
    export CGO_ENABLED=0
    local v
    v=$(go env GOVERSION)
    case "$v" in
        go1.2[6-9]* | go1.[3-9]* | go[2-9]*) ;;
        *) die "$v is too old: Kubernetes $K8S_VERSION needs go >= 1.26.0" ;;
    esac
}

# A wrapper module for k8s.io/kubernetes: its own go.mod replaces the k8s.io staging modules
# with ./staging/src/..., which does not apply to a dependency, so the wrapper requires
# k8s.io/kubernetes and replaces every staging module that go.mod names with its published
# v0.Y.Z (the same release). The list comes from the downloaded go.mod, so a version bump
# is a change of K8S_VERSION only.
rig_kube_module() {
    local dir=$1 staging=v0.${K8S_VERSION#v1.} gomod
    mkdir -p "$dir"
    gomod=$(cd "$dir" && GOFLAGS=-modcacherw go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
    [ -f "$gomod" ] || die "go mod download k8s.io/kubernetes@$K8S_VERSION gave no go.mod"
    {
        printf 'module weft.local/k8s-rig/kube\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$K8S_VERSION"
        awk -v v="$staging" '$2 == "=>" && $3 ~ /^\.\/staging\// {print "\t" $1 " => " $1 " " v}' "$gomod"
        printf ')\n'
    } >"$dir/go.mod"
    grep -q "k8s.io/client-go => " "$dir/go.mod" || die "no staging replaces found in $gomod"
}

rig_build() {
    local names="etcd kube-apiserver kube-controller-manager kube-scheduler kubectl" n missing=""
    for n in $names; do [ -x "$BIN/$n" ] || missing="$missing $n"; done
    if [ -z "$missing" ]; then
        say "already built: $BIN (kubernetes $K8S_VERSION, etcd $ETCD_VERSION)"
        return 0
    fi
    rig_go_env
    say "building kubernetes $K8S_VERSION and etcd $ETCD_VERSION with $(go env GOVERSION) into $BIN"
    local tmp=$BIN.tmp t0 t1 t2 date
    rm -rf "$tmp"
    mkdir -p "$tmp"
    t0=$(date +%s)

    local kube=$BUILD/src/kube-$K8S_VERSION
    rig_kube_module "$kube"
    local minor=${K8S_VERSION#v1.}
    minor=${minor%%.*}
    date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    local ld="-s -w" pkg
    # the version a binary reports (/version, kubectl version), as upstream's hack/lib/version.sh sets it
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ld="$ld -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        ld="$ld -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
    done
    (cd "$kube" && go build -trimpath -ldflags "$ld" -o "$tmp/" \
        k8s.io/kubernetes/cmd/kube-apiserver \
        k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler \
        k8s.io/kubernetes/cmd/kubectl) ||
        die "building k8s.io/kubernetes@$K8S_VERSION failed (module $kube; see the errors above)"
    t1=$(date +%s)

    # etcd: go.etcd.io/etcd/server/v3 is itself the main package (Debian's etcd-server is 3.4,
    # older than the 3.5+ that Kubernetes supports)
    local etcd=$BUILD/src/etcd-$ETCD_VERSION
    mkdir -p "$etcd"
    printf 'module weft.local/k8s-rig/etcd\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
        "$ETCD_VERSION" >"$etcd/go.mod"
    (cd "$etcd" && go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3) ||
        die "building go.etcd.io/etcd/server/v3@$ETCD_VERSION failed (module $etcd)"
    t2=$(date +%s)

    rm -rf "$BIN"
    mv "$tmp" "$BIN"
    {
        echo "kubernetes $K8S_VERSION etcd $ETCD_VERSION $(go env GOVERSION) built $date"
        echo "seconds: kubernetes $((t1 - t0)) etcd $((t2 - t1)) total $((t2 - t0))"
        (cd "$BIN" && ls -l $names | awk '{printf "%s %.1f MB\n", $9, $5 / 1e6}')
    } >"$BIN/BUILD-INFO"
    sed 's/^/k8s-rig: /' "$BIN/BUILD-INFO" >&2
}
