//! Content-addressed OCI image store: import, verify, materialise rootfs, export. See docs/image-store.md.
