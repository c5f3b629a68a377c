//! Why the sequence stopped, as plain data that crosses the fork: a step,
//! one number of context and the errno. The parent, which holds the same
//! [`DropSpec`] and [`Exec`], turns it into words.

use std::io;

use crate::spec::{DropSpec, Exec};
use crate::{EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EXIT_SETUP};

/// The step of the sequence that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    /// `setrlimit`; the context is the resource number.
    Rlimit = 1,
    /// `PR_CAPBSET_DROP`; the context is the capability number.
    BoundingSet = 2,
    KeepCaps = 3,
    Groups = 4,
    /// `setresgid`/`setresuid`.
    Ids = 5,
    Capabilities = 6,
    /// `PR_CAP_AMBIENT`; the context is the capability number (or
    /// `u32::MAX` for clearing the set).
    Ambient = 7,
    NoNewPrivs = 8,
    ParentDeathSignal = 9,
    /// The parent ended before the exec (its watch pipe hung up).
    ParentGone = 10,
    Signals = 11,
    CloseFds = 12,
    /// `chdir` to the working directory failed.
    Chdir = 13,
    /// The working directory is not below the root.
    CwdOutsideRoot = 14,
    /// `argv[0]` was not found in `PATH`.
    NotFound = 15,
    Seccomp = 16,
    Execve = 17,
}

impl Step {
    fn from_u32(n: u32) -> Option<Step> {
        use Step::*;
        [
            Rlimit,
            BoundingSet,
            KeepCaps,
            Groups,
            Ids,
            Capabilities,
            Ambient,
            NoNewPrivs,
            ParentDeathSignal,
            ParentGone,
            Signals,
            CloseFds,
            Chdir,
            CwdOutsideRoot,
            NotFound,
            Seccomp,
            Execve,
        ]
        .into_iter()
        .find(|s| *s as u32 == n)
    }
}

/// Why [`crate::drop_and_exec`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecFailure {
    pub step: Step,
    /// Context of the step (a resource or capability number), else 0.
    pub arg: u32,
    /// The `errno` of the failed call, 0 where no call failed.
    pub errno: i32,
}

/// Exit code for an `execve` error: 127 when the file is not there, 126
/// when it is there but cannot be executed, 125 for anything else (out
/// of memory, an I/O error reading it).
pub fn classify_exec_errno(errno: i32) -> u8 {
    match errno {
        libc::ENOENT | libc::ENOTDIR => EXIT_NOT_FOUND,
        libc::EACCES
        | libc::EPERM
        | libc::ENOEXEC
        | libc::ETXTBSY
        | libc::EISDIR
        | libc::ELIBBAD
        | libc::ELOOP
        | libc::E2BIG
        | libc::ENAMETOOLONG => EXIT_CANNOT_EXECUTE,
        _ => EXIT_SETUP,
    }
}

const RLIMIT_NAMES: [(u32, &str); 6] = [
    (libc::RLIMIT_NOFILE, "RLIMIT_NOFILE"),
    (libc::RLIMIT_NPROC, "RLIMIT_NPROC"),
    (libc::RLIMIT_CORE, "RLIMIT_CORE"),
    (libc::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK"),
    (libc::RLIMIT_FSIZE, "RLIMIT_FSIZE"),
    (libc::RLIMIT_STACK, "RLIMIT_STACK"),
];

impl ExecFailure {
    pub(crate) fn new(step: Step, arg: u32, err: rustix::io::Errno) -> ExecFailure {
        ExecFailure {
            step,
            arg,
            errno: err.raw_os_error(),
        }
    }

    /// The exit code a child that stopped here ends with.
    pub fn exit_code(&self) -> u8 {
        match self.step {
            Step::NotFound => EXIT_NOT_FOUND,
            Step::Execve => classify_exec_errno(self.errno),
            _ => EXIT_SETUP,
        }
    }

    /// Twelve bytes for a pipe (written without allocating).
    pub fn to_bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&(self.step as u32).to_le_bytes());
        b[4..8].copy_from_slice(&self.arg.to_le_bytes());
        b[8..].copy_from_slice(&self.errno.to_le_bytes());
        b
    }

    /// The inverse of [`ExecFailure::to_bytes`]; `None` for anything else.
    pub fn from_bytes(b: &[u8]) -> Option<ExecFailure> {
        if b.len() != 12 {
            return None;
        }
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Some(ExecFailure {
            step: Step::from_u32(word(0))?,
            arg: word(4),
            errno: word(8) as i32,
        })
    }

    fn os_error(&self) -> io::Error {
        io::Error::from_raw_os_error(self.errno)
    }

    /// What was being done, in a few words (`setrlimit(RLIMIT_NOFILE)`).
    pub fn step_name(&self, spec: &DropSpec) -> String {
        match self.step {
            Step::Rlimit => {
                let name = RLIMIT_NAMES
                    .iter()
                    .find(|(n, _)| *n == self.arg)
                    .map_or("?", |(_, s)| s);
                format!("setrlimit({name})")
            }
            Step::BoundingSet => format!("dropping capability {} from the bounding set", self.arg),
            Step::KeepCaps => "PR_SET_KEEPCAPS".into(),
            Step::Groups => format!("setting supplementary groups {:?}", spec.groups()),
            Step::Ids => format!("switching to uid {} gid {}", spec.uid(), spec.gid()),
            Step::Capabilities => "capset".into(),
            Step::Ambient if self.arg == u32::MAX => "clearing ambient capabilities".into(),
            Step::Ambient => format!("raising ambient capability {}", self.arg),
            Step::NoNewPrivs => "PR_SET_NO_NEW_PRIVS".into(),
            Step::ParentDeathSignal => "PR_SET_PDEATHSIG".into(),
            Step::ParentGone => "parent".into(),
            Step::Signals => "resetting signals".into(),
            Step::CloseFds => "close_range".into(),
            Step::Chdir | Step::CwdOutsideRoot => "working directory".into(),
            Step::NotFound => "command".into(),
            Step::Seccomp => "installing the seccomp filter".into(),
            Step::Execve => "execve".into(),
        }
    }

    /// The details: the error, with the path or command it concerns.
    pub fn detail(&self, spec: &DropSpec, exec: &Exec) -> String {
        match self.step {
            Step::Chdir => format!(
                "{} does not exist in the container or is not a directory ({})",
                spec.cwd(),
                self.os_error()
            ),
            Step::CwdOutsideRoot => {
                format!("{} resolves outside the container root", spec.cwd())
            }
            Step::ParentGone => "the parent process ended before the exec".into(),
            Step::NotFound => exec.command().to_string(),
            Step::Execve => format!("{}: {}", exec.command(), self.os_error()),
            _ => self.os_error().to_string(),
        }
    }

    /// One sentence for the user, worded as `moat run` words it.
    pub fn message(&self, spec: &DropSpec, exec: &Exec) -> String {
        match self.exit_code() {
            EXIT_NOT_FOUND => format!(
                "executable {:?} not found in the container (PATH={})",
                exec.command(),
                exec.path_var()
            ),
            EXIT_CANNOT_EXECUTE => format!(
                "cannot execute {:?} in the container: {}",
                exec.command(),
                self.detail(spec, exec)
            ),
            _ => format!("{}: {}", self.step_name(spec), self.detail(spec, exec)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(step: Step, arg: u32, errno: i32) -> ExecFailure {
        ExecFailure { step, arg, errno }
    }

    #[test]
    fn exec_errors_map_to_127_126_125() {
        assert_eq!(classify_exec_errno(libc::ENOENT), 127);
        assert_eq!(classify_exec_errno(libc::ENOTDIR), 127);
        assert_eq!(classify_exec_errno(libc::EACCES), 126);
        assert_eq!(classify_exec_errno(libc::ENOEXEC), 126);
        assert_eq!(classify_exec_errno(libc::ETXTBSY), 126);
        assert_eq!(classify_exec_errno(libc::EIO), 125);
        assert_eq!(classify_exec_errno(libc::ENOMEM), 125);
        assert_eq!(f(Step::NotFound, 0, 0).exit_code(), 127);
        assert_eq!(f(Step::Execve, 0, libc::EACCES).exit_code(), 126);
        assert_eq!(f(Step::Execve, 0, libc::ENOENT).exit_code(), 127);
        // Set-up failures are 125 whatever the errno.
        assert_eq!(f(Step::Chdir, 0, libc::ENOENT).exit_code(), 125);
        assert_eq!(f(Step::Ids, 0, libc::EPERM).exit_code(), 125);
    }

    #[test]
    fn failures_survive_the_pipe() {
        for step in [Step::Rlimit, Step::CwdOutsideRoot, Step::Execve] {
            let x = f(step, 7, -3);
            assert_eq!(ExecFailure::from_bytes(&x.to_bytes()), Some(x));
        }
        assert_eq!(ExecFailure::from_bytes(&[1, 0, 0]), None);
        let mut b = f(Step::Execve, 0, 2).to_bytes();
        b[0] = 99;
        assert_eq!(ExecFailure::from_bytes(&b), None);
    }

    #[test]
    fn messages_name_the_command_path_and_directory() {
        let spec = DropSpec::unprivileged(1000, 1000, &[])
            .with_cwd("/data")
            .unwrap();
        let exec = Exec::new(&["app".into()], &["PATH=/bin".into()]).unwrap();
        assert_eq!(
            f(Step::NotFound, 0, 0).message(&spec, &exec),
            "executable \"app\" not found in the container (PATH=/bin)"
        );
        assert_eq!(
            f(Step::Execve, 0, libc::EACCES).message(&spec, &exec),
            "cannot execute \"app\" in the container: app: Permission denied (os error 13)"
        );
        assert_eq!(
            f(Step::Chdir, 0, libc::ENOENT).message(&spec, &exec),
            "working directory: /data does not exist in the container or is not a directory (No such file or directory (os error 2))"
        );
        assert_eq!(
            f(Step::CwdOutsideRoot, 0, 0).message(&spec, &exec),
            "working directory: /data resolves outside the container root"
        );
        assert_eq!(
            f(Step::Ids, 0, libc::EPERM).message(&spec, &exec),
            "switching to uid 1000 gid 1000: Operation not permitted (os error 1)"
        );
        assert_eq!(
            f(Step::Rlimit, libc::RLIMIT_NOFILE, libc::EPERM).step_name(&spec),
            "setrlimit(RLIMIT_NOFILE)"
        );
    }
}
