//! The host uid ranges moat hands out must never overlap: a jailed VMM
//! running as a sandbox container's user-namespace owner would hold every
//! capability over that container's namespaces.

use std::ops::Range;

use moat_sandbox::idmap;
use moat_vm::jail;

fn overlaps(a: &Range<u32>, b: &Range<u32>) -> bool {
    a.start < b.end && b.start < a.end
}

#[test]
fn userns_owners_jailed_vmms_and_container_ids_are_disjoint() {
    let owners = idmap::OWNER_BASE..idmap::OWNER_BASE + idmap::OWNER_COUNT;
    // The VM backend numbers its jails from UID_BASE; 65536 concurrent VMs
    // is far past what one host runs.
    let vmms = jail::UID_BASE..jail::UID_BASE + 0x1_0000;
    // Each VM's supervisor drops to a uid of its own once QEMU runs.
    let supervisors = jail::SUPERVISOR_UID_BASE..jail::SUPERVISOR_UID_BASE + 0x1_0000;
    let ids = idmap::DEFAULT_BASE..idmap::DEFAULT_BASE + idmap::DEFAULT_COUNT;
    let ranges = [&owners, &vmms, &supervisors, &ids];
    for (i, a) in ranges.iter().enumerate() {
        for b in &ranges[i + 1..] {
            assert!(!overlaps(a, b), "{a:x?} overlaps {b:x?}");
        }
        // Below systemd's "foreign" range, which other tools hand out.
        assert!(a.end <= 0x7FFE_0000, "{a:x?}");
    }
}
