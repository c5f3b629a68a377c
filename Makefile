# The two commands of the README: `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
export MOAT_DEMO_ROOT ?= /var/lib/moat-demo

.PHONY: demo test bootstrap build fmt-check clippy unit

bootstrap:
	@scripts/bootstrap

build: bootstrap
	$(CARGO) build --release --workspace

demo: build
	@scripts/demo

fmt-check:
	$(CARGO) fmt --all -- --check

clippy: bootstrap
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: bootstrap fmt-check clippy
	@scripts/test

# vm backend: the static guest agent and the guest kernel (built once, ~5 min
# on 2 cores, cached under $(MOAT_KERNEL_ROOT)/kernels; VM tests find it there).
MOAT_KERNEL_ROOT ?= /var/lib/moat
.PHONY: agent kernel
agent:
	RUSTFLAGS='-C target-feature=+crt-static -C strip=symbols' $(CARGO) build --release -p moat-agent --target x86_64-unknown-linux-gnu
kernel: bootstrap
	$(CARGO) run -q -p moat -- --root $(MOAT_KERNEL_ROOT) kernel build
test: agent kernel
demo: agent kernel

# Fuzz the policy parser, compiler and renderers (needs the nightly
# toolchain and `cargo install cargo-fuzz`). FUZZ_SECONDS=600 by default.
.PHONY: fuzz-policy
FUZZ_SECONDS ?= 600
fuzz-policy:
	mkdir -p fuzz/corpus/policy_parse
	cd fuzz && cargo +nightly fuzz run policy_parse corpus/policy_parse seeds/policy_parse -- -max_total_time=$(FUZZ_SECONDS) -max_len=4096

# Fuzz the scanner's parsers: package metadata, binaries (ELF, Go build
# info, rpm headers), whole layers, and OSV records with the version orders'
# total-order properties. FUZZ_SECONDS per target.
SCAN_FUZZ_TARGETS = scan_metadata scan_binary scan_layer osv_match
.PHONY: fuzz-scan
fuzz-scan:
	cd fuzz && for t in $(SCAN_FUZZ_TARGETS); do \
		mkdir -p corpus/$$t && \
		cargo +nightly fuzz run $$t corpus/$$t seeds/$$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 || exit 1; \
	done

# Fuzz the parsers of the profile and runtime: the image profile's ELF
# analysis (one hostile object in an image, run at every import) and the
# container record reader (state.json). /bin/busybox joins the seeds when
# present. FUZZ_SECONDS per target.
AUTO_FUZZ_TARGETS = image_profile state_record
.PHONY: fuzz-auto
fuzz-auto:
	mkdir -p fuzz/corpus/image_profile
	if [ -f /bin/busybox ]; then (printf '\000'; cat /bin/busybox) > fuzz/corpus/image_profile/busybox; fi
	cd fuzz && for t in $(AUTO_FUZZ_TARGETS); do \
		mkdir -p corpus/$$t && \
		cargo +nightly fuzz run $$t corpus/$$t seeds/$$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10 || exit 1; \
	done

# Fuzz a bundle's config.json through moat-oci's policy check and set-up
# (the OCI seccomp translation included). FUZZ_SECONDS.
.PHONY: fuzz-oci
fuzz-oci:
	mkdir -p fuzz/corpus/oci_config
	cd fuzz && cargo +nightly fuzz run oci_config corpus/oci_config seeds/oci_config -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10
