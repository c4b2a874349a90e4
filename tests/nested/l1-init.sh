#!/bin/busybox sh
# /init of the nested-virtualization rig's L1 guest (scripts/nested.sh).
#
# Mounts the host's root read-only over 9p at /host, gives it writable tmpfs on /tmp, /run,
# /srv, /var/tmp and /var/lib/cni (CNI's cache, which the CRI suite's pods write), this kernel's /dev, /proc, /sys and cgroup2, loads kvm_amd (QEMU's
# emulated SVM with nested paging) and what Pulse's tests use, then runs the exchange
# directory's cmd.sh chrooted into /host with its output in out and its exit status in rc,
# and powers off. cmd.sh runs with /host as the root of the mount namespace (switch_root), not
# in a chroot: a process joining a mount namespace (setns, as `runc exec` does) lands at the
# namespace's root, which under a chroot would be this initramfs, not the host's root.
# Everything it reads comes from the kernel command line:
#   pulse.xchg=PATH    the exchange directory (also 9p tag "xchg", writable), same path as on the host
#   pulse.l1=DIR       the extracted L1 kernel package (modules for modprobe -d)
#   pulse.modules=A,B  modules to load from DIR once the host root is there
#   pulse.keep=P,Q     host paths under /tmp, /run, /srv or /var/tmp that stay visible (the
#                      checkout CMD runs from may live there)
/bin/busybox mkdir -p /bin /proc /sys /dev /host /xchg
/bin/busybox --install -s /bin
export PATH=/bin
# Host binaries run by absolute path: busybox would run its own applets of the same names.

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() { echo "l1-init: $*" >/dev/console; }
fail() {
    say "$*"
    echo 125 >/xchg/rc 2>/dev/null
    sync
    poweroff -f
}

xchg= l1= modules= keep=
for arg in $(cat /proc/cmdline); do
    case $arg in
        pulse.xchg=*) xchg=${arg#pulse.xchg=} ;;
        pulse.l1=*) l1=${arg#pulse.l1=} ;;
        pulse.modules=*) modules=$(echo "${arg#pulse.modules=}" | tr , ' ') ;;
        pulse.keep=*) keep=$(echo "${arg#pulse.keep=}" | tr , ' ') ;;
    esac
done

# The 9p client, in the order modprobe --show-depends gave when the archive was built.
for ko in $(cat /modules/order); do
    insmod "/modules/$ko" || say "insmod $ko failed"
done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 xchg /xchg || fail "cannot mount the exchange directory"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro,cache=loose host /host || fail "cannot mount the host's root"

# What bash, containerd and the tests expect in /dev, then the host root's writable places.
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount --rbind /dev /host/dev
mount --rbind /proc /host/proc
mount --rbind /sys /host/sys
for d in tmp run srv var/tmp; do
    # The host's own directory stays reachable below /under for the paths to keep.
    mkdir -p "/under/$d"
    mount --bind "/host/$d" "/under/$d"
    mount -t tmpfs -o mode=1777 tmpfs "/host/$d"
done
if [ -d /host/var/lib/cni ]; then
    mount -t tmpfs -o mode=0700 tmpfs /host/var/lib/cni
else
    say "no /var/lib/cni on the host (scripts/install-deps.sh makes it): CNI cannot cache results"
fi
for k in $keep; do
    for d in tmp run srv var/tmp; do
        case $k in
            "/$d"/*)
                mkdir -p "/host$k"
                mount --bind "/under$k" "/host$k" || fail "cannot keep $k visible"
                ;;
        esac
    done
done
mkdir -p "/host$xchg"
mount --bind /xchg "/host$xchg"
ip link set lo up
hostname pulse-l1

# Stage 2, on the host's root. busybox goes along: the initramfs is gone after switch_root and
# the host has no poweroff that works without its init system.
mkdir -p /host/run/pulse-l1 && cp /bin/busybox /host/run/pulse-l1/busybox || fail "cannot copy busybox to /host/run"
cat >/host/run/pulse-l1/stage2.sh <<'STAGE2'
xchg=$1 l1=$2 modules=$3
bb=/run/pulse-l1/busybox
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
fail() {
    echo "l1-init: $*" >/dev/console
    echo 125 >"$xchg/rc"
    sync
    $bb poweroff -f
}
if [ -n "$modules" ]; then
    # shellcheck disable=SC2086
    /usr/sbin/modprobe -d "$l1" -a $modules || fail "modprobe -d $l1 $modules failed"
fi
[ -c /dev/kvm ] || fail "no /dev/kvm after loading kvm_amd (does the CPU model show svm?)"
/bin/bash "$xchg/cmd.sh" </dev/null >"$xchg/out" 2>&1
echo $? >"$xchg/rc.tmp" && mv "$xchg/rc.tmp" "$xchg/rc"
sync
$bb umount "$xchg" 2>/dev/null
$bb poweroff -f
STAGE2
exec switch_root /host /run/pulse-l1/busybox sh /run/pulse-l1/stage2.sh "$xchg" "$l1" "$modules"
