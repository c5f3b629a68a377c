//! The one privilege-drop sequence of moat: what a process does between
//! `fork` and `execve` to become a workload (or a jailed VMM) with exactly
//! the privileges its plan grants, in one order, written once.
//!
//! Callers build a [`DropSpec`] (what the process may keep) and an
//! [`Exec`] (what it runs) **before** forking, do their own set-up in the
//! child (namespaces, mounts, `pivot_root`, stdio), and end with
//! [`drop_and_exec`]. It returns only on failure, with an [`ExecFailure`]
//! that is plain data: the child sends it to the parent (as bytes with
//! [`ExecFailure::to_bytes`], or turned into text with
//! [`ExecFailure::message`]) and exits with [`ExecFailure::exit_code`]
//! (127 not found, 126 cannot execute, 125 anything else).
//!
//! The sequence, in this order (see [`drop_and_exec`]):
//! 1. resource limits;
//! 2. the capability bounding set cut to the plan's capabilities;
//! 3. supplementary groups, then gid and uid (`setgroups`, `setresgid`,
//!    `setresuid`; real, effective and saved all the same);
//! 4. capabilities: effective, permitted and inheritable set to the plan's,
//!    the ambient set cleared and then raised to the same set;
//! 5. `no_new_privs`;
//! 6. the parent-death signal set again (changing ids cleared it), and a
//!    check that the parent did not die meanwhile;
//! 7. signal dispositions and mask reset to the defaults;
//! 8. every descriptor but 0, 1, 2 (and those the spec keeps) made
//!    close-on-exec (`close_range`, DESIGN rule 3);
//! 9. `chdir` to the working directory, checked to be inside the root;
//! 10. `execvp`-style `PATH` lookup, as the workload's own identity;
//! 11. the seccomp filter, last, so that nothing above needs to be allowed
//!     by it;
//! 12. `execve`.
//!
//! A new caller (`moat exec` joining a running sandbox container, a second
//! process started by the guest agent) does the same: load the
//! container's stored `Plan` and build the exec'd process's `ProcessSpec`;
//! `DropSpec::new` and `Exec::from_process` in the parent; fork; in the
//! child `setns` into the container's namespaces (user first: it gives the
//! capabilities the sequence needs), join its cgroup, set up stdio, then
//! `drop_and_exec` with the parent's watch pipe. The exec'd process then
//! holds exactly what the first one holds: same ids, capabilities,
//! rlimits, seccomp filter, `no_new_privs`, no caller descriptor, a
//! working directory inside the root.
//!
//! Nothing after the fork allocates: everything the sequence needs
//! (C strings, pointer arrays, the filter) is prepared by the constructors,
//! so the sequence is usable in the child of a multi-threaded process too.
//!
//! ```no_run
//! # fn demo(plan: &moat_plan::Plan, process: &moat_plan::ProcessSpec) -> Result<(), moat_privdrop::SpecError> {
//! use moat_privdrop::{drop_and_exec, DropSpec, Exec};
//! let spec = DropSpec::new(plan, process)?;
//! let exec = Exec::from_process(process)?;
//! // fork; in the child, after joining the container's namespaces:
//! let failure = drop_and_exec(&spec, &exec, None);
//! eprintln!("{}", failure.message(&spec, &exec));
//! std::process::exit(failure.exit_code().into());
//! # }
//! ```

mod failure;
mod path;
mod sequence;
mod spec;
mod sys;

pub use failure::{classify_exec_errno, ExecFailure, Step};
pub use sequence::drop_and_exec;
pub use spec::{CapSets, DropSpec, Exec, Limit, SpecError, DEFAULT_PATH};
pub use sys::cloexec_from_3_except;

/// Exit code: the command was not found.
pub const EXIT_NOT_FOUND: u8 = 127;
/// Exit code: the command was found but cannot be executed.
pub const EXIT_CANNOT_EXECUTE: u8 = 126;
/// Exit code: anything else went wrong before the workload ran.
pub const EXIT_SETUP: u8 = 125;
