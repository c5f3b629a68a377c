//! A tmux server on a private socket: a real terminal for tests of
//! `--tty` paths.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::{run, stderr, stdout};

/// A tmux server on a private socket, for a real terminal.
pub struct Tmux {
    pub socket: PathBuf,
}

impl Tmux {
    /// Starts a detached session `s` running `argv` in a 100x30 terminal;
    /// when it exits the pane shows `[exited N]` and stays.
    pub fn start(socket: PathBuf, argv: &[String]) -> Self {
        let t = Tmux { socket };
        let quoted: Vec<String> = argv
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect();
        let shell = format!("{}; echo \"[exited $?]\"; sleep 120", quoted.join(" "));
        let o = t.tmux(&[
            "new-session",
            "-d",
            "-s",
            "s",
            "-x",
            "100",
            "-y",
            "30",
            &shell,
        ]);
        assert!(o.status.success(), "tmux new-session: {}", stderr(&o));
        t
    }

    pub fn tmux(&self, args: &[&str]) -> Output {
        run(
            Command::new("tmux")
                .args(["-f", "/dev/null", "-S"])
                .arg(&self.socket)
                .args(args)
                .stdin(Stdio::null()),
            Duration::from_secs(10),
        )
    }

    /// Types `text` and Enter.
    pub fn send_line(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "s", "-l", text]);
        self.tmux(&["send-keys", "-t", "s", "Enter"]);
    }

    /// The visible pane.
    pub fn screen(&self) -> String {
        stdout(&self.tmux(&["capture-pane", "-p", "-t", "s"]))
    }

    /// Waits up to `limit` for `needle` on the screen (less if the client
    /// exits first); the screen either way.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.screen();
            if s.contains(needle) {
                return Ok(s);
            }
            // The client ended: what it printed is all there will be.
            if Instant::now() > deadline || s.contains("[exited ") {
                return Err(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for busybox's `/ #` prompt, types `tty; EXTRA; echo
    /// answer-42` and checks the shell runs on a terminal (see
    /// [`on_terminal`]); the screen with the answer. `what` names the
    /// client in failures (`exec -it`, `ctr run -t`).
    pub fn shell_round_trip(
        &self,
        what: &str,
        isolation: &str,
        extra: &str,
        limit: Duration,
    ) -> String {
        let screen = self.wait_for("/ #", limit);
        assert!(
            screen.is_ok(),
            "{what}: no shell prompt:\n{}",
            screen.unwrap_err()
        );
        // The answer last: the screen is read once it shows, so what EXTRA
        // prints is on it.
        self.send_line(&format!("tty; {extra}echo answer-$((6*7))"));
        let screen = self
            .wait_for("answer-42", limit)
            .unwrap_or_else(|s| panic!("{what}: no echo round-trip:\n{s}"));
        assert!(
            on_terminal(isolation, &screen),
            "{what}: not on a terminal:\n{screen}"
        );
        screen
    }

    /// Ends the shell with `exit CODE` and checks the client exits with it.
    pub fn exit_with(&self, what: &str, code: u8, limit: Duration) {
        self.send_line(&format!("exit {code}"));
        let screen = self.wait_for(&format!("[exited {code}]"), limit);
        assert!(
            screen.is_ok(),
            "{what}: exit status {code} not passed on:\n{}",
            screen.unwrap_err()
        );
    }
}

/// Whether `tty` printed a terminal: a pty, or in a micro-VM the guest's
/// pty as the container's /dev/console (docs/vm.md).
pub fn on_terminal(isolation: &str, screen: &str) -> bool {
    screen.contains("/dev/pts/") || (isolation == "vm" && screen.contains("/dev/console"))
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .stderr(Stdio::null())
            .status();
    }
}
