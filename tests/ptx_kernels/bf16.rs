//! `kernels/bf16.ptx`: the casts and bias + ReLU on bf16 buffers, bit for bit against
//! `backend::cpu::bf16` (that is, `half`'s rounding).

use half::bf16;
use hyperseg_engine::backend::cpu::bf16 as cpu;

use crate::sim::{self, Arg, Memory};
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
