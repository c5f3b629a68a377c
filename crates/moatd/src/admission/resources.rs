//! `resources` of a container onto its policy's: narrowing only.

use moat_policy::Policy;

/// One quantity: manifest name, asked, the policy's, policy key, display.
type Check<'a> = (
    &'a str,
    Option<u64>,
    Option<u64>,
    &'a str,
    &'a dyn Fn(u64) -> String,
);

/// `resources` onto the policy's: a limit or request above the policy's
/// is refused (naming both); a limit the policy leaves open narrows it.
pub(super) fn limits(
    r: &crate::manifest::Resources,
    policy: &Policy,
    cpath: &str,
) -> Result<crate::template::Limits, Vec<String>> {
    use moat_policy::render::k8s_quantity;
    let pr = &policy.spec.resources;
    let cpus = |m: u64| {
        if m.is_multiple_of(1000) {
            (m / 1000).to_string()
        } else {
            format!("{m}m")
        }
    };
    let mut errs = Vec::new();
    let name = &policy.name;
    for (which, q) in [("limits", &r.limits), ("requests", &r.requests)] {
        let checks: [Check; 3] = [
            ("cpu", q.cpu_millis, pr.cpu_millis, "cpus", &cpus),
            (
                "memory",
                q.memory_bytes,
                pr.memory_bytes,
                "memory",
                &k8s_quantity,
            ),
            (
                "ephemeral-storage",
                q.ephemeral_storage_bytes,
                pr.disk_bytes,
                "disk",
                &k8s_quantity,
            ),
        ];
        for (k, asked, has, pkey, show) in checks {
            let Some(asked) = asked else { continue };
            match has {
                Some(max) if asked > max => errs.push(format!(
                    "{cpath}.resources.{which}.{k}: {} is above policy {name}'s resources.{pkey} ({}); lower it or use a policy that allows more",
                    show(asked),
                    show(max)
                )),
                None if k == "ephemeral-storage" => errs.push(format!(
                    "{cpath}.resources.{which}.{k}: policy {name} has no resources.disk (the size of a writable layer: filesystem.root: ephemeral, or a micro-VM's), so there is nothing to limit; drop it or use a policy that sets resources.disk"
                )),
                _ => {}
            }
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(crate::template::Limits {
        cpu_millis: r.limits.cpu_millis,
        memory_bytes: r.limits.memory_bytes,
        disk_bytes: r.limits.ephemeral_storage_bytes,
    })
}
