//! The `hyperseg-engine` command line.

fn main() {
    println!("hyperseg-engine {}", env!("CARGO_PKG_VERSION"));
}
