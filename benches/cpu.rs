//! The CPU backend's two heavy kernels, reported in GFLOP/s (criterion's "elem/s" with
//! `Throughput::Elements(flops)`): the GEMM of the MLP's first layer (1600 x 5568 by
//! 5568 x 4096, 73 GFLOP) and a 3x3 64 -> 64 convolution on 1x64x56x56, forward and backward;
//! and the sparse hypercolumn gather of a training step of the tiny preset (1600 points of a
//! batch of 5, six taps, 184 channels), forward and backward, in bytes of hypercolumns per
//! second.
//!
//! Run: `cargo bench --bench cpu`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, Criterion, SamplingMode, Throughput};
use hyperseg_engine::backend::{ConvSpec, GatherSpec, GemmSpec, SamplePoint};
use hyperseg_engine::storage::Storage;
use hyperseg_engine::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rand_storage(len: usize, seed: u64) -> Storage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Storage::from_vec(&Device::Cpu, v).expect("host storage")
}

fn gemm(c: &mut Criterion) {
    let (m, k, n) = (1600usize, 5568usize, 4096usize);
    let a = rand_storage(m * k, 1);
    let b = rand_storage(k * n, 2);
    let mut g = c.benchmark_group("cpu_gemm");
    g.sampling_mode(SamplingMode::Flat);
    // About 1-2 s per product on two cores: room for the 10 samples.
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(2 * (m * n * k) as u64));
    g.bench_function(format!("{m}x{k}_by_{k}x{n}"), |bch| {
        bch.iter(|| black_box(a.gemm(&b, GemmSpec { m, n, k, trans_a: false, trans_b: false }).expect("gemm")))
    });
    g.finish();
}

fn conv(c: &mut Criterion) {
    let s = ConvSpec { n: 1, c_in: 64, h: 56, w: 56, c_out: 64, kh: 3, kw: 3, stride: 1, pad: 1 };
    let x = rand_storage(s.n * s.c_in * s.h * s.w, 3);
    let w = rand_storage(s.c_out * s.c_in * s.kh * s.kw, 4);
    let dy = rand_storage(s.n * s.c_out * s.out_h() * s.out_w(), 5);
    let mut g = c.benchmark_group("cpu_conv3x3_1x64x56x56_64");
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(s.flops() as u64));
    g.bench_function("forward", |b| b.iter(|| black_box(x.conv2d(&w, &s).expect("conv"))));
    g.bench_function("backward_input", |b| b.iter(|| black_box(dy.conv2d_backward_input(&w, &s).expect("conv dx"))));
    g.bench_function("backward_weight", |b| b.iter(|| black_box(x.conv2d_backward_weight(&dy, &s).expect("conv dw"))));
    g.finish();
}

fn gather(c: &mut Criterion) {
    let g =
        GatherSpec { n: 5, in_h: 64, in_w: 64, taps: vec![(8, 64, 64), (16, 32, 32), (32, 16, 16), (32, 8, 8), (32, 4, 4), (64, 2, 2)] };
    let taps: Vec<Storage> = g.taps.iter().enumerate().map(|(i, &(ch, h, w))| rand_storage(g.n * ch * h * w, 10 + i as u64)).collect();
    let taps: Vec<&Storage> = taps.iter().collect();
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let points: Vec<SamplePoint> =
        (0..1600).map(|_| SamplePoint { image: rng.random_range(0..5), y: rng.random_range(0..64), x: rng.random_range(0..64) }).collect();
    let grad = rand_storage(points.len() * g.total_channels(), 7);
    let mut group = c.benchmark_group("cpu_gather_tiny_1600x184");
    group.throughput(Throughput::Bytes((points.len() * g.total_channels() * 4) as u64));
    group.bench_function("forward", |b| b.iter(|| black_box(Storage::gather_hypercolumns(&taps, &points, &g).expect("gather"))));
    group.bench_function("backward", |b| b.iter(|| black_box(grad.gather_hypercolumns_backward(&points, &g, true).expect("scatter"))));
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}

criterion_group! {
    name = cpu;
    config = config();
    targets = gemm, conv, gather
}
fn main() {
    // As the command-line tool does: the parallel regions start on this thread.
    hyperseg_engine::use_calling_thread();
    cpu();
    Criterion::default().configure_from_args().final_summary();
}
