//! `MOAT_VM_TRACE=1`: the phase times of one VM run on stderr, the host's
//! and (through `moat.trace` on the guest command line) the agent's, to see
//! where start-up time goes. See `docs/vm.md` ("Start-up time").

use std::time::Instant;

pub struct Trace {
    on: bool,
    t0: Instant,
    last: Instant,
}

impl Trace {
    /// On when `MOAT_VM_TRACE` is set to anything but `0` or empty.
    pub fn from_env() -> Trace {
        let on = std::env::var_os("MOAT_VM_TRACE").is_some_and(|v| !v.is_empty() && v != "0");
        let now = Instant::now();
        let t = Trace {
            on,
            t0: now,
            last: now,
        };
        if on {
            if let Some(ms) = since_process_start_ms() {
                eprintln!("moat-vm trace: {ms:>7.0} ms since moat started (10 ms resolution): VM backend entered");
            }
        }
        t
    }

    pub fn on(&self) -> bool {
        self.on
    }

    /// Prints the time since the backend was entered and since the last mark.
    pub fn mark(&mut self, phase: &str) {
        if !self.on {
            return;
        }
        let now = Instant::now();
        eprintln!(
            "moat-vm trace: {:>7.1} ms (+{:>6.1}) {phase}",
            (now - self.t0).as_secs_f64() * 1e3,
            (now - self.last).as_secs_f64() * 1e3
        );
        self.last = now;
    }

    /// The agent's own trace lines from the console, as they came.
    pub fn guest_lines(&self, console: &str) {
        if !self.on {
            return;
        }
        for l in console.lines() {
            if let Some(rest) = l.trim().strip_prefix("moat-agent: trace ") {
                eprintln!("moat-vm trace: guest {rest}");
            }
        }
    }
}

/// Milliseconds since this process started (`/proc/self/stat` start time
/// in clock ticks against `/proc/uptime`; both have 10 ms resolution).
fn since_process_start_ms() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses.
    let after = stat.rsplit_once(')')?.1;
    let start_ticks: f64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((uptime - start_ticks / 100.0) * 1e3)
}
