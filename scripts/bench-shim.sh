#!/usr/bin/env bash
# `ctr run --rm` wall time and per-pod memory overhead, Pulse against runc
# (io.containerd.runc.v2), in the same run and the same private containerd.
# On hosts without VT-x/AMD-V Pulse runs through its qemu backend (TCG):
# the table says so; guest-side times there are not representative.
source "$(dirname "$0")/pulse-env.sh"
runs=${BENCH_RUNS:-5}
pss_kib() { # sum of Pss over pids
    local total=0 p v
    for p in "$@"; do
        v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
wall() { # runtime -> median ms of `ctr run --rm ... true`
    local rt=$1 i t0 t1
    for i in $(seq "$runs"); do
        t0=$(date +%s%N)
        ctr_ run --rm --runtime "$rt" "$image" "b-$i" true </dev/null >/dev/null
        t1=$(date +%s%N)
        echo $(( (t1 - t0) / 1000000 ))
    done | median
}
mem() { # runtime pattern -> KiB of the pod's host processes while `sleep` runs
    local rt=$1 pattern=$2 pids
    ctr_ run -d --runtime "$rt" "$image" bmem sleep 1000 >/dev/null
    sleep 2
    pids=$(ps -eo pid,args | grep -E "$pattern" | grep -v grep | awk '{print $1}')
    pss_kib $pids
    ctr_ tasks kill -s SIGKILL bmem >/dev/null
    for _ in $(seq 100); do ctr_ tasks ls | grep -q "bmem.*STOPPED" && break; sleep 0.1; done
    ctr_ tasks delete bmem >/dev/null; ctr_ containers delete bmem >/dev/null
}
accel=tcg; grep -qwE 'vmx|svm' /proc/cpuinfo && accel=kvm
pulse_ms=$(wall "$shim"); runc_ms=$(wall io.containerd.runc.v2)
pulse_kib=$(mem "$shim" "(containerd-shim-pulse-v2|qemu-system|vhost-device-vsock).*$work")
runc_kib=$(mem io.containerd.runc.v2 "containerd-shim-runc-v2 .*$work|^ *[0-9]+ sleep 1000$")
echo "== shim bench: ctr run --rm (median of $runs) and per-pod host memory (PSS), same containerd =="
printf '%-44s %12s %16s\n' runtime "run --rm ms" "pod memory MiB"
printf '%-44s %12s %16.1f\n' "io.containerd.pulse.v2 (qemu backend, $accel)" "$pulse_ms" "$(echo "$pulse_kib/1024" | awk -F/ '{print $1/$2}')"
printf '%-44s %12s %16.1f\n' "io.containerd.runc.v2" "$runc_ms" "$(echo "$runc_kib/1024" | awk -F/ '{print $1/$2}')"
echo "(Pulse memory: shim + qemu (guest RAM touched so far included) + vhost-device-vsock; runc: shim + container)"
