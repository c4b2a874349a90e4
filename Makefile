# Pulse: a containerd shim v2 runtime that runs each pod in a KVM microVM.
#   make demo   set up and run the main job
#   make test   run every test (what .ci/run runs)
#   make fuzz   run every fuzz target longer (FUZZ_SECONDS each)
#   make bench  print the benchmark tables

CARGO ?= cargo
RELEASE_DIR := target/release
MUSL_DIR := target/x86_64-unknown-linux-musl/release
DIST_DIR := target/x86_64-unknown-linux-musl/dist

.PHONY: all deps build agent demo test lint unit-tests differential fuzz-smoke fuzz nested-tests bench clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(CARGO) build --release --workspace
	# What a host installs: the shim, pulse-vmm and pulse-ctl as static musl binaries with LTO
	# (profile dist: no glibc pages and fewer text pages in each pod's resident set), in $(DIST_DIR).
	# pulse-vmm on its own: in one cargo call with the shim, their shared dependencies would be
	# built with the union of both crates' features, and pulse-vmm would carry the shim's (among
	# them tracing-subscriber's env-filter, which brings regex with its Unicode tables, and more
	# of tokio and nix): a 3.69 MB binary against 3.17 MB, 2.88 MiB of VMM overhead against 2.41.
	$(CARGO) build --profile dist --target x86_64-unknown-linux-musl -p pulse-shim -p pulse-ctl
	$(CARGO) build --profile dist --target x86_64-unknown-linux-musl -p pulse-vmm-cli

# The guest agent as one static binary (it becomes the initramfs's /init), with a static
# libseccomp built for musl (guest/seccomp/libseccomp-musl.sh, cached).
agent: deps
	LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=$$(guest/seccomp/libseccomp-musl.sh)/lib \
	    $(CARGO) build --release --target x86_64-unknown-linux-musl -p pulse-agent

# The guest: vmlinux (built once per input hash, cached in /var/cache/pulse/kernel) and the
# initramfs with the agent as /init, both in build/guest/; and build/guest/pulse-pause, the
# static binary of the CRI sandbox image (scripts/pause-oci.sh packages it).
.PHONY: guest
guest: agent
	guest/kernel/build.sh
	guest/image/mkinitramfs.sh --agent $(MUSL_DIR)/pulse-agent
	$(CARGO) build --release --target x86_64-unknown-linux-musl -p pulse-pause
	install -m 0755 $(MUSL_DIR)/pulse-pause build/guest/pulse-pause

demo: build guest
	@echo "== pulse-vmm probe: boot the embedded probe guest on 2 vCPUs =="
	$(RELEASE_DIR)/pulse-vmm probe --vcpus 2
	@echo
	@echo "== virtio-blk, 4 queues, one MSI per queue, 2 vCPUs (the probe is the guest driver) =="
	$(RELEASE_DIR)/pulse-vmm probe --vcpus 2 --blk-queues 4 --irq msi
	@echo
	@echo "== the same workload on the legacy interrupt line =="
	$(RELEASE_DIR)/pulse-vmm probe --vcpus 2 --blk-queues 4 --irq legacy
	@echo
	@echo "== block, net (2 queue pairs on a tap), vsock (100 echo connections) and console, one MSI per queue =="
	$(RELEASE_DIR)/pulse-vmm probe --vcpus 2 --blk-queues 2 --net-queues 2 --vsock --console
	@echo; scripts/demo.sh

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path guest/probe/Cargo.toml -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p pulse-vmm --all-targets --features test-utils -- -D warnings  # the benches on the fake driver
	cd guest/probe && $(CARGO) clippy --release --target x86_64-unknown-none -- -D warnings

unit-tests: deps guest
	$(CARGO) test --workspace
	cd guest/probe && $(CARGO) test --lib --target x86_64-unknown-linux-gnu

# The runc differential suite (shim/tests/differential.rs) alone, on the qemu backend, with its
# report (make test runs it too). PULSE_DIFF_CASES=a,b picks cases; PULSE_DIFF_VERBOSE=1 prints
# what both runtimes printed for the cases that agree too.
differential: deps guest
	$(CARGO) test -p pulse-shim --test differential -- --nocapture

# The cargo-fuzz targets of the VMM (fuzz/README.md): the virtio-mmio register space and every
# device's chain parsing, from the seed corpus in fuzz/corpus. make test runs each for
# FUZZ_SMOKE_SECONDS; make fuzz for FUZZ_SECONDS, keeping what it finds in fuzz/work. A crash
# or a hang fails with the reproducer's path. The smoke run is short (each target reaches its
# coverage plateau from the seeds within seconds) to keep make test under its 40 minutes.
FUZZ_SMOKE_SECONDS ?= 10
FUZZ_SECONDS ?= 300

fuzz-smoke: deps
	fuzz/run.sh $(FUZZ_SMOKE_SECONDS)

fuzz: deps
	FUZZ_WORK=fuzz/work fuzz/run.sh $(FUZZ_SECONDS)

# What needs hardware-assisted KVM (the embedded backend's containerd suite, the Linux driver
# under Pulse's VMM) runs in the nested rig on hosts without VT-x/AMD-V: tests/nested/.
nested-tests: deps guest
	tests/nested/run-suites.sh

test: lint unit-tests fuzz-smoke nested-tests

bench: build guest
	PULSE_VMM_MUSL=$(CURDIR)/$(DIST_DIR)/pulse-vmm $(CARGO) bench -p pulse-vmm-cli --bench boot  # with the installed (static musl, LTO) build beside
	$(CARGO) bench -p pulse-vmm-cli --bench exits
	$(CARGO) bench -p pulse-vmm --features test-utils --bench block -- --noplot
	$(CARGO) bench -p pulse-vmm --features test-utils --bench vsock -- --noplot
	$(CARGO) bench -p pulse-vmm --features test-utils --bench net -- --noplot
	$(CARGO) bench -p pulse-tests --bench guest_boot
	scripts/bench-shim.sh  # Pulse vs runc through containerd (qemu backend where there is no VT-x)
	$(CARGO) bench -p pulse-shim --bench cri  # pod start through the CRI, Pulse vs runc (same client as the CRI suite)
	$(CARGO) bench -p pulse-shim --bench rootfs  # container start against image size (2 MB to 1.5 GB), Pulse vs runc
	$(CARGO) bench -p pulse-shim --bench pod_network  # host <-> pod TCP over the CNI bridge, Pulse 1 vs 2 queue pairs vs runc
	$(CARGO) bench -p pulse-tests --bench rig  # runs itself in the nested rig where there is no VT-x

clean:
	$(CARGO) clean
