//! `hyperseg-engine info`: what CUDA hardware and libraries this machine offers.

pub fn run() -> hyperseg_engine::Result<()> {
    println!("hyperseg-engine {}", env!("CARGO_PKG_VERSION"));
    println!("cpu: {} threads (rayon)", rayon::current_num_threads());
    for line in hyperseg_engine::backend::cuda::info::describe() {
        println!("{line}");
    }
    Ok(())
}
