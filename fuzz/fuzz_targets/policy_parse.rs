//! Fuzz the policy and RBAC parsers and everything downstream of a policy
//! that parses: the compiler and every renderer. Invariants: no panic; a
//! parsed policy always compiles to a filter that starts with the
//! architecture check; the Kubernetes export re-parses as YAML.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_policy::{bpf, compile, explain, rbac, render, yaml, Policy};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = rbac::Rbac::parse(text, "fuzz.yaml");
    let Ok(policy) = Policy::parse(text, "fuzz.yaml") else {
        return;
    };
    let plan = match compile(&policy) {
        Ok(p) => p,
        // Too many values in one condition is a reported error, not a bug.
        Err(moat_policy::PolicyError::Compile { .. }) => return,
        Err(e) => panic!("unexpected compile error: {e}"),
    };
    let prog = &plan.seccomp.instructions;
    assert!(prog.len() >= 9 && prog.len() <= bpf::MAX_INSNS);
    assert_eq!((prog[0].code, prog[0].k), (bpf::BPF_LD_W_ABS, 4));
    let _ = bpf::disassemble(prog);
    let _ = render::seccomp_json(&policy);
    let _ = render::oci(&policy, &plan);
    let _ = render::apparmor(&policy);
    let _ = explain::explain(&policy).to_text();
    let _ = explain::diff(&policy, &policy);
    let stream = render::to_yaml_stream(&render::k8s(&policy, &plan, "moat"));
    for doc in stream.split("---\n").filter(|d| !d.trim().is_empty()) {
        if let Err(e) = yaml::parse(doc) {
            panic!("k8s export does not re-parse: {e:?}\n{doc}");
        }
    }
});
