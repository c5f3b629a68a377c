//! Linux capability names (`include/uapi/linux/capability.h`, 0..=40).

/// Kernel capabilities by number, without the `CAP_` prefix.
pub const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The 14 capabilities Docker (moby) grants by default.
pub const DOCKER_DEFAULT: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Normalise a user-written capability name: case-insensitive, `CAP_`
/// prefix optional. Returns the canonical name (`NET_BIND_SERVICE`).
pub fn canonical(name: &str) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPABILITIES.iter().copied().find(|c| *c == bare)
}

/// The capability number.
pub fn number(name: &str) -> Option<u32> {
    let c = canonical(name)?;
    CAPABILITIES.iter().position(|x| *x == c).map(|i| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(CAPABILITIES.len(), 41);
        assert_eq!(DOCKER_DEFAULT.len(), 14);
        assert_eq!(canonical("cap_net_bind_service"), Some("NET_BIND_SERVICE"));
        assert_eq!(canonical("SYS_ADMIN"), Some("SYS_ADMIN"));
        assert_eq!(canonical("NET_BIND"), None);
        assert_eq!(number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(number("CHECKPOINT_RESTORE"), Some(40));
        for c in DOCKER_DEFAULT {
            assert!(canonical(c).is_some());
        }
    }
}
