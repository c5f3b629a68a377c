//! Compiled filters installed for real, in a forked child: allowed calls
//! succeed, denied ones fail with the policy's action.

use moat_policy::plan::SockFilter;
use moat_policy::{compile, Policy};

/// The only unsafe code of the test suite: fork, install a filter, wait.
mod sys {
    use moat_policy::plan::SockFilter;

    /// How the child ended.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Outcome {
        Exited(i32),
        Signaled(i32),
    }

    /// Fork; in the child set no_new_privs, install `prog` and `_exit` with
    /// what `body` returns. `body` runs after fork in a possibly
    /// multi-threaded process, so it must only make raw system calls (no
    /// allocation, no locks).
    pub fn run_filtered(prog: &[SockFilter], body: fn() -> i32) -> Outcome {
        let filter: Vec<libc::sock_filter> = prog
            .iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect();
        let fprog = libc::sock_fprog {
            len: u16::try_from(filter.len()).expect("filter too long"),
            filter: filter.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: fork has no memory-safety preconditions; the child only
        // makes raw system calls (async-signal-safe) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: prctl with integer arguments only.
            let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            if r != 0 {
                // SAFETY: _exit never returns and is async-signal-safe.
                unsafe { libc::_exit(200) };
            }
            // SAFETY: `fprog` points to `filter`, which lives until _exit.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    1, /* SECCOMP_SET_MODE_FILTER */
                    0,
                    &fprog as *const libc::sock_fprog,
                )
            };
            if r != 0 {
                // SAFETY: as above.
                unsafe { libc::_exit(201) };
            }
            let code = body();
            // SAFETY: as above.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid, "waitpid failed");
        if libc::WIFEXITED(status) {
            Outcome::Exited(libc::WEXITSTATUS(status))
        } else {
            Outcome::Signaled(libc::WTERMSIG(status))
        }
    }

    /// The errno of the last failed call (0 when it succeeded).
    pub fn errno_of(r: libc::c_long) -> i32 {
        if r >= 0 {
            return 0;
        }
        // SAFETY: __errno_location returns the calling thread's errno slot.
        unsafe { *libc::__errno_location() }
    }

    pub fn getpid() -> libc::c_long {
        // SAFETY: getpid takes no arguments.
        unsafe { libc::syscall(libc::SYS_getpid) }
    }

    pub fn mkdirat_missing_parent() -> libc::c_long {
        // SAFETY: a NUL-terminated static path.
        unsafe {
            libc::syscall(
                libc::SYS_mkdirat,
                libc::AT_FDCWD,
                c"/nonexistent-moat-test/dir".as_ptr(),
                0o700,
            )
        }
    }

    pub fn socket(family: i32) -> libc::c_long {
        // SAFETY: integer arguments only; the fd (if any) is closed by _exit.
        unsafe { libc::syscall(libc::SYS_socket, family, libc::SOCK_STREAM, 0) }
    }

    pub fn ioctl_on_devnull(request: libc::c_ulong) -> libc::c_long {
        // SAFETY: opening a static path; the ioctl argument points to a
        // byte on the stack that the kernel may read.
        unsafe {
            let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return -1;
            }
            let mut c: u8 = b'x';
            libc::syscall(libc::SYS_ioctl, fd, request, &mut c as *mut u8)
        }
    }

    pub fn clone3_null() -> libc::c_long {
        // SAFETY: clone3 with a NULL argument and size 0 fails before
        // creating anything (EINVAL without a filter).
        unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) }
    }

    pub fn clone_newuser() -> libc::c_long {
        // SAFETY: a fork-like clone; the child (if created) _exits at once.
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone,
                libc::CLONE_NEWUSER | libc::SIGCHLD,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        if r == 0 {
            // SAFETY: child of the clone above.
            unsafe { libc::_exit(0) };
        }
        r
    }

    pub fn chmod_missing() -> libc::c_long {
        // SAFETY: a NUL-terminated static path.
        unsafe { libc::syscall(libc::SYS_chmod, c"/nonexistent-moat-test".as_ptr(), 0o600) }
    }

    pub fn x32_getpid() -> libc::c_long {
        // SAFETY: integer system call number; the filter kills the caller.
        unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) }
    }

    pub fn exec_sh(argv: &[*const libc::c_char]) -> i32 {
        // SAFETY: argv is a NULL-terminated array of static C strings.
        unsafe {
            let envp: [*const libc::c_char; 2] = [c"PATH=/usr/bin:/bin".as_ptr(), std::ptr::null()];
            libc::execve(c"/bin/sh".as_ptr(), argv.as_ptr(), envp.as_ptr());
        }
        127
    }

    pub fn exec_busybox(argv: &[*const libc::c_char]) -> i32 {
        // SAFETY: argv is a NULL-terminated array of static C strings.
        unsafe {
            let envp: [*const libc::c_char; 1] = [std::ptr::null()];
            libc::execve(c"/bin/busybox".as_ptr(), argv.as_ptr(), envp.as_ptr());
        }
        127
    }
}

use sys::Outcome;

fn program(yaml: &str) -> Vec<SockFilter> {
    let p = Policy::parse(yaml, "test.yaml").unwrap();
    compile(&p).unwrap().seccomp.instructions
}

fn policy(default: &str, extra: &str) -> String {
    format!(
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: t\nspec:\n  extends: baseline\n  syscalls:\n    default: {default}\n    deny: [mkdirat]\n{extra}"
    )
}

#[test]
fn allowed_call_succeeds_and_denied_call_gets_eperm() {
    let prog = program(&policy("errno", ""));
    let out = sys::run_filtered(&prog, || {
        if sys::getpid() <= 0 {
            return 10;
        }
        // Without the filter this fails with ENOENT; with it, EPERM.
        let r = sys::mkdirat_missing_parent();
        if r != -1 {
            return 11;
        }
        sys::errno_of(r)
    });
    assert_eq!(out, Outcome::Exited(libc::EPERM));
}

#[test]
fn without_the_filter_the_same_call_fails_differently() {
    // The control for the test above: the EPERM comes from the filter.
    let r = sys::mkdirat_missing_parent();
    assert_eq!((r, sys::errno_of(r)), (-1, libc::ENOENT));
}

#[test]
fn kill_default_kills_the_process_with_sigsys() {
    let prog = program(&policy("kill", ""));
    let out = sys::run_filtered(&prog, || {
        if sys::getpid() <= 0 {
            return 10;
        }
        sys::mkdirat_missing_parent();
        12 // not reached
    });
    assert_eq!(out, Outcome::Signaled(libc::SIGSYS));
}

#[test]
fn x32_calls_are_killed() {
    let prog = program(&policy("errno", ""));
    let out = sys::run_filtered(&prog, || {
        sys::x32_getpid();
        12
    });
    assert_eq!(out, Outcome::Signaled(libc::SIGSYS));
}

#[test]
fn socket_families_are_filtered() {
    let prog = program(&policy("kill", ""));
    let out = sys::run_filtered(&prog, || {
        if sys::socket(libc::AF_UNIX) < 0 {
            return 10;
        }
        if sys::socket(libc::AF_INET) < 0 {
            return 11;
        }
        sys::socket(libc::AF_PACKET);
        12 // not reached: AF_PACKET is not in baseline's families
    });
    assert_eq!(out, Outcome::Signaled(libc::SIGSYS));
}

#[test]
fn ioctl_deny_list_and_clone_flags() {
    let prog = program(&policy("errno", ""));
    let out = sys::run_filtered(&prog, || {
        // TIOCSTI on /dev/null: ENOTTY without a filter, EPERM with it.
        let r = sys::ioctl_on_devnull(libc::TIOCSTI);
        if sys::errno_of(r) != libc::EPERM {
            return 10;
        }
        // FIONREAD stays allowed (and fails with ENOTTY or succeeds).
        let r = sys::ioctl_on_devnull(libc::FIONREAD);
        if sys::errno_of(r) == libc::EPERM {
            return 11;
        }
        // clone3 cannot be inspected: ENOSYS so that libc falls back.
        let r = sys::clone3_null();
        if sys::errno_of(r) != libc::ENOSYS {
            return 12;
        }
        // clone with a namespace flag: EPERM.
        let r = sys::clone_newuser();
        if sys::errno_of(r) != libc::EPERM {
            return 13;
        }
        0
    });
    assert_eq!(out, Outcome::Exited(0));
}

fn busybox_present() -> bool {
    if std::path::Path::new("/bin/busybox").exists() {
        true
    } else {
        println!("SKIP: /bin/busybox is missing (apt-get install busybox-static)");
        false
    }
}

#[test]
fn builtins_run_a_real_program() {
    if !busybox_present() {
        return;
    }
    for name in ["baseline", "restricted"] {
        let prog = compile(&Policy::builtin(name).unwrap())
            .unwrap()
            .seccomp
            .instructions;
        let out = sys::run_filtered(&prog, || {
            let argv = [
                c"busybox".as_ptr(),
                c"sh".as_ptr(),
                c"-c".as_ptr(),
                c"ls / >/dev/null && cat /proc/self/status >/dev/null && exit 7".as_ptr(),
                std::ptr::null(),
            ];
            sys::exec_busybox(&argv)
        });
        assert_eq!(out, Outcome::Exited(7), "busybox sh under `{name}`");
    }
}

#[test]
fn builtins_run_dynamically_linked_glibc_programs() {
    // The host's /bin/sh (dash) and /bin/ls are dynamically linked against glibc.
    for name in ["baseline", "restricted"] {
        let prog = compile(&Policy::builtin(name).unwrap())
            .unwrap()
            .seccomp
            .instructions;
        let out = sys::run_filtered(&prog, || {
            let argv = [
                c"sh".as_ptr(),
                c"-c".as_ptr(),
                c"ls -la / >/dev/null && cat /proc/self/status >/dev/null && exit 7".as_ptr(),
                std::ptr::null(),
            ];
            sys::exec_sh(&argv)
        });
        assert_eq!(out, Outcome::Exited(7), "/bin/sh + ls under `{name}`");
    }
}

#[test]
fn glibc_programs_make_no_call_outside_the_builtins() {
    // With `default: kill`, any call the built-in does not allow would kill
    // the shell with SIGSYS instead of failing quietly with EPERM.
    for name in ["baseline", "restricted"] {
        let yaml = format!(
            "apiVersion: moat.dev/v1\nkind: Policy\nmetadata: {{name: strict}}\nspec:\n  extends: {name}\n  syscalls:\n    default: kill\n"
        );
        let prog = program(&yaml);
        let out = sys::run_filtered(&prog, || {
            let argv = [
                c"sh".as_ptr(),
                c"-c".as_ptr(),
                c"ls -la / >/dev/null && cat /proc/self/status >/dev/null && exit 7".as_ptr(),
                std::ptr::null(),
            ];
            sys::exec_sh(&argv)
        });
        assert_eq!(
            out,
            Outcome::Exited(7),
            "/bin/sh + ls under `{name}` with kill"
        );
    }
}

#[test]
fn restricted_denies_what_baseline_allows() {
    for (name, want) in [("baseline", libc::ENOENT), ("restricted", libc::EPERM)] {
        let prog = compile(&Policy::builtin(name).unwrap())
            .unwrap()
            .seccomp
            .instructions;
        // chmod is in baseline (ENOENT from the kernel), not in restricted.
        let out = sys::run_filtered(&prog, || sys::errno_of(sys::chmod_missing()));
        assert_eq!(out, Outcome::Exited(want), "chmod under `{name}`");
    }
}

#[test]
fn denied_clone3_answers_enosys_so_libc_falls_back() {
    // Even with `default: kill`, a denied clone3 next to an allowed clone
    // answers ENOSYS instead of killing the process.
    let prog = program(
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata: {name: t}\nspec:\n  extends: baseline\n  syscalls:\n    default: kill\n    deny: [clone3]\n    conditions:\n      clone: {deny_flags: []}\n",
    );
    let out = sys::run_filtered(&prog, || sys::errno_of(sys::clone3_null()));
    assert_eq!(out, Outcome::Exited(libc::ENOSYS));
}
