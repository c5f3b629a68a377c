//! PLACEHOLDER until the translation lands: the caller's profile is not
//! yet compiled (moat's policy filter still applies).

pub const ACTIONS: &[&str] = &["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP", "SCMP_ACT_LOG", "SCMP_ACT_TRACE"];
pub const OPERATORS: &[&str] = &["SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"];

pub fn compile(_s: &oci_spec::runtime::LinuxSeccomp) -> Result<moat_plan::SeccompProgram, String> {
    Ok(moat_plan::SeccompProgram::default())
}
