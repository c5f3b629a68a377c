//! `execvp`-style lookup of `argv[0]` in `PATH`, into a caller's buffer
//! (no allocation: it runs after the fork).

use std::ffi::CStr;

/// Longest candidate path (`PATH_MAX`).
pub(crate) const MAX_PATH: usize = 4096;

/// What a candidate file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    Missing,
    /// A regular file the caller may execute.
    Executable,
    /// A regular file without execute permission for the caller.
    NotExecutable,
}

/// Writes `dir/command` and a NUL into `buf`; `None` if it does not fit.
pub(crate) fn join<'a>(
    buf: &'a mut [u8; MAX_PATH],
    dir: &[u8],
    command: &[u8],
) -> Option<&'a CStr> {
    let dir = dir.strip_suffix(b"/").unwrap_or(dir);
    let len = dir.len() + 1 + command.len();
    if len + 1 > buf.len() {
        return None;
    }
    buf[..dir.len()].copy_from_slice(dir);
    buf[dir.len()] = b'/';
    buf[dir.len() + 1..len].copy_from_slice(command);
    buf[len] = 0;
    CStr::from_bytes_with_nul(&buf[..=len]).ok()
}

/// Where `command` is: itself when it contains a `/` (relative to the
/// working directory), else the first `PATH` entry holding an executable
/// regular file of that name, else the first holding a regular file of
/// that name (so that `execve` reports why it cannot run: exit 126).
/// Empty `PATH` entries are skipped. `None`: not found (exit 127).
pub(crate) fn search<'a>(
    command: &'a CStr,
    path_var: &CStr,
    buf: &'a mut [u8; MAX_PATH],
    mut probe: impl FnMut(&CStr) -> Probe,
) -> Option<&'a CStr> {
    let cmd = command.to_bytes();
    if cmd.contains(&b'/') {
        return Some(command);
    }
    if cmd.is_empty() {
        return None;
    }
    let dirs = || {
        path_var
            .to_bytes()
            .split(|&b| b == b':')
            .filter(|d| !d.is_empty())
    };
    let mut fallback = None;
    let mut found = None;
    for (i, dir) in dirs().enumerate() {
        let Some(c) = join(buf, dir, cmd) else {
            continue;
        };
        match probe(c) {
            Probe::Executable => {
                found = Some(i);
                break;
            }
            Probe::NotExecutable if fallback.is_none() => fallback = Some(i),
            _ => {}
        }
    }
    let dir = dirs().nth(found.or(fallback)?)?;
    join(buf, dir, cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(command: &CStr, path: &CStr, files: &[(&str, Probe)]) -> Option<String> {
        let mut buf = [0u8; MAX_PATH];
        let r = search(command, path, &mut buf, |c| {
            let c = c.to_str().unwrap();
            files
                .iter()
                .find(|(f, _)| *f == c)
                .map_or(Probe::Missing, |(_, p)| *p)
        });
        r.map(|c| c.to_str().unwrap().to_string())
    }

    #[test]
    fn the_first_executable_in_path_wins() {
        let files = [
            ("/usr/bin/ls", Probe::Executable),
            ("/bin/ls", Probe::Executable),
        ];
        assert_eq!(
            lookup(c"ls", c"/sbin::/usr/bin/:/bin", &files).as_deref(),
            Some("/usr/bin/ls")
        );
        assert_eq!(lookup(c"cat", c"/sbin:/usr/bin:/bin", &files), None);
        assert_eq!(lookup(c"ls", c"", &files), None);
        assert_eq!(lookup(c"", c"/bin", &files), None);
    }

    #[test]
    fn a_path_with_a_slash_is_not_searched() {
        assert_eq!(lookup(c"./run", c"/bin", &[]).as_deref(), Some("./run"));
        assert_eq!(
            lookup(c"/opt/app", c"/bin", &[]).as_deref(),
            Some("/opt/app")
        );
    }

    #[test]
    fn a_non_executable_file_is_found_when_nothing_better_is() {
        let files = [
            ("/a/tool", Probe::NotExecutable),
            ("/b/tool", Probe::Executable),
        ];
        assert_eq!(
            lookup(c"tool", c"/a:/b", &files).as_deref(),
            Some("/b/tool")
        );
        assert_eq!(
            lookup(c"tool", c"/a:/c", &files).as_deref(),
            Some("/a/tool")
        );
    }

    #[test]
    fn candidates_that_do_not_fit_are_skipped() {
        let mut buf = [0u8; MAX_PATH];
        let long = vec![b'd'; MAX_PATH];
        assert!(join(&mut buf, &long, b"x").is_none());
        assert_eq!(
            join(&mut buf, b"/bin/", b"sh").unwrap().to_bytes(),
            b"/bin/sh"
        );
    }
}
