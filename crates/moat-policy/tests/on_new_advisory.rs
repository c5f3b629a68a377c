//! `spec.vulnerabilities.on_new_advisory` and `stop_after` (moatd's
//! security loop, issue 17).

use moat_policy::model::OnNewAdvisory;
use moat_policy::Policy;

const HEAD: &str =
    "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: v\nspec:\n  extends: baseline\n";

#[test]
fn on_new_advisory_parses_and_alert_leaves_the_digest_alone() {
    let p = Policy::parse(
        &format!("{HEAD}  vulnerabilities:\n    on_new_advisory: stop\n    stop_after: 30\n"),
        "v.yaml",
    )
    .unwrap();
    assert_eq!(p.spec.vulnerabilities.on_new_advisory, OnNewAdvisory::Stop);
    assert_eq!(p.spec.vulnerabilities.stop_after, Some(30));
    // `alert` is the default, and a policy that says so has the digest
    // it had before the field existed.
    let plain = Policy::parse(HEAD, "v.yaml").unwrap();
    let alert = Policy::parse(
        &format!("{HEAD}  vulnerabilities:\n    on_new_advisory: alert\n"),
        "v.yaml",
    )
    .unwrap();
    assert_eq!(
        plain.spec.vulnerabilities.on_new_advisory,
        OnNewAdvisory::Alert
    );
    assert_eq!(plain.digest(), alert.digest());
    assert_ne!(plain.digest(), p.digest());
}

#[test]
fn a_wrong_action_or_delay_is_refused_at_its_line() {
    let e = Policy::parse(
        &format!("{HEAD}  vulnerabilities:\n    on_new_advisory: stpo\n"),
        "v.yaml",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "v.yaml:8:22: `spec.vulnerabilities.on_new_advisory` must be `alert`, `block` or `stop`, found `stpo`; did you mean `stop`?"
    );
    let e = Policy::parse(
        &format!("{HEAD}  vulnerabilities:\n    stop_after: soon\n"),
        "v.yaml",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "v.yaml:8:17: `spec.vulnerabilities.stop_after` is a number of seconds, found `soon`"
    );
}
