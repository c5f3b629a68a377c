//! Exit statuses of the shim's children. The shim is a child subreaper and
//! containerd-shim's SIGCHLD thread reaps every child (`waitpid(-1)`), so
//! nothing here may wait for a child itself: the statuses it reaps are
//! kept here until someone asks for them (a container's first process,
//! an exec'd process, a `moat-oci` command).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use containerd_shim::monitor::{monitor_subscribe, Subject, Topic};

#[derive(Default)]
pub struct Exits {
    codes: Mutex<HashMap<i32, i32>>,
    changed: Condvar,
}

static EXITS: OnceLock<Arc<Exits>> = OnceLock::new();

/// The process-wide table, subscribed to the reaper on first use (before
/// the shim starts any child).
pub fn exits() -> Arc<Exits> {
    EXITS
        .get_or_init(|| {
            let e = Arc::new(Exits::default());
            let sub = monitor_subscribe(Topic::Pid).expect("subscribing to child exits");
            let table = Arc::clone(&e);
            std::thread::spawn(move || {
                let sub = sub;
                while let Ok(ev) = sub.rx.recv() {
                    if let Subject::Pid(pid) = ev.subject {
                        table.record(pid, ev.exit_code);
                    }
                }
            });
            e
        })
        .clone()
}

impl Exits {
    pub fn record(&self, pid: i32, code: i32) {
        self.codes.lock().unwrap().insert(pid, code);
        self.changed.notify_all();
    }

    /// The status of `pid` once it exited (128+N for signal N).
    pub fn wait(&self, pid: i32) -> i32 {
        let mut codes = self.codes.lock().unwrap();
        loop {
            if let Some(c) = codes.remove(&pid) {
                return c;
            }
            codes = self.changed.wait(codes).unwrap();
        }
    }

    /// As [`Exits::wait`], giving up after `limit`.
    pub fn wait_for(&self, pid: i32, limit: Duration) -> Option<i32> {
        let end = Instant::now() + limit;
        let mut codes = self.codes.lock().unwrap();
        loop {
            if let Some(c) = codes.remove(&pid) {
                return Some(c);
            }
            let left = end.checked_duration_since(Instant::now())?;
            codes = self.changed.wait_timeout(codes, left).unwrap().0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_recorded_before_the_wait_is_kept_for_it() {
        let e = Arc::new(Exits::default());
        e.record(41, 3);
        assert_eq!(e.wait(41), 3);
        assert_eq!(e.wait_for(41, Duration::from_millis(10)), None);
        let e2 = Arc::clone(&e);
        let t = std::thread::spawn(move || e2.wait(42));
        std::thread::sleep(Duration::from_millis(20));
        e.record(42, 137);
        assert_eq!(t.join().unwrap(), 137);
    }
}
