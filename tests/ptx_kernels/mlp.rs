//! `kernels/mlp.ptx`, launched as `ops::mlp`'s wrappers launch it (with the `reduce.ptx`
//! finals they launch after it): the softmax cross-entropy (`softmax_xent_f32` then
//! `sum_final_f64`) against `CpuStorage::softmax_cross_entropy`, to the accuracy of the kernel's
//! own exp and ln; the bias + ReLU forward (`bias_relu_fwd_f32`) bit for bit against
//! `CpuStorage::bias_relu_assign`; its backward (`bias_relu_bwd_partial_f32` then
//! `reduce_cols_final_f64`) against `CpuStorage::bias_relu_backward` (`relu_backward`, then
//! `reduce_to_mid` with inner 1), bit for bit on inputs whose f64 column sums are exact in any
//! order (see `reduce.rs`).

use hyperseg_engine::backend::cpu::CpuStorage;
use hyperseg_engine::backend::cuda::kernels::ops::{self, BLOCK};
use hyperseg_engine::backend::BackendStorage;

use crate::reduce::{cols_final, sum_final};
use crate::sim::{self, Arg, Kernels, Memory};
use crate::{assert_bits, dims, grid_1d, run, Rng};

/// `ops::softmax_cross_entropy` in the simulator: `softmax_xent_f32` on `ops::sum_blocks(rows)`
/// blocks of 256 (class weights, or ones, uploaded as k f32), then `reduce.ptx`'s
/// `sum_final_f64` with scale `inv`. Returns (loss, gradient).
fn softmax_xent_sim(mlp: &Kernels, reduce: &Kernels, z: &[f32], labels: &[u32], k: usize, weights: Option<&[f32]>) -> (f32, Vec<f32>) {
    let rows = labels.len() as u32;
    let inv = ops::softmax_xent_inv(labels, weights);
    let ones = vec![1.0f32; k];
    let g = ops::sum_blocks(rows);
    let mut mem = Memory::default();
    let grad = mem.poisoned(4 * z.len());
    let partial = mem.poisoned(8 * g as usize);
    let zd = mem.upload(z);
    let ld = mem.upload(labels);
    let wd = mem.upload(weights.unwrap_or(&ones));
    let args =
        [Arg::U64(grad), Arg::U64(partial), Arg::U64(zd), Arg::U64(ld), Arg::U64(wd), Arg::U32(rows), Arg::U32(k as u32), Arg::F64(inv)];
    run(mlp, &mut mem, "softmax_xent_f32", dims(ops::cfg((g, 1, 1), BLOCK)), &args);
    let loss = sum_final(reduce, &mut mem, partial, g, inv);
    (mem.download::<f32>(loss, 1)[0], mem.download(grad, z.len()))
}

fn softmax_xent_cpu(z: &[f32], labels: &[u32], k: usize, weights: Option<&[f32]>) -> (f32, Vec<f32>) {
    let (loss, grad) = CpuStorage::F32(z.to_vec()).softmax_cross_entropy(labels, k, weights).expect("CPU softmax_cross_entropy");
    (loss.as_f32()[0], grad.as_f32().to_vec())
}

/// ln sum exp of a row, in f64.
fn lse64(row: &[f32]) -> f64 {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()
}

/// How far, relative, the kernel's p = exp(z - lse) may be from the CPU's, derived from the
/// header's accuracy (exp and ln within 3 ulp, f32 throughout): the row sums of exps agree to a
/// few ulp, so ln(sum) to about 8 2^-24 absolute and lse = max + ln(sum) to 2 ulp(lse) more;
/// d = z - lse then differs by that plus one rounding, ulp(d), and exp adds its own 3 ulp:
/// |dp / p| <= 2^-23 (2 |lse| + |d| + 8). Twice that, for margin.
fn p_slack(lse: f64, d: f64) -> f64 {
    2f64.powi(-23) * (4.0 * lse.abs() + 2.0 * d.abs() + 16.0)
}

/// The first element (row, class) where a gradient and the CPU's differ by more than c p
/// [`p_slack`] (c = (f32)(w[y] inv), the row's factor), plus two f32 ulp of the result: both
/// sides subtract the one-hot and scale alike, but a tiny difference in p can still move the
/// result across a rounding boundary (for the label's class, one ulp of 1, not of p).
fn grad_mismatch(got: &[f32], want: &[f32], z: &[f32], labels: &[u32], k: usize, weights: Option<&[f32]>) -> Option<String> {
    let inv = ops::softmax_xent_inv(labels, weights);
    for (r, &y) in labels.iter().enumerate() {
        let row = &z[r * k..(r + 1) * k];
        let lse = lse64(row);
        let c = (weights.map_or(1.0, |w| w[y as usize]) as f64 * inv) as f32 as f64;
        for j in 0..k {
            let (g, w) = (got[r * k + j], want[r * k + j]);
            let d = row[j] as f64 - lse;
            let tol = c.abs() * d.exp() * p_slack(lse, d) + 2.0 * f32::EPSILON as f64 * (w as f64).abs() + 1e-44;
            let ok = g == w || (g as f64 - w as f64).abs() <= tol || (g.is_nan() && w.is_nan());
            if !ok {
                return Some(format!("row {r} (label {y}), class {j}: {g:e}, the CPU reference has {w:e} (tolerance {tol:e})"));
            }
        }
    }
    None
}

fn assert_grad_close(what: &str, got: &[f32], want: &[f32], z: &[f32], labels: &[u32], k: usize, weights: Option<&[f32]>) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(m) = grad_mismatch(got, want, z, labels, k, weights) {
        panic!("{what}: {m}");
    }
}

/// The loss is inv sum_r w[y_r] (lse_r - z_r[y_r]); lse - z[y] differs from the CPU's by the
/// same absolute error as the gradient's d (see [`p_slack`], which bounds it twice over), and
/// the result by one more rounding to f32.
fn assert_loss_close(what: &str, got: f32, want: f32, z: &[f32], labels: &[u32], k: usize, weights: Option<&[f32]>) {
    let inv = ops::softmax_xent_inv(labels, weights);
    let terms: f64 = labels
        .iter()
        .enumerate()
        .map(|(r, &y)| {
            let row = &z[r * k..(r + 1) * k];
            let lse = lse64(row);
            weights.map_or(1.0, |w| w[y as usize]) as f64 * p_slack(lse, lse - row[y as usize] as f64)
        })
        .sum();
    let tol = inv * terms + 2.0 * f32::EPSILON as f64 * (want as f64).abs();
    let ok = got == want || ((got - want).abs() as f64) <= tol || (got.is_nan() && want.is_nan());
    assert!(ok, "{what}: the loss is {got:e}, the CPU reference has {want:e} (tolerance {tol:e})");
}

fn random_labels(rng: &mut Rng, rows: usize, k: usize) -> Vec<u32> {
    (0..rows).map(|_| rng.below(k as u32)).collect()
}

/// Runs both sides and compares loss and gradient.
fn check_softmax_xent(what: &str, z: &[f32], labels: &[u32], k: usize, weights: Option<&[f32]>) {
    let (mlp, reduce) = (sim::load("mlp"), sim::load("reduce"));
    let (loss, grad) = softmax_xent_sim(&mlp, &reduce, z, labels, k, weights);
    let (loss_cpu, grad_cpu) = softmax_xent_cpu(z, labels, k, weights);
    assert_grad_close(&format!("softmax_xent_f32 gradient, {what}"), &grad, &grad_cpu, z, labels, k, weights);
    assert_loss_close(&format!("softmax_xent_f32 + sum_final_f64, {what}"), loss, loss_cpu, z, labels, k, weights);
}

/// Three blocks (the last one ragged), 10 classes.
#[test]
fn softmax_xent_matches_cpu() {
    let mut rng = Rng(0x50F7);
    let (rows, k) = (700, 10);
    let z = rng.vec(rows * k, -8.0, 8.0);
    let labels = random_labels(&mut rng, rows, k);
    check_softmax_xent("700 rows of 10 classes", &z, &labels, k, None);
}

/// Class weights, one of them zero (its rows' gradient is zero and their loss term too).
#[test]
fn softmax_xent_with_class_weights_matches_cpu() {
    let mut rng = Rng(0x3E16);
    let (rows, k) = (333, 7);
    let z = rng.vec(rows * k, -8.0, 8.0);
    let labels = random_labels(&mut rng, rows, k);
    let mut w = rng.vec(k, 0.0, 3.0);
    w[4] = 0.0;
    check_softmax_xent("333 rows of 7 weighted classes", &z, &labels, k, Some(&w));
}

/// One class (the gradient is exactly zero), two classes, and rows whose exps underflow
/// (spread of 1e4), round to subnormals (z - lse in [-103, -87]), tie (all equal), or hold
/// -inf (a class that never wins) and values near f32::MAX.
#[test]
fn softmax_xent_extreme_logits_match_cpu() {
    let mut rng = Rng(0xE7);
    let z = rng.vec(300, -8.0, 8.0);
    check_softmax_xent("one class", &z, &random_labels(&mut rng, 300, 1), 1, None);
    check_softmax_xent("two classes", &z, &random_labels(&mut rng, 150, 2), 2, None);

    let k = 6;
    let mut rows: Vec<[f32; 6]> = vec![
        [1e4, -1e4, 0.0, 5e3, -3.0, 1e4],
        [0.0, -87.0, -90.5, -95.25, -100.0, -103.0],
        [2.5; 6],
        [f32::NEG_INFINITY, 1.0, 2.0, 3.0, f32::NEG_INFINITY, -1.0],
        [3.0e38, 3.1e38, -3.0e38, 0.0, 3.1e38, 1e38],
        [-1e-40, 1e-40, 0.0, -0.0, 1.4e-45, -f32::MIN_POSITIVE],
    ];
    for _ in 0..40 {
        let mut r = [0.0; 6];
        r.iter_mut().for_each(|v| *v = rng.f(-30.0, 30.0));
        rows.push(r);
    }
    let z: Vec<f32> = rows.concat();
    let labels: Vec<u32> = (0..rows.len() as u32).map(|r| [0, 5, 3, 2, 1, 4][r as usize % 6]).collect();
    check_softmax_xent("extreme rows", &z, &labels, k, None);
    // The label at -inf: an infinite loss, a gradient of -c at the label.
    check_softmax_xent("a label at -inf", &rows[3], &[0], k, None);
}

/// A NaN or +inf logit makes its row's gradient NaN (and the loss NaN); other rows are
/// unaffected.
#[test]
fn softmax_xent_nan_and_inf_rows_match_cpu() {
    let mut rng = Rng(0xAA);
    let (rows, k) = (300, 5);
    let labels = random_labels(&mut rng, rows, k);
    for (what, v) in [("a NaN logit", f32::NAN), ("a +inf logit", f32::INFINITY)] {
        let mut z = rng.vec(rows * k, -4.0, 4.0);
        z[7 * k + 2] = v;
        z[299 * k] = v;
        let (mlp, reduce) = (sim::load("mlp"), sim::load("reduce"));
        let (loss, grad) = softmax_xent_sim(&mlp, &reduce, &z, &labels, k, None);
        let (loss_cpu, grad_cpu) = softmax_xent_cpu(&z, &labels, k, None);
        assert!(loss.is_nan() && loss_cpu.is_nan(), "softmax_xent_f32 with {what}: loss {loss:e}, the CPU's {loss_cpu:e}");
        for r in [7, 299] {
            assert!(
                grad[r * k..(r + 1) * k].iter().all(|g| g.is_nan()),
                "softmax_xent_f32 with {what}: row {r} is {:?}",
                &grad[r * k..(r + 1) * k]
            );
        }
        assert_grad_close(&format!("softmax_xent_f32 gradient with {what}"), &grad, &grad_cpu, &z, &labels, k, None);
    }
}

/// Every label's weight zero: inv = 0, so the loss is 0 and the gradient is +-0 exactly as on
/// the CPU (both compute (f32)(0 * 0) * (p - onehot)).
#[test]
fn softmax_xent_with_zero_total_weight_is_zero() {
    let mut rng = Rng(0x2E70);
    let (rows, k) = (260, 4);
    let z = rng.vec(rows * k, -4.0, 4.0);
    let labels: Vec<u32> = (0..rows).map(|r| (r % 2) as u32).collect();
    let w = [0.0, 0.0, 1.0, 2.0];
    let (mlp, reduce) = (sim::load("mlp"), sim::load("reduce"));
    let (loss, grad) = softmax_xent_sim(&mlp, &reduce, &z, &labels, k, Some(&w));
    let (loss_cpu, grad_cpu) = softmax_xent_cpu(&z, &labels, k, Some(&w));
    assert_bits("softmax_xent_f32 + sum_final_f64 with zero total weight", &[loss], &[loss_cpu]);
    assert_bits("softmax_xent_f32 gradient with zero total weight", &grad, &grad_cpu);
}

/// `ops::bias_relu_forward` in the simulator: `bias_relu_fwd_f32` in place on `y`, 1-D grid.
fn bias_relu_forward_sim(k: &Kernels, y: &[f32], b: &[f32]) -> Vec<f32> {
    let n = y.len();
    let mut mem = Memory::default();
    let yd = mem.upload(y);
    let bd = mem.upload(b);
    run(k, &mut mem, "bias_relu_fwd_f32", grid_1d(n), &[Arg::U64(yd), Arg::U64(bd), Arg::U32(n as u32), Arg::U32(b.len() as u32)]);
    mem.download(yd, n)
}

fn bias_relu_forward_cpu(y: &[f32], b: &[f32]) -> Vec<f32> {
    let mut s = CpuStorage::F32(y.to_vec());
    s.bias_relu_assign(&CpuStorage::F32(b.to_vec()), y.len() / b.len(), b.len()).expect("CPU bias_relu_assign");
    s.as_f32().to_vec()
}

/// Ragged blocks, a bias longer than a block, a single element; then NaN (max gives 0),
/// infinities, an overflowing sum, -0 + -0 (max(-0, +0) is +0 in PTX), subnormals.
#[test]
fn bias_relu_forward_matches_cpu_bitwise() {
    let k = sim::load("mlp");
    for (rows, cols) in [(37usize, 19usize), (5, 300), (1, 1), (300, 7)] {
        let mut rng = Rng(0xB1A5 + (rows * cols) as u64);
        let y = rng.vec(rows * cols, -2.0, 2.0);
        let b = rng.vec(cols, -1.0, 1.0);
        assert_bits(&format!("bias_relu_fwd_f32, [{rows}, {cols}]"), &bias_relu_forward_sim(&k, &y, &b), &bias_relu_forward_cpu(&y, &b));
    }
    let mut y = Rng(0xF00).vec(4 * 10, -2.0, 2.0);
    let b = [0.5, -0.0, f32::MAX, 1e-40, -1.0, f32::INFINITY, 0.0, -2.0, f32::NAN, 0.25];
    let specials = [f32::NAN, -0.0, f32::MAX, -1e-40, f32::NEG_INFINITY, f32::NEG_INFINITY, -0.0, f32::INFINITY, 1.0, -0.25];
    y[10..20].copy_from_slice(&specials);
    assert_bits("bias_relu_fwd_f32 with special values", &bias_relu_forward_sim(&k, &y, &b), &bias_relu_forward_cpu(&y, &b));
}

/// `ops::bias_relu_backward` in the simulator: `bias_relu_bwd_partial_f32` on grid
/// (ceil(cols/256), chunks) with `ops::row_chunks`, then `reduce.ptx`'s `reduce_cols_final_f64`.
/// Returns (dz, db).
fn bias_relu_backward_sim(mlp: &Kernels, reduce: &Kernels, y: &[f32], dy: &[f32], rows: usize, cols: usize) -> (Vec<f32>, Vec<f32>) {
    let (rows32, cols32) = (rows as u32, cols as u32);
    let (chunks, rpc) = ops::row_chunks(rows32, cols32);
    let mut mem = Memory::default();
    let dz = mem.poisoned(4 * rows * cols);
    let partial = mem.poisoned(8 * chunks as usize * cols);
    let dyd = mem.upload(dy);
    let yd = mem.upload(y);
    let args = [Arg::U64(dz), Arg::U64(partial), Arg::U64(dyd), Arg::U64(yd), Arg::U32(rows32), Arg::U32(cols32), Arg::U32(rpc)];
    run(mlp, &mut mem, "bias_relu_bwd_partial_f32", dims(ops::cfg((cols32.div_ceil(BLOCK), chunks, 1), BLOCK)), &args);
    let db = cols_final(reduce, &mut mem, partial, cols32, chunks);
    (mem.download(dz, rows * cols), mem.download(db, cols))
}

fn bias_relu_backward_cpu(y: &[f32], dy: &[f32], rows: usize, cols: usize) -> (Vec<f32>, Vec<f32>) {
    let (dz, db) =
        CpuStorage::F32(y.to_vec()).bias_relu_backward(&CpuStorage::F32(dy.to_vec()), rows, cols).expect("CPU bias_relu_backward");
    (dz.as_f32().to_vec(), db.as_f32().to_vec())
}

/// A ReLU output: about half exact zeros (where the gradient must stop), the rest positive.
fn relu_output(rng: &mut Rng, n: usize) -> Vec<f32> {
    rng.vec(n, -2.0, 2.0).into_iter().map(|v| v.max(0.0)).collect()
}

fn check_bias_relu_backward(mlp: &Kernels, reduce: &Kernels, what: &str, y: &[f32], dy: &[f32], rows: usize, cols: usize) {
    let (dz, db) = bias_relu_backward_sim(mlp, reduce, y, dy, rows, cols);
    let (dz_cpu, db_cpu) = bias_relu_backward_cpu(y, dy, rows, cols);
    assert_bits(&format!("bias_relu_bwd_partial_f32 dz, {what}"), &dz, &dz_cpu);
    assert_bits(&format!("bias_relu_bwd_partial_f32 + reduce_cols_final_f64 db, {what}"), &db, &db_cpu);
}

/// One block, two column blocks, 300 one-row chunks, three column blocks, a ragged last chunk
/// (1025 rows in chunks of 2).
#[test]
fn bias_relu_backward_matches_cpu_bitwise() {
    assert_eq!(ops::row_chunks(1025, 5), (513, 2), "1025 rows no longer end in a ragged chunk");
    let (mlp, reduce) = (sim::load("mlp"), sim::load("reduce"));
    for (rows, cols) in [(1usize, 1usize), (37, 300), (300, 3), (40, 513), (1025, 5)] {
        let mut rng = Rng(0xBAC + (rows * 31 + cols) as u64);
        let y = relu_output(&mut rng, rows * cols);
        let dy = rng.vec(rows * cols, -4.0, 4.0);
        check_bias_relu_backward(&mlp, &reduce, &format!("[{rows}, {cols}]"), &y, &dy, rows, cols);
    }
}

/// y NaN, -0, subnormal or +inf (only y > 0 passes the gradient); dy NaN or infinite where it
/// passes (the column sum is NaN or infinite) and where it does not (nothing leaks).
#[test]
fn bias_relu_backward_special_values_match_cpu() {
    let (mlp, reduce) = (sim::load("mlp"), sim::load("reduce"));
    let (rows, cols) = (50, 8);
    let mut rng = Rng(0x5BEC);
    let mut y = relu_output(&mut rng, rows * cols);
    let mut dy = rng.vec(rows * cols, -4.0, 4.0);
    let at = |r: usize, c: usize| r * cols + c;
    for (r, c, yv, dyv) in [
        (0, 0, f32::NAN, 1.0),
        (1, 1, -0.0, 2.0),
        (2, 2, 1e-40, 3.0),
        (3, 3, f32::INFINITY, -1.5),
        (4, 4, 1.0, f32::NAN),
        (5, 5, 0.0, f32::NAN),
        (6, 6, 2.0, f32::INFINITY),
        (7, 6, 3.0, f32::NEG_INFINITY),
        (8, 7, 0.5, f32::MAX),
        (9, 7, 0.5, f32::MAX),
        (10, 0, -0.0, f32::INFINITY),
    ] {
        y[at(r, c)] = yv;
        dy[at(r, c)] = dyv;
    }
    check_bias_relu_backward(&mlp, &reduce, "special values", &y, &dy, rows, cols);
}

/// The backward check notices a ReLU gradient passed at y == 0 (`setp.ge` for `setp.gt`, the
/// classic subgradient slip), planted in the PTX text.
#[test]
fn a_relu_gradient_passed_at_zero_is_caught() {
    let mlp = sim::load_edited("mlp", |t| t.replacen("setp.gt.f32 %p3, %f2, 0f00000000;", "setp.ge.f32 %p3, %f2, 0f00000000;", 1));
    let reduce = sim::load("reduce");
    let (rows, cols) = (37, 300);
    let mut rng = Rng(0xFA17);
    let y = relu_output(&mut rng, rows * cols);
    let dy = rng.vec(rows * cols, -4.0, 4.0);
    let (dz, db) = bias_relu_backward_sim(&mlp, &reduce, &y, &dy, rows, cols);
    let (dz_cpu, db_cpu) = bias_relu_backward_cpu(&y, &dy, rows, cols);
    let differs = |a: &[f32], b: &[f32]| a.iter().zip(b).any(|(g, w)| g.to_bits() != w.to_bits());
    assert!(differs(&dz, &dz_cpu) && differs(&db, &db_cpu), "a ReLU passing the gradient at y == 0 matched the CPU's dz and db");
}

/// The softmax tolerance is tight enough to notice exp without the low part of its Cody-Waite
/// ln 2 (an error of j * 1.4e-6 in the reduced argument), planted in the PTX text.
#[test]
fn an_exp_missing_its_low_ln2_part_is_caught() {
    let mlp = sim::load_edited("mlp", |t| t.replacen("fma.rn.f32 %f4, %f3, 0fB5BFBE8E, %f4;", "add.rn.f32 %f4, %f4, 0f00000000;", 1));
    let reduce = sim::load("reduce");
    let mut rng = Rng(0x50F7);
    let (rows, k) = (300, 10);
    let z = rng.vec(rows * k, -8.0, 8.0);
    let labels = random_labels(&mut rng, rows, k);
    let (_, grad) = softmax_xent_sim(&mlp, &reduce, &z, &labels, k, None);
    let (_, grad_cpu) = softmax_xent_cpu(&z, &labels, k, None);
    let mismatch = grad_mismatch(&grad, &grad_cpu, &z, &labels, k, None);
    assert!(mismatch.is_some(), "softmax_xent_f32 with an exp missing ln2_lo passed the gradient comparison");
}

/// How the three entries access memory at the paper's training shapes (1600 sampled pixels,
/// 2 classes; the bias + ReLU pieces on `[136, 2048]`: fc2's width, cut by `ops::row_chunks`
/// into chunks of 2 rows). The bias + ReLU forward and backward are coalesced: consecutive
/// lanes take consecutive elements of a row (a multiple of 32 wide), also of the bias and of
/// the f64 partials, and the backward's chunk loop steps a whole row (8 KiB) at a time. The loss
/// gives each lane a row of k = 2 logits: a warp's 32 rows are 256 bytes (8 sectors), and each
/// of its per-class requests reads one f32 of every 8-byte row, so it touches all 8 sectors
/// where its 128 bytes need 4 (x2, loads and stores alike); the labels are coalesced, and
/// weights[y] is one sector. Its block sum's shared memory (one f64 slot per warp, written by
/// lane 0 of each warp, read by the first 8 lanes) has no bank conflict.
#[test]
fn access_mlp() {
    use crate::access::{assert_coalesced, profile};
    let k = sim::load("mlp");
    let mut rng = Rng(0xACC);

    let (rows, classes) = (1600usize, 2usize);
    let z = rng.vec(rows * classes, -4.0, 4.0);
    let labels = random_labels(&mut rng, rows, classes);
    let g = ops::sum_blocks(rows as u32);
    let mut mem = Memory::default();
    let grad = mem.poisoned(4 * z.len());
    let partial = mem.poisoned(8 * g as usize);
    let (zd, ld, wd) = (mem.upload(&z), mem.upload(&labels), mem.upload(&[1.0f32; 2]));
    let inv = ops::softmax_xent_inv(&labels, None);
    let args = [
        Arg::U64(grad),
        Arg::U64(partial),
        Arg::U64(zd),
        Arg::U64(ld),
        Arg::U64(wd),
        Arg::U32(rows as u32),
        Arg::U32(classes as u32),
        Arg::F64(inv),
    ];
    let p = profile(&k, &mut mem, "softmax_xent_f32", dims(ops::cfg((g, 1, 1), BLOCK)), &args, "1600 rows of 2 classes");
    // Per warp of 32 rows (1600 / 32 = 50, all full): the labels (4 sectors), 3 k requests on
    // the logits (max, exp sum, gradient) and z[y] (8 sectors each, 4 needed), weights[y] (1);
    // stores: k gradient requests (8 for 4), and per block one f64 partial (1 for 1).
    let (warps, blocks, k2) = ((rows / 32) as u64, g as u64, classes as u64);
    let load = (warps * (4 + (3 * k2 + 1) * 8 + 1), warps * (4 + (3 * k2 + 1) * 4 + 1));
    assert_eq!((p.load.sectors, p.load.ideal), load, "softmax_xent_f32 loads: {p}");
    assert_eq!((p.store.sectors, p.store.ideal), (warps * k2 * 8 + blocks, warps * k2 * 4 + blocks), "softmax_xent_f32 stores: {p}");
    assert_eq!(p.shared.wavefronts, p.shared.ideal, "softmax_xent_f32: shared-memory bank conflicts: {p}");

    let (rows, cols) = (136usize, 2048usize);
    let n = rows * cols;
    let y = mem.upload(&rng.vec(n, -2.0, 2.0));
    let b = mem.upload(&rng.vec(cols, -1.0, 1.0));
    let what = "[136, 2048]";
    let args = [Arg::U64(y), Arg::U64(b), Arg::U32(n as u32), Arg::U32(cols as u32)];
    let p = profile(&k, &mut mem, "bias_relu_fwd_f32", grid_1d(n), &args, what);
    assert_coalesced("bias_relu_fwd_f32", &p);

    let (rows32, cols32) = (rows as u32, cols as u32);
    let (chunks, rpc) = ops::row_chunks(rows32, cols32);
    assert_eq!(rpc, 2, "the chunks no longer take several rows");
    let dz = mem.poisoned(4 * n);
    let partial = mem.poisoned(8 * chunks as usize * cols);
    let dy = mem.upload(&rng.vec(n, -4.0, 4.0));
    let args = [Arg::U64(dz), Arg::U64(partial), Arg::U64(dy), Arg::U64(y), Arg::U32(rows32), Arg::U32(cols32), Arg::U32(rpc)];
    let d = dims(ops::cfg((cols32.div_ceil(BLOCK), chunks, 1), BLOCK));
    let p = profile(&k, &mut mem, "bias_relu_bwd_partial_f32", d, &args, what);
    assert_coalesced("bias_relu_bwd_partial_f32", &p);
}
