//! The micro-VM backend: hypervisor trait, QEMU driver, guest kernel and initramfs. See docs/vm.md.
