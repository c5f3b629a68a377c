//! Named constants for argument conditions: socket address families, clone
//! flags and ioctl requests (x86_64 values).

/// Socket address families (`AF_*`, `include/linux/socket.h`).
pub const SOCKET_FAMILIES: &[(&str, u32)] = &[
    ("AF_UNIX", 1),
    ("AF_INET", 2),
    ("AF_AX25", 3),
    ("AF_IPX", 4),
    ("AF_APPLETALK", 5),
    ("AF_NETROM", 6),
    ("AF_BRIDGE", 7),
    ("AF_ATMPVC", 8),
    ("AF_X25", 9),
    ("AF_INET6", 10),
    ("AF_ROSE", 11),
    ("AF_DECNET", 12),
    ("AF_NETBEUI", 13),
    ("AF_SECURITY", 14),
    ("AF_KEY", 15),
    ("AF_NETLINK", 16),
    ("AF_PACKET", 17),
    ("AF_ASH", 18),
    ("AF_ECONET", 19),
    ("AF_ATMSVC", 20),
    ("AF_RDS", 21),
    ("AF_SNA", 22),
    ("AF_IRDA", 23),
    ("AF_PPPOX", 24),
    ("AF_WANPIPE", 25),
    ("AF_LLC", 26),
    ("AF_IB", 27),
    ("AF_MPLS", 28),
    ("AF_CAN", 29),
    ("AF_TIPC", 30),
    ("AF_BLUETOOTH", 31),
    ("AF_IUCV", 32),
    ("AF_RXRPC", 33),
    ("AF_ISDN", 34),
    ("AF_PHONET", 35),
    ("AF_IEEE802154", 36),
    ("AF_CAIF", 37),
    ("AF_ALG", 38),
    ("AF_NFC", 39),
    ("AF_VSOCK", 40),
    ("AF_KCM", 41),
    ("AF_QIPCRTR", 42),
    ("AF_SMC", 43),
    ("AF_XDP", 44),
    ("AF_MCTP", 45),
];

/// `clone(2)` flags that can be filtered (the low 32 bits of the flags word).
pub const CLONE_FLAGS: &[(&str, u32)] = &[
    ("CLONE_VM", 0x0000_0100),
    ("CLONE_FS", 0x0000_0200),
    ("CLONE_FILES", 0x0000_0400),
    ("CLONE_SIGHAND", 0x0000_0800),
    ("CLONE_PIDFD", 0x0000_1000),
    ("CLONE_PTRACE", 0x0000_2000),
    ("CLONE_VFORK", 0x0000_4000),
    ("CLONE_PARENT", 0x0000_8000),
    ("CLONE_THREAD", 0x0001_0000),
    ("CLONE_NEWNS", 0x0002_0000),
    ("CLONE_SYSVSEM", 0x0004_0000),
    ("CLONE_SETTLS", 0x0008_0000),
    ("CLONE_PARENT_SETTID", 0x0010_0000),
    ("CLONE_CHILD_CLEARTID", 0x0020_0000),
    ("CLONE_UNTRACED", 0x0080_0000),
    ("CLONE_CHILD_SETTID", 0x0100_0000),
    ("CLONE_NEWCGROUP", 0x0200_0000),
    ("CLONE_NEWUTS", 0x0400_0000),
    ("CLONE_NEWIPC", 0x0800_0000),
    ("CLONE_NEWUSER", 0x1000_0000),
    ("CLONE_NEWPID", 0x2000_0000),
    ("CLONE_NEWNET", 0x4000_0000),
    ("CLONE_IO", 0x8000_0000),
];

/// The shorthand `namespaces` in `deny_flags`: every `CLONE_NEW*` flag that
/// `clone(2)` accepts.
pub const CLONE_NAMESPACE_FLAGS: &[&str] = &[
    "CLONE_NEWNS",
    "CLONE_NEWCGROUP",
    "CLONE_NEWUTS",
    "CLONE_NEWIPC",
    "CLONE_NEWUSER",
    "CLONE_NEWPID",
    "CLONE_NEWNET",
];

/// ioctl requests known by name (x86_64 values).
pub const IOCTL_REQUESTS: &[(&str, u32)] = &[
    ("TCGETS", 0x5401),
    ("TCSETS", 0x5402),
    ("TCSETSW", 0x5403),
    ("TCSETSF", 0x5404),
    ("TCGETA", 0x5405),
    ("TCSETA", 0x5406),
    ("TCSBRK", 0x5409),
    ("TCXONC", 0x540A),
    ("TCFLSH", 0x540B),
    ("TIOCSCTTY", 0x540E),
    ("TIOCGPGRP", 0x540F),
    ("TIOCSPGRP", 0x5410),
    ("TIOCOUTQ", 0x5411),
    ("TIOCSTI", 0x5412),
    ("TIOCGWINSZ", 0x5413),
    ("TIOCSWINSZ", 0x5414),
    ("TIOCMGET", 0x5415),
    ("FIONREAD", 0x541B),
    ("TIOCLINUX", 0x541C),
    ("TIOCCONS", 0x541D),
    ("FIONBIO", 0x5421),
    ("TIOCNOTTY", 0x5422),
    ("TIOCSETD", 0x5423),
    ("TIOCGETD", 0x5424),
    ("TIOCGSID", 0x5429),
    ("TIOCGPTN", 0x8004_5430),
    ("TIOCSPTLCK", 0x4004_5431),
    ("TIOCGPTPEER", 0x5441),
    ("FIONCLEX", 0x5450),
    ("FIOCLEX", 0x5451),
    ("FIOASYNC", 0x5452),
    ("FIOQSIZE", 0x5460),
    ("FS_IOC_GETFLAGS", 0x8008_6601),
    ("FS_IOC_SETFLAGS", 0x4008_6602),
    ("FICLONE", 0x4004_9409),
];

/// Look a name up in one of the tables above (case-insensitive). For socket
/// families the `AF_` prefix is optional (`unix`, `inet6`).
pub fn lookup(table: &[(&'static str, u32)], name: &str) -> Option<(&'static str, u32)> {
    let upper = name.to_ascii_uppercase();
    table
        .iter()
        .copied()
        .find(|(n, _)| *n == upper || n.strip_prefix("AF_") == Some(upper.as_str()))
}

/// The name of a value in a table, for display.
pub fn name_of(table: &[(&'static str, u32)], value: u32) -> String {
    table
        .iter()
        .find(|(_, v)| *v == value)
        .map(|(n, _)| n.to_string())
        .unwrap_or_else(|| format!("{value:#x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        assert_eq!(lookup(SOCKET_FAMILIES, "unix"), Some(("AF_UNIX", 1)));
        assert_eq!(lookup(SOCKET_FAMILIES, "AF_INET6"), Some(("AF_INET6", 10)));
        assert_eq!(
            lookup(CLONE_FLAGS, "clone_newuser"),
            Some(("CLONE_NEWUSER", 0x1000_0000))
        );
        assert_eq!(lookup(IOCTL_REQUESTS, "TIOCSTI"), Some(("TIOCSTI", 0x5412)));
        assert_eq!(name_of(IOCTL_REQUESTS, 0x5413), "TIOCGWINSZ");
        assert_eq!(name_of(IOCTL_REQUESTS, 0x1234), "0x1234");
    }
}
