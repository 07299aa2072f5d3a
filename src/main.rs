//! The `hyperseg-engine` command line: train, eval, predict, score, bench, info.
//!
//! Every failure is printed as one sentence naming the file or value at fault, with a
//! non-zero exit code; user mistakes never show a panic trace.

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    // The CPU backend's parallel regions start on this thread (see use_calling_thread).
    hyperseg_engine::use_calling_thread();
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
