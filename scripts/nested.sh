#!/usr/bin/env bash
# Runs a command as root with hardware-assisted KVM: inside an L1 Linux guest under QEMU's
# software emulator, whose emulated AMD SVM (nested paging) gives the L1 kernel a real
# /dev/kvm, with the host's whole tree visible read-only at the same paths.
#
#   scripts/nested.sh [options] -- CMD [ARG...]
#
#   --timeout SECS   power the L1 guest off after SECS (default 3600); exit 124
#   --memory MIB     L1 memory (default 6144)      --cpus N   L1 vCPUs (default 2: see docs/nested-rig.md)
#   --env NAME=VAL   set a variable for CMD (PATH, HOME, TERM, PULSE_* and RUST_* pass by themselves)
#   --console FILE   keep the L1 kernel's console log in FILE
#   --direct-ok      run CMD directly when this host's CPU has vmx/svm (the rig is not needed there)
#
# CMD runs in the current directory, chrooted into the host's root (read-only over 9p) with
# tmpfs on /tmp, /run, /srv and /var/tmp; its stdout and stderr stream here; the exit status is
# CMD's. A rig failure (no /dev/kvm in L1, a 9p mount that fails, an L1 that stops without a
# result) prints the L1 console's tail and exits 125. The L1 guest is always powered off: QEMU
# is killed at the deadline, on SIGINT/SIGTERM and when this script exits. docs/nested-rig.md
# says more; the L1 kernel is scripts/l1-kernel.sh's, the initramfs is cached by input hash.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
timeout=3600 memory=6144 console_copy= direct_ok=0
# Two L1 vCPUs by default. Both settings meet QEMU 7.2's emulated-SVM faults
# (docs/nested-rig.md): with two, L1 now and then panics in a vCPU thread with the L2's GS
# base; with one, L1 froze three times, twice in a row at the first 2-vCPU L2 boot of a run.
# run-suites.sh resumes a run (up to 3 times) after either.
cpus=${PULSE_RIG_CPUS:-2}
extra_env=()
# What Pulse's tests load in L1, beyond the 9p client (kvm_amd pulls kvm, irqbypass, ccp).
modules=${PULSE_L1_MODULES:-kvm_amd,tun,overlay,bridge,veth,sch_ingress,act_mirred,cls_u32,cls_matchall}

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "nested: $*" >&2; exit 125; }
while [ $# -gt 0 ]; do
    case $1 in
        --timeout) timeout=$2; shift 2 ;;
        --memory) memory=$2; shift 2 ;;
        --cpus) cpus=$2; shift 2 ;;
        --env) extra_env+=("$2"); shift 2 ;;
        --console) console_copy=$2; shift 2 ;;
        --direct-ok) direct_ok=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        *) echo "nested: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ $# -gt 0 ] || { echo "nested: no command (scripts/nested.sh -- CMD...)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || die "must run as root (the L1 guest runs CMD as root)"

if [ "$direct_ok" = 1 ] && grep -qwE 'vmx|svm' /proc/cpuinfo && [ -c /dev/kvm ]; then
    echo "nested: this host's CPU has hardware virtualization; running directly" >&2
    for kv in "${extra_env[@]}"; do export "${kv?}"; done
    exec "$@"
fi

command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is missing (scripts/install-deps.sh)"
l1=$("$here/l1-kernel.sh")
version=$(cat "$l1/.version")
initramfs=$("$repo/tests/nested/mkl1initramfs.sh" "$l1")

run=$(mktemp -d /var/tmp/pulse-nested.XXXXXX)
xchg=$run/xchg
mkdir "$xchg"
qemu_pid=
cleanup() {
    local rc=$?
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill -KILL "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
    fi
    [ -n "$console_copy" ] && cp "$run/console.log" "$console_copy" 2>/dev/null
    rm -rf "$run"
    return $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The command, as a bash script run in L1: the same directory, the environment, the words.
{
    echo "cd $(printf %q "$PWD") || exit 125"
    while IFS= read -r name; do
        printf 'export %s=%q\n' "$name" "${!name}"
    done < <(compgen -e | grep -E '^(PATH|HOME|TERM|PULSE_.*|RUST_.*)$' || true)
    for kv in "${extra_env[@]}"; do
        printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
    done
    # Where a CMD that can renew a heartbeat does (tests/nested/in-l1.sh; see below).
    printf 'export PULSE_RIG_HEARTBEAT=%q\n' "$xchg/heartbeat"
    printf 'exec'
    printf ' %q' "$@"
    echo
} >"$xchg/cmd.sh"
: >"$xchg/out"

# L1 puts tmpfs on /tmp, /run, /srv and /var/tmp: the checkout and the working directory stay
# visible even when they live there (a CI clone in /tmp).
keep=$(printf '%s\n' "$repo" "$PWD" | sort -u | paste -sd,)

started=$(date +%s.%N)
qemu-system-x86_64 -nodefaults -display none -no-reboot \
    -accel tcg,thread=multi -cpu max -smp "$cpus" -m "$memory" -M q35 \
    -kernel "$l1/boot/vmlinuz-$version" -initrd "$initramfs" \
    -append "console=ttyS0 quiet panic=-1 pulse.xchg=$xchg pulse.l1=$l1 pulse.modules=$modules pulse.keep=$keep" \
    -virtfs "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap" \
    -virtfs "local,path=$xchg,mount_tag=xchg,security_model=none,multidevs=remap" \
    -serial "file:$run/console.log" </dev/null >"$run/qemu.log" 2>&1 &
qemu_pid=$!
tail -n +1 -f --pid="$qemu_pid" "$xchg/out" &
tail_pid=$!

deadline=$(( $(date +%s) + timeout ))
# A CMD that renews xchg/heartbeat (PULSE_RIG_HEARTBEAT) and then stops renewing it for
# PULSE_RIG_FREEZE_S seconds (default 120, twelve renewals missed; 0: never) means the L1 froze: its vCPUs no longer
# run L1's own code (seen: stuck in an L2 guest, no watchdog of L1's fires). tests/nested/in-l1.sh
# renews it from its per-second wait on each test, in its own main loop (a background loop of
# its own did not survive the first test's process cleanup).
# A false alarm costs a fresh L1 and one test's rerun; each real freeze costs the whole wait
# (two in one CI run on 2026-12-05, at 300 s each).
freeze_limit=${PULSE_RIG_FREEZE_S:-120}
timed_out=0 froze=0
while kill -0 "$qemu_pid" 2>/dev/null; do
    now=$(date +%s)
    if [ "$now" -ge "$deadline" ]; then
        timed_out=1
        kill -KILL "$qemu_pid" 2>/dev/null || true
        break
    fi
    if [ "$freeze_limit" -gt 0 ] && [ -f "$xchg/heartbeat" ] && [ ! -f "$xchg/rc" ] &&
        [ $(( now - $(stat -c %Y "$xchg/heartbeat") )) -gt "$freeze_limit" ]; then
        froze=1
        kill -KILL "$qemu_pid" 2>/dev/null || true
        break
    fi
    sleep 1
done
wait "$qemu_pid" 2>/dev/null || true
qemu_pid=
wait "$tail_pid" 2>/dev/null || true
elapsed=$(echo "$(date +%s.%N) - $started" | bc)

l1_tail() {
    echo "nested: the L1 console's last lines:" >&2
    tail -n 40 "$run/console.log" | sed 's/^/  | /' >&2
    if [ -s "$run/qemu.log" ]; then
        echo "nested: QEMU said:" >&2
        sed 's/^/  | /' "$run/qemu.log" >&2
    fi
}
if [ "$froze" = 1 ]; then
    echo "nested: the L1 guest froze: no heartbeat for ${freeze_limit}s (an emulator fault, docs/nested-rig.md); killed it" >&2
    l1_tail
    exit 125
fi
if [ "$timed_out" = 1 ]; then
    echo "nested: the L1 guest was still running after ${timeout}s; killed it" >&2
    l1_tail
    exit 124
fi
if [ ! -f "$xchg/rc" ]; then
    echo "nested: the L1 guest stopped without a result" >&2
    l1_tail
    exit 125
fi
rc=$(cat "$xchg/rc")
if [ "$rc" = 125 ] && grep -q '^l1-init: ' "$run/console.log"; then
    l1_tail
fi
printf 'nested: exit %s after %.1fs in the L1 guest (%s vCPUs, %s MiB, %s)\n' "$rc" "$elapsed" "$cpus" "$memory" "$version" >&2
exit "$rc"
