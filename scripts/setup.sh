#!/usr/bin/env bash
# Installs what building, running and testing feature-agent needs on Debian 12 (run as root):
# the rust-src component and bpf-linker (to build the eBPF object), tracefs mounted (classic
# tracepoints), the PostgreSQL server binaries (the throwaway database of the demo and the
# tests), PgBouncer and nftables (the fleet tests), containerd, runc, CNI plugins and protoc
# (pods made through the CRI), Prometheus and promtool (the alert rules' tests), and the drill's background workloads (nginx, ab, make, gcc). Each step checks first, so running it again is a quick no-op.
set -euo pipefail

say() { printf 'setup: %s\n' "$*" >&2; }
export PATH="$HOME/.cargo/bin:$PATH"

if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
    say "adding the rust-src component (the eBPF target builds core from source)"
    rustup component add rust-src
fi

if ! command -v bpf-linker >/dev/null 2>&1; then
    say "installing bpf-linker 0.10.0 (newer releases need a system LLVM 21+, which Debian 12 lacks)"
    cargo install bpf-linker@0.10.0 --locked
fi

if [ "$(id -u)" -ne 0 ]; then
    say "not root: skipping tracefs and PostgreSQL installation (loading eBPF needs root anyway)"
    exit 0
fi

if [ ! -d /sys/kernel/tracing/events ] && [ ! -d /sys/kernel/debug/tracing/events ]; then
    say "mounting tracefs at /sys/kernel/tracing"
    mount -t tracefs nodev /sys/kernel/tracing
fi

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! id postgres >/dev/null 2>&1; then
    say "installing the PostgreSQL server"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
fi
# The TLS tests make certificates with openssl; the multi-node test uses ip netns (iproute2);
# deploy-check runs Python tools in a venv.
missing=""
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing="$missing python3-venv"
# The drill's background workloads (feature-lab drill --background): nginx and ab for `web`,
# make and gcc for `build` (pgbench comes with the PostgreSQL server).
command -v nginx >/dev/null 2>&1 || missing="$missing nginx-light"
command -v ab >/dev/null 2>&1 || missing="$missing apache2-utils"
command -v make >/dev/null 2>&1 || missing="$missing make"
command -v cc >/dev/null 2>&1 || missing="$missing gcc"
# The alert rules are checked and unit-tested with promtool, and a real Prometheus scrapes a
# running agent in a test (Debian's prometheus package brings both).
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
# The fleet tests: PgBouncer (Debian's 1.18, transaction pooling) between agents and Postgres,
# and nftables to black-hole a database's network namespace.
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing="$missing pgbouncer"
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing="$missing nftables"
# Pods made through containerd's CRI (tests/src/cri.rs): containerd with runc, the bridge CNI
# plugin, catatonit as the pause process, umoci to build the images, busybox in the workload
# image, and protoc for the CRI client's generated code.
command -v containerd >/dev/null 2>&1 || missing="$missing containerd"
command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || missing="$missing runc"
command -v umoci >/dev/null 2>&1 || missing="$missing umoci"
command -v catatonit >/dev/null 2>&1 || missing="$missing catatonit"
[ -x /usr/lib/cni/bridge ] || missing="$missing containernetworking-plugins"
[ -x /bin/busybox ] || missing="$missing busybox-static"
command -v protoc >/dev/null 2>&1 || missing="$missing protobuf-compiler"
if [ -n "$missing" ]; then
    say "installing$missing"
    apt-get update -q
    # Packages that ship a service (nginx) must not start it: nothing may run in the background
    # of the tests and measurements but what they start themselves.
    policy=/usr/sbin/policy-rc.d
    created_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && created_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
    [ -n "$created_policy" ] && rm -f "$policy"
    if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled nginx >/dev/null 2>&1; then
        systemctl disable --now nginx >/dev/null 2>&1 || true
    fi
fi
say "ready"
