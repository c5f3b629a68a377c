//! `moat-agent`: PID 1 inside a moat micro-VM. See `docs/vm.md`.

fn main() {
    eprintln!("moat-agent: must run as /init inside a moat micro-VM");
    std::process::exit(2);
}
