//! `kernels/bf16.ptx`: the casts, bias + ReLU on bf16 buffers and the batched transposes with a
//! cast (`transpose_f32_to_bf16`, `transpose_bf16_to_f32`) or without (`transpose_bf16`, a bit
//! copy), with their wrapper's `ops::transpose_cfg`, its row-tile and matrix walks past short
//! grids, and the barriers and tile indexing of the shared tile, bit for bit against
//! `backend::cpu::bf16` (that is, `half`'s rounding) or a CPU transpose of the bits.

use half::bf16;
use hyperseg_engine::backend::cpu::bf16 as cpu;
use hyperseg_engine::backend::cuda::kernels::ops::transpose_cfg;

use crate::sim::{self, Arg, Dims, Kernels, Memory};
use crate::{grid_1d, run, Rng};

/// Values that exercise the rounding: random, ties, subnormals, infinities, NaN, signed zeros,
/// the largest finite values.
fn awkward(n: usize) -> Vec<f32> {
    let mut rng = Rng(0x5EED_BF16);
    let mut v = rng.vec(n, -4.0, 4.0);
    let special = crate::SPECIAL.into_iter().chain([
        f32::from_bits(0x3F80_8000), // a tie, rounds down to even
        f32::from_bits(0x3F81_8000), // a tie, rounds up to even
        f32::from_bits(0x3F80_8001),
        f32::from_bits(0x7F7F_FFFF),
        f32::from_bits(0x7F80_0001), // a signalling NaN
    ]);
    for (i, s) in special.enumerate() {
        v[i * 7 % n] = s;
    }
    v
}

#[test]
fn casts_round_as_half() {
    let k = sim::load("bf16");
    let n = 1000;
    let x = awkward(n);
    let mut mem = Memory::default();
    let xd = mem.upload(&x);
    let yd = mem.poisoned(2 * n);
    run(&k, &mut mem, "cast_f32_to_bf16", grid_1d(n), &[Arg::U64(yd), Arg::U64(xd), Arg::U32(n as u32)]);
    let got: Vec<u16> = mem.download(yd, n);
    let want = cpu::to_bf16(&x);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let g = bf16::from_bits(*g);
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "cast_f32_to_bf16: element {i} ({:e}) gave {g} ({:#06x}), half gives {w} ({:#06x})",
            x[i],
            g.to_bits(),
            w.to_bits()
        );
    }
    let back = mem.poisoned(4 * n);
    run(&k, &mut mem, "cast_bf16_to_f32", grid_1d(n), &[Arg::U64(back), Arg::U64(yd), Arg::U32(n as u32)]);
    crate::assert_bits("cast_bf16_to_f32", &mem.download(back, n), &cpu::to_f32(&want));
}

#[test]
fn bias_relu_rounds_as_half() {
    let k = sim::load("bf16");
    let (rows, cols) = (37, 19);
    let n = rows * cols;
    let y = cpu::to_bf16(&awkward(n));
    let bias = Rng(7).vec(cols, -1.0, 1.0);
    let mut mem = Memory::default();
    let yd = mem.upload(&y.iter().map(|v| v.to_bits()).collect::<Vec<u16>>());
    let bd = mem.upload(&bias);
    run(&k, &mut mem, "bias_relu_fwd_bf16", grid_1d(n), &[Arg::U64(yd), Arg::U64(bd), Arg::U32(n as u32), Arg::U32(cols as u32)]);
    let got: Vec<u16> = mem.download(yd, n);
    let mut want = y.clone();
    cpu::bias_relu_assign(&mut want, &bias);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(*g, w.to_bits(), "bias_relu_fwd_bf16: element {i}: {} vs the CPU's {w}", bf16::from_bits(*g));
    }
}

/// The cast check notices a rounding constant off by one (a fault planted in the PTX text).
#[test]
fn a_wrong_rounding_is_caught() {
    let k = sim::load_edited("bf16", |t| t.replacen("add.u32 %r7, %r7, 0x7FFF;", "add.u32 %r7, %r7, 0x7FFE;", 1));
    let x = awkward(1000);
    let mut mem = Memory::default();
    let xd = mem.upload(&x);
    let yd = mem.poisoned(2 * x.len());
    run(&k, &mut mem, "cast_f32_to_bf16", grid_1d(x.len()), &[Arg::U64(yd), Arg::U64(xd), Arg::U32(x.len() as u32)]);
    let got: Vec<u16> = mem.download(yd, x.len());
    let want = cpu::to_bf16(&x);
    assert!(got.iter().zip(&want).any(|(g, w)| *g != w.to_bits()), "a cast with the wrong rounding constant matched half everywhere");
}

/// The bits of an unwritten bf16 element: [`Memory::poisoned`] fills with 0xFF (a NaN that
/// neither transpose makes from the inputs here).
const POISON_BF16: u16 = 0xFFFF;

/// `transpose_f32_to_bf16` of `k` on `batch` matrices `[rows, cols]` (`x`) with the launch
/// shape `d`: the bits of out `[batch, cols, rows]` (poisoned before), or the simulator's error.
fn sim_to_bf16(k: &Kernels, x: &[f32], (rows, cols, batch): (usize, usize, usize), d: Dims) -> Result<Vec<u16>, String> {
    let n = rows * cols * batch;
    assert_eq!(x.len(), n);
    let mut mem = Memory::default();
    let xd = mem.upload(x);
    let out = mem.poisoned(2 * n);
    let args = [Arg::U64(out), Arg::U64(xd), Arg::U32(rows as u32), Arg::U32(cols as u32), Arg::U32(batch as u32)];
    k.launch(&mut mem, "transpose_f32_to_bf16", d, &args).map_err(|e| e.0)?;
    Ok(mem.download(out, n))
}

/// `transpose_bf16_to_f32` of `k` on `batch` matrices `[rows, cols]` of bf16 bits (`x`) with
/// the launch shape `d`: out `[batch, cols, rows]` (poisoned before), or the simulator's error.
fn sim_to_f32(k: &Kernels, x: &[u16], (rows, cols, batch): (usize, usize, usize), d: Dims) -> Result<Vec<f32>, String> {
    let n = rows * cols * batch;
    assert_eq!(x.len(), n);
    let mut mem = Memory::default();
    let xd = mem.upload(x);
    let out = mem.poisoned(4 * n);
    let args = [Arg::U64(out), Arg::U64(xd), Arg::U32(rows as u32), Arg::U32(cols as u32), Arg::U32(batch as u32)];
    k.launch(&mut mem, "transpose_bf16_to_f32", d, &args).map_err(|e| e.0)?;
    Ok(mem.download(out, n))
}

/// `transpose_bf16` of `k` on `batch` matrices `[rows, cols]` of bf16 bits (`x`) with the
/// launch shape `d`: the bits of out `[batch, cols, rows]` (poisoned before), or the
/// simulator's error.
fn sim_bf16(k: &Kernels, x: &[u16], (rows, cols, batch): (usize, usize, usize), d: Dims) -> Result<Vec<u16>, String> {
    let n = rows * cols * batch;
    assert_eq!(x.len(), n);
    let mut mem = Memory::default();
    let xd = mem.upload(x);
    let out = mem.poisoned(2 * n);
    let args = [Arg::U64(out), Arg::U64(xd), Arg::U32(rows as u32), Arg::U32(cols as u32), Arg::U32(batch as u32)];
    k.launch(&mut mem, "transpose_bf16", d, &args).map_err(|e| e.0)?;
    Ok(mem.download(out, n))
}

/// The CPU transpose of `batch` matrices `[rows, cols]` of bf16 bits: out[b, j, i] = x[b, i, j].
fn transpose_bits(x: &[u16], (rows, cols, batch): (usize, usize, usize)) -> Vec<bf16> {
    (0..rows * cols * batch)
        .map(|o| {
            let (b, j, i) = (o / (rows * cols), o / rows % cols, o % rows);
            bf16::from_bits(x[b * rows * cols + i * cols + j])
        })
        .collect()
}

/// The wrapper's launch shape for `batch` matrices `[rows, cols]` (gridDim.y cut by
/// `crate::with_grid_y_cap` when one is set).
fn cfg((rows, cols, batch): (usize, usize, usize)) -> Dims {
    crate::dims(transpose_cfg(rows as u32, cols as u32, batch as u32))
}

/// Asserts that two bf16 buffers are equal bit for bit, NaN payloads included (the kernel and
/// `half` quiet a NaN with the same formula), and that no element kept the poison.
fn assert_bf16_bits(what: &str, got: &[u16], want: &[bf16]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_ne!(*g, POISON_BF16, "{what}: element {i} was never written (it still holds the poison)");
        assert_eq!(
            *g,
            w.to_bits(),
            "{what}: element {i} is {} ({g:#06x}), the CPU reference has {w} ({:#06x})",
            bf16::from_bits(*g),
            w.to_bits()
        );
    }
}

/// Asserts that two f32 buffers are equal bit for bit, NaN payloads included, and that no
/// element kept the poison (no widened bf16 has it: its low 16 bits are zero).
fn assert_f32_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_ne!(g.to_bits(), crate::POISON, "{what}: element {i} was never written (it still holds the poison)");
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what}: element {i} is {g:e} ({:#010x}), the CPU reference has {w:e} ({:#010x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

/// f32 -> bf16 on `awkward` values, then bf16 -> f32 of the result back to the original
/// layout, each bit for bit against the CPU transposes (NaN payloads included), with launch
/// shapes `d_fwd` and `d_back`.
fn check_round_trip(k: &Kernels, shape: (usize, usize, usize), d_fwd: Dims, d_back: Dims, seed: usize) {
    let (rows, cols, batch) = shape;
    let n = rows * cols * batch;
    // `awkward` rotated by `seed`, so that its specials land at other places of the tiles.
    let mut x = awkward(n);
    x.rotate_left(seed % n);
    // NaNs whose bf16 keeps a payload bit and the sign: quiet and signalling, negative.
    for (i, bits) in [0xFFC1_2345u32, 0xFF80_0001, 0x7F81_0000].into_iter().enumerate() {
        x[(n / 2 + 5 * i) % n] = f32::from_bits(bits);
    }
    let tag = format!("{batch} x [{rows}, {cols}], grid {:?}", d_fwd.grid);
    let want = cpu::transpose_to_bf16(&x, batch, rows, cols);
    let got = sim_to_bf16(k, &x, shape, d_fwd).unwrap_or_else(|e| panic!("transpose_f32_to_bf16 {tag}: {e}"));
    assert_bf16_bits(&format!("transpose_f32_to_bf16 {tag}"), &got, &want);

    let tag = format!("{batch} x [{cols}, {rows}], grid {:?}", d_back.grid);
    let back = sim_to_f32(k, &got, (cols, rows, batch), d_back).unwrap_or_else(|e| panic!("transpose_bf16_to_f32 {tag}: {e}"));
    let want_back = cpu::transpose_to_f32(&want, batch, cols, rows);
    assert_f32_bits(&format!("transpose_bf16_to_f32 {tag}"), &back, &want_back);
    // The round trip lands on the original layout: x rounded to bf16.
    assert_f32_bits(&format!("round trip {tag}"), &back, &cpu::to_f32(&cpu::to_bf16(&x)));
}

/// Shapes `(rows, cols, batch)` of the transposes: sides that are not multiples of the 32 x 32
/// tile, exact multiples, a single row or column, one matrix and several.
const TRANSPOSE_SHAPES: [(usize, usize, usize); 7] =
    [(3, 50, 1), (37, 70, 3), (64, 32, 1), (64, 32, 2), (1, 45, 3), (45, 1, 1), (33, 31, 2)];

/// Both transposes, with the wrapper's launch shape, bit for bit against the CPU on values
/// with NaNs (quiet and signalling, either sign, with payloads), ties, infinities, subnormals and signed zeros.
#[test]
fn transposes_round_as_half() {
    let k = sim::load("bf16");
    for (s, shape) in TRANSPOSE_SHAPES.into_iter().enumerate() {
        let (rows, cols, batch) = shape;
        check_round_trip(&k, shape, cfg(shape), cfg((cols, rows, batch)), s);
    }
}

/// `transpose_bf16_to_f32` on arbitrary bf16 bits, signalling NaNs included: the header
/// promises the exact widening `bits << 16`, which is asserted bit for bit, against that
/// formula and against the CPU reference (`cpu::widen`, the same; `half`'s own `to_f32` would
/// quiet a signalling NaN).
#[test]
fn transpose_widening_keeps_every_bit() {
    let k = sim::load("bf16");
    let shape = (37, 70, 3);
    let (rows, cols, batch) = shape;
    let n = rows * cols * batch;
    let mut rng = Rng(0xB16_B175);
    let mut x: Vec<u16> = (0..n).map(|_| rng.bits() as u16).collect();
    for (i, s) in [0x7F81u16, 0xFF81, 0xFFFF, 0x7FC0, 0x7F80, 0xFF80, 0x0001, 0x8000, 0x0000].into_iter().enumerate() {
        x[i * 131 % n] = s;
    }
    let got = sim_to_f32(&k, &x, shape, cfg(shape)).unwrap_or_else(|e| panic!("transpose_bf16_to_f32: {e}"));
    let exact: Vec<f32> = (0..n)
        .map(|o| {
            let (b, j, i) = (o / (rows * cols), o / rows % cols, o % rows);
            f32::from_bits((x[b * rows * cols + i * cols + j] as u32) << 16)
        })
        .collect();
    assert_f32_bits("transpose_bf16_to_f32 (bits << 16)", &got, &exact);
    let x_bf16: Vec<bf16> = x.iter().map(|v| bf16::from_bits(*v)).collect();
    assert_f32_bits("transpose_bf16_to_f32 vs the CPU", &got, &cpu::transpose_to_f32(&x_bf16, batch, rows, cols));
}

/// Random bf16 bits for `transpose_bf16`, with NaNs (quiet and signalling, either sign, with
/// payloads), infinities, signed zeros and subnormals; never 0xFFFF, the bits of an unwritten
/// element ([`POISON_BF16`]).
fn random_bf16_bits(n: usize, seed: u64) -> Vec<u16> {
    let mut rng = Rng(seed);
    let mut x: Vec<u16> = (0..n).map(|_| rng.bits() as u16).map(|b| if b == POISON_BF16 { 0xFFC3 } else { b }).collect();
    let special = [0x7F81u16, 0xFF81, 0x7FC0, 0xFFC1, 0x7FE5, 0x7F80, 0xFF80, 0x0001, 0x807F, 0x8000, 0x0000];
    for (i, s) in special.into_iter().enumerate() {
        x[(i * 131 + 7) % n] = s;
    }
    x
}

/// `transpose_bf16` bit for bit against a CPU transpose of the bits (and, widened, against
/// `cpu::transpose_to_f32`, the reference of the widening transpose), with the wrapper's
/// launch shape: the transposes' shapes (partial tiles, a single row or column, one matrix and
/// several) and conv1's NHWC output [2, 56 x 56, 128] (a layer's real shape: rows = H W,
/// cols = C).
#[test]
fn transpose_bf16_copies_every_bit() {
    let k = sim::load("bf16");
    let shapes = TRANSPOSE_SHAPES.into_iter().chain([(1, 1, 1), (56 * 56, 128, 2)]);
    for (s, shape) in shapes.enumerate() {
        let (rows, cols, batch) = shape;
        let x = random_bf16_bits(rows * cols * batch, 0xB16_0000 + s as u64);
        let tag = format!("{batch} x [{rows}, {cols}]");
        let got = sim_bf16(&k, &x, shape, cfg(shape)).unwrap_or_else(|e| panic!("transpose_bf16 {tag}: {e}"));
        assert_bf16_bits(&format!("transpose_bf16 {tag}"), &got, &transpose_bits(&x, shape));
        let widened: Vec<f32> = got.iter().map(|b| f32::from_bits((*b as u32) << 16)).collect();
        let x_bf16: Vec<bf16> = x.iter().map(|v| bf16::from_bits(*v)).collect();
        assert_f32_bits(&format!("transpose_bf16 {tag}, widened"), &widened, &cpu::transpose_to_f32(&x_bf16, batch, rows, cols));
    }
}

/// `transpose_bf16` walking beyond its grid, as `transposes_walk_past_short_grids`: gridDim.y
/// cut to 2 (3 row tiles of 70 rows, and of 67) and gridDim.z 2 for 5 matrices.
#[test]
fn transpose_bf16_walks_past_short_grids() {
    let k = sim::load("bf16");
    for shape in [(70, 67, 5), (67, 70, 5)] {
        let x = random_bf16_bits(shape.0 * shape.1 * shape.2, 0xB16_0100);
        crate::with_grid_y_cap(2, || {
            let d = cfg(shape);
            let d = Dims { grid: (d.grid.0, d.grid.1, 2), ..d };
            assert!(d.grid.1 == 2 && shape.0.div_ceil(32) > 2, "no row-tile walk");
            let got = sim_bf16(&k, &x, shape, d).unwrap_or_else(|e| panic!("transpose_bf16 {shape:?}, grid {:?}: {e}", d.grid));
            assert_bf16_bits(&format!("transpose_bf16 {shape:?}, grid {:?}", d.grid), &got, &transpose_bits(&x, shape));
        });
    }
}

/// Both transposes walking beyond their grid: gridDim.y cut to 2 (`crate::with_grid_y_cap`),
/// so a block takes several row tiles (reusing the shared tile, past 65535 row tiles on a GPU),
/// and gridDim.z set by hand below the batch, standing for batch > 65535 (`transpose_cfg`
/// caps z at min(batch, 65535)), so a block takes several matrices.
#[test]
fn transposes_walk_past_short_grids() {
    let k = sim::load("bf16");
    // 70 rows: 3 row tiles forward; 67 columns: 3 row tiles back; 5 matrices over 2 z blocks.
    let shape = (70, 67, 5);
    let (rows, cols, batch) = shape;
    let short_z = |d: Dims| Dims { grid: (d.grid.0, d.grid.1, 2), ..d };
    crate::with_grid_y_cap(2, || {
        let (fwd, back) = (short_z(cfg(shape)), short_z(cfg((cols, rows, batch))));
        assert!(fwd.grid.1 == 2 && back.grid.1 == 2 && rows.div_ceil(32) > 2 && cols.div_ceil(32) > 2, "no row-tile walk");
        check_round_trip(&k, shape, fwd, back, 3);
    });
}

/// `text` with the first `from` inside the entry `entry` replaced by `to` (the two transposes
/// share most lines; `replacen` on the whole file would edit the first entry only).
fn edit_entry(text: &str, entry: &str, from: &str, to: &str) -> String {
    let start = text.find(&format!(".entry {entry}(")).unwrap_or_else(|| panic!("no entry {entry}"));
    let end = text[start + 1..].find(".entry ").map_or(text.len(), |e| start + 1 + e);
    let at = start + text[start..end].find(from).unwrap_or_else(|| panic!("`{from}` is not in {entry}"));
    format!("{}{to}{}", &text[..at], &text[at + from.len()..])
}

/// The simulator refuses either transpose without one of its barriers: without the first (the
/// tile is loaded, then read transposed) a thread reads tile words that other warps have not
/// written yet; without the second, a block walking to its next tile (or matrix) overwrites
/// words other threads may still be reading: a race on shared memory.
#[test]
fn missing_transpose_barriers_are_caught() {
    let shape = (70, 67, 5);
    let (rows, cols, batch) = shape;
    let x = awkward(rows * cols * batch);
    let xb: Vec<u16> = cpu::to_bf16(&x).iter().map(|v| v.to_bits()).collect();
    let first = "    bar.sync 0;\n    // Store:";
    let second = "    bar.sync 0;                              // the next tile reuses tr_tile\n";
    for entry in ["transpose_f32_to_bf16", "transpose_bf16_to_f32", "transpose_bf16"] {
        for (barrier, walk, expect) in [(first, false, "that no thread of the block wrote"), (second, true, "data race on shared memory")] {
            let k = sim::load_edited("bf16", |t| edit_entry(t, entry, barrier, &barrier.replacen("bar.sync 0;", "", 1)));
            // The second barrier only matters when a block takes a second tile: one block
            // along y and z walks every row tile of every matrix.
            let d = cfg(shape);
            let d = if walk { Dims { grid: (d.grid.0, 1, 1), ..d } } else { d };
            let err = crate::launch_error(|| {
                let r = match entry {
                    "transpose_f32_to_bf16" => sim_to_bf16(&k, &x, shape, d).map(drop),
                    "transpose_bf16_to_f32" => sim_to_f32(&k, &xb, shape, d).map(drop),
                    _ => sim_bf16(&k, &xb, shape, d).map(drop),
                };
                r.unwrap_or_else(|e| panic!("{e}"));
            });
            assert!(err.contains(expect), "{entry} without a barrier (walking: {walk}): expected an error with `{expect}`, got: {err}");
        }
    }
}

/// Wrong tile indices in the store phase are noticed: `transpose_f32_to_bf16` and
/// `transpose_bf16` reading the tile with row pitch 32 instead of the padded 33 (the simulator
/// refuses the read of a padding word no thread wrote, or else the comparison fails), and
/// `transpose_bf16_to_f32` and `transpose_bf16` reading tile[k][tx] (the comparison fails). A
/// control: pitch 32 in both phases is still correct, so the faults are caught for the
/// mismatch, not the pitch.
#[test]
fn a_wrong_tile_index_is_caught() {
    let shape = (64, 32, 2);
    let (rows, cols, batch) = shape;
    let x = awkward(rows * cols * batch);
    let (load, store) = ("mad.lo.u32 %r18, %r14, 33, %r4;", "mad.lo.u32 %r18, %r4, 33, %r14;");

    let k = sim::load_edited("bf16", |t| edit_entry(t, "transpose_f32_to_bf16", store, "mad.lo.u32 %r18, %r4, 32, %r14;"));
    match sim_to_bf16(&k, &x, shape, cfg(shape)) {
        Err(e) => assert!(e.contains("no thread of the block wrote"), "{e}"),
        Ok(got) => assert!(
            got.iter().zip(cpu::transpose_to_bf16(&x, batch, rows, cols)).any(|(g, w)| *g != w.to_bits()),
            "transpose_f32_to_bf16 reading the tile with pitch 32 matched the CPU"
        ),
    }

    // The second entry, both phases with pitch 32: a consistent (unpadded) tile, still correct.
    let xb: Vec<u16> = cpu::to_bf16(&x).iter().map(|v| v.to_bits()).collect();
    let want = cpu::transpose_to_f32(&cpu::to_bf16(&x), batch, rows, cols);
    let k = sim::load_edited("bf16", |t| {
        let t = edit_entry(t, "transpose_bf16_to_f32", load, "mad.lo.u32 %r18, %r14, 32, %r4;");
        edit_entry(&t, "transpose_bf16_to_f32", store, "mad.lo.u32 %r18, %r4, 32, %r14;")
    });
    let got = sim_to_f32(&k, &xb, shape, cfg(shape)).unwrap_or_else(|e| panic!("an unpadded tile: {e}"));
    assert_f32_bits("transpose_bf16_to_f32 with an unpadded tile", &got, &want);
    // Its store phase reading tile[k][tx] instead of tile[tx][k]: every word read was written
    // (full tiles), so only the comparison can notice (each tile copied, not transposed).
    let k = sim::load_edited("bf16", |t| edit_entry(t, "transpose_bf16_to_f32", store, "mad.lo.u32 %r18, %r14, 33, %r4;"));
    let got = sim_to_f32(&k, &xb, shape, cfg(shape)).unwrap_or_else(|e| panic!("an untransposed tile read: {e}"));
    assert!(
        got.iter().zip(&want).any(|(g, w)| g.to_bits() != w.to_bits()),
        "transpose_bf16_to_f32 reading the tile untransposed matched the CPU"
    );

    // transpose_bf16: the store phase with pitch 32, then reading tile[k][tx].
    let want = transpose_bits(&xb, shape);
    let k = sim::load_edited("bf16", |t| edit_entry(t, "transpose_bf16", store, "mad.lo.u32 %r18, %r4, 32, %r14;"));
    match sim_bf16(&k, &xb, shape, cfg(shape)) {
        Err(e) => assert!(e.contains("no thread of the block wrote"), "{e}"),
        Ok(got) => {
            assert!(got.iter().zip(&want).any(|(g, w)| *g != w.to_bits()), "transpose_bf16 reading the tile with pitch 32 matched the CPU")
        }
    }
    let k = sim::load_edited("bf16", |t| edit_entry(t, "transpose_bf16", store, "mad.lo.u32 %r18, %r14, 33, %r4;"));
    let got = sim_bf16(&k, &xb, shape, cfg(shape)).unwrap_or_else(|e| panic!("an untransposed tile read: {e}"));
    assert!(got.iter().zip(&want).any(|(g, w)| *g != w.to_bits()), "transpose_bf16 reading the tile untransposed matched the CPU");
}

/// How the bf16 kernels access memory (see `access.rs`): the casts and bias + ReLU are
/// coalesced; the transposes at a layer's shape (64 channels, 32 x 32 tiles) are coalesced on
/// both sides (`transpose_bf16`: a warp's 32 bf16 are 64 bytes, 2 sectors, each way), and their
/// padded tile (pitch 33) has no bank conflict, where the unpadded tile (pitch 32, still
/// correct: `a_wrong_tile_index_is_caught`) reads each tile column from one bank: 32 passes
/// per request of that phase. At conv5's 14 x 14, `transpose_bf16`'s NCHW rows are 392 bytes,
/// 8 p mod 32 into a sector for row p: its stores straddle a sector more in three rows of four.
#[test]
fn access_bf16_kernels() {
    use crate::access::{assert_coalesced, profile};
    let k = sim::load("bf16");
    let mut mem = Memory::default();
    let n = 64 * 1024;
    let x = mem.upload(&Rng(3).vec(n, -2.0, 2.0));
    let xb = mem.poisoned(2 * n);
    let back = mem.poisoned(4 * n);
    let p = profile(&k, &mut mem, "cast_f32_to_bf16", grid_1d(n), &[Arg::U64(xb), Arg::U64(x), Arg::U32(n as u32)], "65536");
    assert_coalesced("cast_f32_to_bf16", &p);
    let p = profile(&k, &mut mem, "cast_bf16_to_f32", grid_1d(n), &[Arg::U64(back), Arg::U64(xb), Arg::U32(n as u32)], "65536");
    assert_coalesced("cast_bf16_to_f32", &p);
    let cols = 256;
    let bias = mem.upload(&Rng(4).vec(cols, -1.0, 1.0));
    let args = [Arg::U64(xb), Arg::U64(bias), Arg::U32(n as u32), Arg::U32(cols as u32)];
    let p = profile(&k, &mut mem, "bias_relu_fwd_bf16", grid_1d(n), &args, "256 x 256");
    assert_coalesced("bias_relu_fwd_bf16", &p);

    // conv1_2's planes at 1/49 of their size: 64 channels of 32 x 32 pixels, 2 images.
    let shape @ (rows, cols, batch) = (64, 1024, 2);
    let n = rows * cols * batch;
    let x = mem.upload(&Rng(5).vec(n, -2.0, 2.0));
    let t = mem.poisoned(2 * n);
    let back = mem.poisoned(4 * n);
    let what = "2 x [64, 1024]";
    let args = |out: u64, x: u64, rows: usize, cols: usize| {
        [Arg::U64(out), Arg::U64(x), Arg::U32(rows as u32), Arg::U32(cols as u32), Arg::U32(batch as u32)]
    };
    let p = profile(&k, &mut mem, "transpose_f32_to_bf16", cfg(shape), &args(t, x, rows, cols), what);
    assert_coalesced("transpose_f32_to_bf16", &p);
    let p = profile(&k, &mut mem, "transpose_bf16_to_f32", cfg((cols, rows, batch)), &args(back, t, cols, rows), what);
    assert_coalesced("transpose_bf16_to_f32", &p);
    // The bf16 NHWC [2, 1024, 64] that transpose_f32_to_bf16 wrote, back to NCHW bf16.
    let tb = mem.poisoned(2 * n);
    let p = profile(&k, &mut mem, "transpose_bf16", cfg((cols, rows, batch)), &args(tb, t, cols, rows), "2 x [1024, 64]");
    assert_coalesced("transpose_bf16", &p);

    // conv5's NHWC [2, 14 x 14, 64] to NCHW: the loads (rows of 64 bf16, 128 bytes) coalesced.
    // The stores: out row p (p = b C + c) starts 392 p bytes in, 8 p mod 32 into a sector. A
    // full warp's 64 bytes (6 of the 7 row tiles: 196 = 6 x 32 + 4) take 2 sectors from a
    // sector's start, 3 from 8, 16 or 24 bytes into one; the last tile's 4 lanes (8 bytes) 1
    // either way. Four rows in a row: 13 + 3 x 19 = 70 sectors for 52.
    let (hw, c) = (14 * 14, 64);
    let x14 = mem.upload(&random_bf16_bits(hw * c * batch, 6));
    let out14 = mem.poisoned(2 * hw * c * batch);
    let p = profile(&k, &mut mem, "transpose_bf16", cfg((hw, c, batch)), &args(out14, x14, hw, c), "2 x [196, 64]");
    assert_eq!(p.load.sectors, p.load.ideal, "transpose_bf16 at 14 x 14: uncoalesced loads: {p}");
    let quads = (c * batch / 4) as u64;
    assert_eq!((p.store.sectors, p.store.ideal), (quads * 70, quads * 52), "transpose_bf16 at 14 x 14: stores: {p}");
    assert_eq!(p.shared.wavefronts, p.shared.ideal, "transpose_bf16 at 14 x 14: bank conflicts: {p}");

    let (load, store) = ("mad.lo.u32 %r18, %r14, 33, %r4;", "mad.lo.u32 %r18, %r4, 33, %r14;");
    let unpadded = sim::load_edited("bf16", |t| {
        let t = edit_entry(t, "transpose_f32_to_bf16", load, "mad.lo.u32 %r18, %r14, 32, %r4;");
        edit_entry(&t, "transpose_f32_to_bf16", store, "mad.lo.u32 %r18, %r4, 32, %r14;")
    });
    let p = profile(&unpadded, &mut mem, "transpose_f32_to_bf16", cfg(shape), &args(t, x, rows, cols), "unpadded tile");
    assert_eq!((p.load.overhead(), p.store.overhead()), (1.0, 1.0), "the unpadded tile changes shared memory only: {p}");
    // Half the shared requests (the column reads) take 32 passes, the other half 1.
    assert_eq!(p.shared.conflicts(), 16.5, "the unpadded tile's bank conflicts: {p}");
}
