//! The built-in policies, kept as YAML files and parsed with the same strict
//! parser as user files (so they are examples of the format too).

/// Names accepted wherever a policy file is.
pub const NAMES: &[&str] = &["auto", "baseline", "restricted"];

/// The YAML text of a built-in policy.
pub fn text(name: &str) -> Option<&'static str> {
    match name {
        "auto" => Some(include_str!("../policies/auto.yaml")),
        "baseline" => Some(include_str!("../policies/baseline.yaml")),
        "restricted" => Some(include_str!("../policies/restricted.yaml")),
        _ => None,
    }
}
