//! Checks of the simulator itself, on small kernels written here: the semantics it models
//! (shuffle clamp, saturating conversions, PTX's `min`/`max` NaN rule, barriers with exited
//! threads, calls) and the faults it must refuse (out of bounds, unwritten registers, races,
//! stale `.nc` loads, partial-warp shuffles). The kernel tests trust these.

use crate::sim::{parse::Module, Arg, Dims, Kernels, Memory};

fn kernels(body: &str) -> Kernels {
    let src = format!(".version 7.0\n.target sm_75\n.address_size 64\n{body}");
    Kernels::new(Module::parse(&src).unwrap_or_else(|e| panic!("test kernel: {e}")))
}

fn dims(blocks: u32, threads: u32) -> Dims {
    Dims { grid: (blocks, 1, 1), block: (threads, 1, 1) }
}

/// `out[tid] = f(tid)` with `f` given as PTX computing `%r2` (u32) from `%r1` (tid).
fn per_thread_u32(f: &str, threads: u32) -> Result<Vec<u32>, String> {
    let k = kernels(&format!(
        ".shared .align 4 .u32 s[64];\n.visible .entry k(.param .u64 out)\n{{\n.reg .pred %p<4>;\n.reg .b32 %r<16>;\n.reg .f32 %f<8>;\n.reg .b64 %rd<4>;\n\
         ld.param.u64 %rd1, [out];\nmov.u32 %r1, %tid.x;\n{f}\nmul.wide.u32 %rd2, %r1, 4;\nadd.s64 %rd2, %rd1, %rd2;\n\
         st.global.u32 [%rd2], %r2;\nret;\n}}\n"
    ));
    let mut mem = Memory::default();
    let out = mem.poisoned(4 * threads as usize);
    k.launch(&mut mem, "k", dims(1, threads), &[Arg::U64(out)]).map_err(|e| e.0)?;
    Ok(mem.download(out, threads as usize))
}

#[test]
fn shuffle_down_clamps_at_the_last_lane() {
    // Each lane sends its id; down by 5 with clamp 31: lanes 27..31 keep their own and p = false.
    let got =
        per_thread_u32("shfl.sync.down.b32 %r3|%p1, %r1, 5, 31, -1;\nselp.u32 %r4, 1000, 0, %p1;\nadd.u32 %r2, %r3, %r4;", 64).unwrap();
    for (t, v) in got.iter().enumerate() {
        let lane = t % 32;
        let want = if lane + 5 <= 31 { (t + 5) as u32 + 1000 } else { t as u32 };
        assert_eq!(*v, want, "lane {lane} of thread {t}");
    }
}

#[test]
fn float_to_integer_conversions_saturate_and_send_nan_to_zero() {
    // %f1 picked by tid: NaN, -1.5, 1e10, 2.5 (ties of .rni go to even).
    let pick = "setp.eq.u32 %p1, %r1, 0;\nsetp.eq.u32 %p2, %r1, 1;\nsetp.eq.u32 %p3, %r1, 2;\n\
                mov.f32 %f1, 0f40200000;\nselp.f32 %f1, 0f7FC00000, %f1, %p1;\nselp.f32 %f1, 0fBFC00000, %f1, %p2;\n\
                selp.f32 %f1, 0f501502F9, %f1, %p3;\n";
    let got = per_thread_u32(&format!("{pick}cvt.rzi.u32.f32 %r2, %f1;"), 4).unwrap();
    assert_eq!(got, vec![0, 0, u32::MAX, 2], "cvt.rzi.u32.f32");
    let got = per_thread_u32(&format!("{pick}cvt.rni.s32.f32 %r2, %f1;"), 4).unwrap();
    assert_eq!(got, vec![0, -2i32 as u32, i32::MAX as u32, 2], "cvt.rni.s32.f32");
}

#[test]
fn min_and_max_return_the_number_beside_a_nan() {
    let got = per_thread_u32("mov.f32 %f1, 0f7FC00000;\nmov.f32 %f2, 0fC0000000;\nmax.f32 %f3, %f1, %f2;\nmin.f32 %f4, %f2, %f1;\nadd.rn.f32 %f5, %f3, %f4;\nmov.b32 %r2, %f5;", 1).unwrap();
    assert_eq!(f32::from_bits(got[0]), -4.0, "max(NaN, -2) + min(-2, NaN)");
}

#[test]
fn a_barrier_counts_exited_threads_as_arrived() {
    let k = kernels(
        ".shared .align 4 .u32 s[64];\n.visible .entry k(.param .u64 out)\n{\n.reg .pred %p<2>;\n.reg .b32 %r<8>;\n.reg .b64 %rd<4>;\n\
         ld.param.u64 %rd1, [out];\nmov.u32 %r1, %tid.x;\nsetp.ge.u32 %p1, %r1, 40;\n@%p1 bra $DONE;\n\
         mov.u32 %r2, s;\nshl.b32 %r3, %r1, 2;\nadd.u32 %r4, %r2, %r3;\nst.shared.u32 [%r4], %r1;\nbar.sync 0;\n\
         xor.b32 %r5, %r1, 1;\nshl.b32 %r5, %r5, 2;\nadd.u32 %r5, %r2, %r5;\nld.shared.u32 %r6, [%r5];\n\
         mul.wide.u32 %rd2, %r1, 4;\nadd.s64 %rd2, %rd1, %rd2;\nst.global.u32 [%rd2], %r6;\n$DONE:\nret;\n}\n",
    );
    let mut mem = Memory::default();
    let out = mem.poisoned(4 * 64);
    k.launch(&mut mem, "k", dims(1, 64), &[Arg::U64(out)]).unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<u32> = mem.download(out, 40);
    assert!(got.iter().enumerate().all(|(t, &v)| v == (t as u32 ^ 1)), "{got:?}");
}

#[test]
fn calls_pass_parameters_and_results() {
    let k = kernels(
        ".func (.param .u32 ret) twice(.param .u32 v)\n{\n.reg .b32 %r<3>;\nld.param.u32 %r1, [v];\nadd.u32 %r2, %r1, %r1;\nst.param.u32 [ret], %r2;\nret;\n}\n\
         .visible .entry k(.param .u64 out)\n{\n.reg .b32 %r<4>;\n.reg .b64 %rd<3>;\nld.param.u64 %rd1, [out];\nmov.u32 %r1, 21;\n\
         {\n.param .u32 a0;\n.param .u32 r0;\nst.param.u32 [a0], %r1;\ncall.uni (r0), twice, (a0);\nld.param.u32 %r2, [r0];\n}\n\
         st.global.u32 [%rd1], %r2;\nret;\n}\n",
    );
    let mut mem = Memory::default();
    let out = mem.poisoned(4);
    k.launch(&mut mem, "k", dims(1, 1), &[Arg::U64(out)]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(mem.download::<u32>(out, 1), vec![42]);
}

/// Runs a one-thread-per-element store kernel with `body` between the address computation and
/// the store; returns the simulator's error.
fn fault(body: &str, threads: u32) -> String {
    per_thread_u32(body, threads).expect_err("the simulator accepted a faulty kernel")
}

#[test]
fn faults_are_refused() {
    assert!(fault("add.u32 %r1, %r1, 1;\nmov.u32 %r2, 0;", 4).contains("outside every allocation"), "one past the end");
    assert!(fault("mov.u32 %r2, %r9;", 1).contains("never written"), "an unwritten register");
    assert!(fault("mov.u32 %r1, 0;\nmov.u32 %r2, 7;", 2).contains("data race"), "two threads storing to one place");
    assert!(fault("shfl.sync.down.b32 %r2, %r1, 1, 31, -1;", 40).contains("partial warp"), "a shuffle in a partial warp");
    assert!(
        fault("setp.lt.u32 %p1, %r1, 16;\n@%p1 bra $SKIP;\nshfl.sync.down.b32 %r2, %r1, 1, 31, -1;\n$SKIP:\nmov.u32 %r2, 0;", 32)
            .contains("elsewhere"),
        "a divergent shuffle"
    );
    assert!(fault("div.u32 %r2, %r1, 0;", 1).contains("division by zero"), "an integer division by zero");
}

#[test]
fn atomics_may_share_a_location_and_nc_loads_may_not_see_writes() {
    let k = kernels(
        ".visible .entry k(.param .u64 acc, .param .u64 buf, .param .u32 reread)\n{\n.reg .pred %p<2>;\n.reg .b32 %r<6>;\n.reg .f32 %f<3>;\n.reg .b64 %rd<4>;\n\
         ld.param.u64 %rd1, [acc];\nld.param.u64 %rd2, [buf];\nld.param.u32 %r3, [reread];\nmov.u32 %r1, %tid.x;\ncvt.rn.f32.u32 %f1, %r1;\n\
         mov.u32 %r4, %ctaid.x;\nmad.lo.u32 %r5, %r4, 32, %r1;\n\
         red.global.add.f32 [%rd1], %f1;\nmul.wide.u32 %rd3, %r5, 4;\nadd.s64 %rd3, %rd2, %rd3;\nst.global.f32 [%rd3], %f1;\n\
         setp.ne.u32 %p1, %r3, 0;\n@%p1 ld.global.nc.f32 %f2, [%rd3];\nret;\n}\n",
    );
    let mut mem = Memory::default();
    let acc = mem.upload(&[0.0f32]);
    let buf = mem.poisoned(4 * 64);
    k.launch(&mut mem, "k", dims(2, 32), &[Arg::U64(acc), Arg::U64(buf), Arg::U32(0)]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(mem.download::<f32>(acc, 1), vec![2.0 * (0..32).sum::<u32>() as f32], "two blocks adding tid");
    let err =
        k.launch(&mut mem, "k", dims(1, 32), &[Arg::U64(acc), Arg::U64(buf), Arg::U32(1)]).expect_err("an .nc load of a written value").0;
    assert!(err.contains("non-coherent"), "{err}");
}

/// Every `.entry` of every embedded module is launched by some module of this test target (its
/// name appears quoted in the module's source), so a kernel added later without a simulator
/// test fails here.
#[test]
fn every_kernel_entry_is_simulated() {
    let sources = crate::MODULE_SOURCES;
    let missing = crate::entries_not_quoted_in(&sources);
    assert!(missing.is_empty(), "kernel entries no test in tests/ptx_kernels launches: {missing:?}");
}

/// Faults found by a review of the simulator, each now refused: a call result read after its
/// block ended (a stale value from the previous call), shared memory read before any thread
/// wrote it, a float operand written as an integer literal, a plain store mixed with atomics,
/// a write to a location read through `ld.global.nc`.
#[test]
fn stale_parameters_unwritten_shared_memory_and_mixed_atomics_are_refused() {
    let twice = ".func (.param .u32 ret) twice(.param .u32 v)\n{\n.reg .b32 %r<3>;\nld.param.u32 %r1, [v];\nadd.u32 %r2, %r1, %r1;\nst.param.u32 [ret], %r2;\nret;\n}\n";
    let k = kernels(&format!(
        "{twice}.visible .entry k(.param .u64 out)\n{{\n.reg .b32 %r<4>;\n.reg .b64 %rd<3>;\nld.param.u64 %rd1, [out];\nmov.u32 %r1, 21;\n\
         {{\n.param .u32 a0;\n.param .u32 r0;\nst.param.u32 [a0], %r1;\ncall.uni (r0), twice, (a0);\nld.param.u32 %r2, [r0];\n}}\n\
         {{\n.param .u32 a0;\n.param .u32 r0;\nld.param.u32 %r3, [r0];\n}}\n\
         st.global.u32 [%rd1], %r3;\nret;\n}}\n"
    ));
    let mut mem = Memory::default();
    let out = mem.poisoned(4);
    let err = k.launch(&mut mem, "k", dims(1, 1), &[Arg::U64(out)]).expect_err("a result read in a later block").0;
    assert!(err.contains("read before it was written"), "{err}");

    let err = per_thread_u32_shared("ld.shared.u32 %r2, [%r4];", 32).expect_err("an unwritten shared read");
    assert!(err.contains("no thread of the block wrote"), "{err}");
    assert!(
        fault("mov.u32 %r2, 0;\nmov.f32 %f1, 0f3F800000;\nadd.rn.f32 %f2, %f1, 1;", 1).contains("integer literal"),
        "an integer literal as a float operand"
    );
    // Thread 0 stores to out[0], every thread then adds to it atomically.
    let mixed = "setp.eq.u32 %p1, %r1, 0;\n@%p1 st.global.u32 [%rd1], %r1;\natom.global.add.u32 %r3, [%rd1], 1;\nmov.u32 %r2, %r3;\nadd.u32 %r1, %r1, 1;";
    assert!(fault(mixed, 2).contains("plain store"), "a plain store mixed with atomics");
}

/// `per_thread_u32` with a shared array `s[64]` whose address plus 4 tid is in `%r4`.
fn per_thread_u32_shared(f: &str, threads: u32) -> Result<Vec<u32>, String> {
    per_thread_u32(&format!("mov.u32 %r5, s;\nshl.b32 %r6, %r1, 2;\nadd.u32 %r4, %r5, %r6;\n{f}"), threads)
}

#[test]
fn mov_packs_and_unpacks_by_the_instruction_width() {
    let got = per_thread_u32("mov.u32 %r3, 0x1234;\nmov.u32 %r4, 0xABCD;\nmov.b32 %r2, {%r3, %r4};", 1).unwrap();
    assert_eq!(got, vec![0xABCD_1234], "mov.b32 of two 16-bit halves, low first");
}

/// A barrier orders a block's accesses to global memory, not other blocks': thread 0 writes a
/// word, the block passes a barrier, then every thread reads it (and adds to another atomically
/// after thread 0 initialised it) — legal in one block, a race with two.
#[test]
fn barriers_order_a_blocks_global_accesses_only() {
    let k = kernels(
        ".visible .entry k(.param .u64 buf)\n{\n.reg .pred %p<2>;\n.reg .b32 %r<6>;\n.reg .b64 %rd<4>;\n\
         ld.param.u64 %rd1, [buf];\nmov.u32 %r1, %tid.x;\nsetp.eq.u32 %p1, %r1, 0;\nmov.u32 %r2, 7;\nmov.u32 %r5, 0;\n\
         @%p1 st.global.u32 [%rd1], %r2;\n@%p1 st.global.u32 [%rd1+4], %r5;\nbar.sync 0;\nld.global.u32 %r3, [%rd1];\n\
         atom.global.add.u32 %r4, [%rd1+4], %r3;\nret;\n}\n",
    );
    let mut mem = Memory::default();
    let buf = mem.poisoned(8);
    k.launch(&mut mem, "k", dims(1, 64), &[Arg::U64(buf)]).unwrap_or_else(|e| panic!("one block: {e}"));
    assert_eq!(mem.download::<u32>(buf, 2), vec![7, 7 * 64]);
    let err = k.launch(&mut mem, "k", dims(2, 64), &[Arg::U64(buf)]).expect_err("two blocks writing and reading one word").0;
    assert!(err.contains("data race"), "{err}");
}

/// The access profile (`sim/profile.rs`) of a kernel whose lanes read `x[(tid * stride + skew)]`
/// (f32), write `y[tid]`, and store their id to `s[tid * sstride]` in shared memory: 64
/// threads, two warps.
fn strided_profile(stride: u32, skew: u32, sstride: u32) -> crate::sim::Profile {
    let k = kernels(
        ".shared .align 4 .u32 s[2304];\n.visible .entry k(.param .u64 y, .param .u64 x, .param .u32 stride, .param .u32 skew, .param .u32 sstride)\n{\n\
         .reg .b32 %r<12>;\n.reg .f32 %f<2>;\n.reg .b64 %rd<6>;\n\
         ld.param.u64 %rd1, [y];\nld.param.u64 %rd2, [x];\nld.param.u32 %r2, [stride];\nld.param.u32 %r3, [skew];\nld.param.u32 %r4, [sstride];\n\
         mov.u32 %r1, %tid.x;\nmad.lo.u32 %r5, %r1, %r2, %r3;\nmul.wide.u32 %rd3, %r5, 4;\nadd.s64 %rd3, %rd2, %rd3;\nld.global.f32 %f1, [%rd3];\n\
         mul.wide.u32 %rd4, %r1, 4;\nadd.s64 %rd4, %rd1, %rd4;\nst.global.f32 [%rd4], %f1;\n\
         mul.lo.u32 %r6, %r1, %r4;\nshl.b32 %r6, %r6, 2;\nmov.u32 %r7, s;\nadd.u32 %r6, %r7, %r6;\nst.shared.u32 [%r6], %r1;\nret;\n}\n",
    );
    let mut mem = Memory::default();
    let x = mem.upload(&vec![1.0f32; 64 * 32 + 8]);
    let y = mem.poisoned(4 * 64);
    let args = [Arg::U64(y), Arg::U64(x), Arg::U32(stride), Arg::U32(skew), Arg::U32(sstride)];
    k.launch_profiled(&mut mem, "k", dims(1, 64), &args).unwrap_or_else(|e| panic!("{e}"))
}

/// The access profile counts what a GPU's memory system would: a warp reading 32 consecutive
/// aligned f32 takes 4 sectors (x1); one element off alignment, 5 (x1.25); every second
/// element, 8 (x2); every eighth or more, 32 (x8); lanes reading one address share its sector.
/// Shared stores 1 word apart are conflict-free, 2 apart take 2 passes, 32 apart 32 (one bank),
/// 33 apart 1 (the padded tile's pitch).
#[test]
fn the_access_profile_counts_sectors_and_bank_conflicts() {
    for (stride, skew, want) in [(1, 0, 1.0), (1, 1, 1.25), (2, 0, 2.0), (8, 0, 8.0), (32, 0, 8.0), (0, 3, 1.0)] {
        let p = strided_profile(stride, skew, 1);
        assert_eq!(p.load.requests, 2, "one load request per warp");
        assert_eq!(p.load.overhead(), want, "loads of stride {stride}, skew {skew}: {p}");
        assert_eq!(p.store.overhead(), 1.0, "consecutive stores: {p}");
    }
    let p = strided_profile(1, 0, 1);
    assert_eq!((p.load.sectors, p.load.bytes, p.store.sectors), (8, 256, 8), "{p:?}");
    for (sstride, want) in [(1, 1.0), (2, 2.0), (32, 32.0), (33, 1.0)] {
        let p = strided_profile(1, 0, sstride);
        assert_eq!(p.shared.requests, 2, "one shared request per warp");
        assert_eq!(p.shared.conflicts(), want, "shared stores {sstride} words apart: {p}");
    }
}
