//! `moat-oci`: the runc-compatible front end. Parsing only; the work is in
//! the library.

use clap::Parser;

fn main() {
    let cli = moat_oci::args::Cli::parse();
    std::process::exit(moat_oci::main(cli));
}
