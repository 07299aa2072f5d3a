//! How the kernels access memory, from the simulator's access profile (`sim/profile.rs`):
//! each module's `access_*` test runs its kernels at a representative shape through
//! [`profile`], which prints one `ACCESS` line per launch (bytes moved and sector overhead of
//! global loads, stores and atomics, bank conflicts of shared memory), and asserts what the
//! kernel's design promises: coalesced where its header says so ([`assert_coalesced`]), a
//! stated bound where the access pattern is scattered by nature (the gather's taps, the
//! upsampling's corners). These are counts, not times: `cargo test --release --test ptx_kernels
//! access -- --nocapture --test-threads 1` prints the table that `kernels/README.md` quotes.

use crate::sim::{Arg, Dims, Kernels, Memory, Profile};

/// Runs `entry` of `k` profiled (panicking with the simulator's message on a fault) and prints
/// its `ACCESS` line, `what` naming the shape.
pub fn profile(k: &Kernels, mem: &mut Memory, entry: &str, d: Dims, args: &[Arg], what: &str) -> Profile {
    let p = k.launch_profiled(mem, entry, d, args).unwrap_or_else(|e| panic!("{e}"));
    println!("ACCESS {entry} ({what}): {p}");
    p
}

/// Asserts that every global request of `p` touches the fewest sectors its bytes need (loads,
/// stores and atomics x1.00) and that shared memory has no bank conflict.
pub fn assert_coalesced(entry: &str, p: &Profile) {
    for (kind, s) in [("loads", p.load), ("stores", p.store), ("atomics", p.atomic)] {
        assert_eq!(s.sectors, s.ideal, "{entry}: uncoalesced {kind} ({} sectors where {} hold the bytes): {p}", s.sectors, s.ideal);
    }
    assert_eq!(p.shared.wavefronts, p.shared.ideal, "{entry}: shared-memory bank conflicts: {p}");
}

/// Every kernel entry has an access profile: its name appears quoted in the body of its
/// module's `access_*` test, so a kernel added later without one fails here.
#[test]
fn every_kernel_entry_is_profiled() {
    let sources = crate::MODULE_SOURCES;
    // The body of each module's access test: from its `fn access_` to the closing brace at the
    // start of a line.
    let bodies: Vec<&str> = sources
        .iter()
        .filter_map(|s| {
            let start = s.find("fn access_")?;
            let end = s[start..].find("\n}\n").map_or(s.len(), |e| start + e);
            Some(&s[start..end])
        })
        .collect();
    assert_eq!(bodies.len(), sources.len(), "a module without an access_ test");
    let missing = crate::entries_not_quoted_in(&bodies);
    assert!(missing.is_empty(), "kernel entries without an access profile: {missing:?}");
}
