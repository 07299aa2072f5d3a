//! Launch wrappers of `kernels/gather.ptx`: the sparse hypercolumn gather, forward, and backward with
//! atomics or deterministically through a per-tap CSR table built on the host.

use rayon::prelude::*;

use super::*;

/// Checks tap lengths and point coordinates against a gather spec (as
/// `cpu::resample::check_gather`).
fn check_gather(tap_lens: &[usize], points: &[SamplePoint], g: &GatherSpec) -> Result<()> {
    if tap_lens.len() != g.taps.len() {
        return Err(Error::bad_shape("gather", format!("{} taps given, spec has {}", tap_lens.len(), g.taps.len())));
    }
    for (i, (&len, &(c, h, w))) in tap_lens.iter().zip(&g.taps).enumerate() {
        if len != g.n * c * h * w || h == 0 || w == 0 {
            return Err(Error::bad_shape("gather", format!("tap {i} has {len} elements, expected {}x{c}x{h}x{w}", g.n)));
        }
    }
    check_points(points, g)
}

fn check_points(points: &[SamplePoint], g: &GatherSpec) -> Result<()> {
    check_points_in("gather", points, g.n, g.in_h, g.in_w)
}

/// The points as u32 triples (image, y, x).
pub(crate) fn points_u32(points: &[SamplePoint]) -> &[u32] {
    SamplePoint::words(points)
}

/// Per-tap launch geometry shared by the gather kernels: the tap's first column in the
/// gathered matrix, its channels and size, and the lerp scales `h / in_h`, `w / in_w` in f32.
pub struct TapGeom {
    pub col_off: u32,
    pub c: u32,
    pub h: u32,
    pub w: u32,
    pub scale_h: f32,
    pub scale_w: f32,
}

/// The launch geometry of every tap of `g`, in column order (an error if a tap has 2^31
/// elements or more).
pub fn tap_geoms(g: &GatherSpec) -> Result<Vec<TapGeom>> {
    let mut col = 0usize;
    let mut out = Vec::with_capacity(g.taps.len());
    for &(c, h, w) in &g.taps {
        count("gather", g.n * c * h * w)?;
        out.push(TapGeom {
            col_off: col as u32,
            c: c as u32,
            h: h as u32,
            w: w as u32,
            // As Lerp::new(y, h, in_h): h as f32 / in_h as f32.
            scale_h: h as f32 / g.in_h as f32,
            scale_w: w as f32 / g.in_w as f32,
        });
        col += c;
    }
    Ok(out)
}

/// The largest tap plane (h w elements) of a *small* tap, fc7's 7 x 7 and conv5_3's 14 x 14
/// at the paper's size. Its forward takes `gather_fwd_tiled_f32` (lanes on points, 32 of one
/// image reading one plane's few sectors) rather than `gather_fwd_f32` (lanes on channels, each
/// lane's corner in its own plane: a sector a lane); its backward takes the CSR scatter
/// (`gather_bwd_csr_f32`: one store per touched location and channel, at most n h w of them)
/// in either mode, rather than the atomic one (four atomic sectors per point and lane). Chosen
/// with the simulator's access profile (`access_gather` in tests/ptx_kernels/gather.rs):
/// beyond it, 32 points spread over a plane touch nearly a sector each, and the tiled
/// kernel's shared-memory pass no longer pays.
pub const SMALL_TAP_MAX_PLANE: u32 = 256;

/// Whether a tap of `h x w` is small ([`SMALL_TAP_MAX_PLANE`]).
pub fn is_small_tap(h: usize, w: usize) -> bool {
    h * w <= SMALL_TAP_MAX_PLANE as usize
}

/// The forward gather's kernel for tap `t` of `np` points and its launch shape (see
/// [`SMALL_TAP_MAX_PLANE`]).
pub fn gather_fwd_launch(t: &TapGeom, np: u32) -> (&'static str, LaunchConfig) {
    if is_small_tap(t.h as usize, t.w as usize) {
        (entry::GATHER_FWD_TILED_F32, transpose_cfg(np, t.c, 1))
    } else {
        (entry::GATHER_FWD_F32, column_rows_cfg(t.c, np))
    }
}

/// Sparse hypercolumn gather: `[points, total_channels]`, one launch per tap: kernel
/// `gather_fwd_f32` (grid (ceil(c/B), min(P, 65535)), block B = min(256, c rounded up to 32);
/// thread = (point, channel), consecutive threads write consecutive columns), or for small
/// planes `gather_fwd_tiled_f32` ([`gather_fwd_launch`]).
pub fn gather_hypercolumns(taps: &[&CudaStorage], points: &[SamplePoint], g: &GatherSpec) -> Result<CudaStorage> {
    let _r = nvtx::range("gather_hypercolumns");
    let Some(first) = taps.first() else {
        return Err(Error::bad_shape("gather", "no taps"));
    };
    let lens: Vec<usize> = taps.iter().map(|t| t.len()).collect();
    check_gather(&lens, points, g)?;
    for t in taps {
        same_device("gather", first, t)?;
    }
    let dev = first.device().clone();
    let ctot = g.total_channels();
    let total = count("gather", points.len() * ctot)?;
    let mut out = dev.alloc(total as usize)?;
    if total == 0 {
        return Ok(out);
    }
    let pts = upload_u32(&dev, points_u32(points), FeedKind::Points)?;
    let (np, ctot) = (points.len() as u32, ctot as u32);
    for (tap, t) in taps.iter().zip(tap_geoms(g)?) {
        if t.c == 0 {
            continue;
        }
        let (kernel, shape) = gather_fwd_launch(&t, np);
        launch!(
            dev,
            kernel as GATHER_FWD_F32 | GATHER_FWD_TILED_F32,
            shape,
            out.slice_mut(),
            tap.slice(),
            pts.slice(),
            &np,
            &ctot,
            &t.col_off,
            &t.c,
            &t.h,
            &t.w,
            &t.scale_h,
            &t.scale_w
        )?;
    }
    Ok(out)
}

/// `Lerp::new(dst, len, out_len)` of `cpu::resample`, operation by operation in f32 (Rust never
/// contracts into fma), so the host reproduces the CPU's indices and weights bit for bit:
/// (i0, i1, w0, w1).
fn lerp(dst: u32, len: usize, out_len: usize) -> (usize, usize, f32, f32) {
    let scale = len as f32 / out_len as f32;
    let src = ((dst as f32 + 0.5) * scale - 0.5).max(0.0);
    let i0 = (src as usize).min(len - 1);
    let i1 = if i0 + 1 < len { i0 + 1 } else { i0 };
    let w1 = src - i0 as f32;
    (i0, i1, 1.0 - w1, w1)
}

/// The contributions of the points to one tap of `h x w` as CSR over the touched locations:
/// (locs: image, offset pairs; starts: L + 1 entries; entries: point index, weight bits pairs),
/// each location's entries in (point, corner) order, as `cpu::resample::gather_backward` adds
/// them.
fn tap_csr(points: &[SamplePoint], h: usize, w: usize, in_h: usize, in_w: usize) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    // One key per contribution: (image * hw + offset) << 32 | (point * 4 + corner). Sorting the
    // keys groups the locations and keeps each location's contributions in (point, corner)
    // order. Locations fit 31 bits (a tap has < 2^31 elements) and the sequence numbers 32
    // (the wrapper checks points.len() < 2^30).
    let hw = (h * w) as u64;
    let mut keys: Vec<u64> = Vec::with_capacity(points.len() * 4);
    let mut weights: Vec<f32> = Vec::with_capacity(points.len() * 4);
    for (pi, p) in points.iter().enumerate() {
        let (a0, a1, aw0, aw1) = lerp(p.y, h, in_h);
        let (b0, b1, bw0, bw1) = lerp(p.x, w, in_w);
        let corners = [(a0 * w + b0, aw0 * bw0), (a0 * w + b1, aw0 * bw1), (a1 * w + b0, aw1 * bw0), (a1 * w + b1, aw1 * bw1)];
        for (k, (o, wt)) in corners.into_iter().enumerate() {
            let loc = p.image as u64 * hw + o as u64;
            keys.push(loc << 32 | (pi * 4 + k) as u64);
            weights.push(wt);
        }
    }
    // The keys are generated in (point, corner) order, so a stable sort on the location bits
    // alone suffices: an LSD radix sort, 11 bits a pass (one or two passes for the model's taps).
    let loc_bits = 64 - ((hw * (max_image(points) + 1)).max(2) - 1).leading_zeros();
    radix_sort_high(&mut keys, loc_bits);
    let mut locs = Vec::new();
    let mut starts = Vec::new();
    let mut entries = Vec::with_capacity(keys.len() * 2);
    let mut prev = u64::MAX;
    for (i, &key) in keys.iter().enumerate() {
        let (loc, seq) = (key >> 32, (key & 0xFFFF_FFFF) as usize);
        if loc != prev {
            locs.extend([(loc / hw) as u32, (loc % hw) as u32]);
            starts.push(i as u32);
            prev = loc;
        }
        entries.extend([(seq / 4) as u32, weights[seq].to_bits()]);
    }
    starts.push(keys.len() as u32);
    (locs, starts, entries)
}

/// The largest image index of the points (0 when there are none).
fn max_image(points: &[SamplePoint]) -> u64 {
    points.iter().map(|p| p.image as u64).max().unwrap_or(0)
}

/// Stable LSD radix sort of `keys` by their bits `32 .. 32 + bits` (the low 32 bits ride along
/// in their original order).
fn radix_sort_high(keys: &mut Vec<u64>, bits: u32) {
    const DIGIT: u32 = 11;
    const BUCKETS: usize = 1 << DIGIT;
    let mut tmp = vec![0u64; keys.len()];
    let mut shift = 32;
    while shift < 32 + bits {
        let mut at = [0usize; BUCKETS + 1];
        for &k in keys.iter() {
            at[((k >> shift) as usize & (BUCKETS - 1)) + 1] += 1;
        }
        for i in 0..BUCKETS {
            at[i + 1] += at[i];
        }
        for &k in keys.iter() {
            let b = (k >> shift) as usize & (BUCKETS - 1);
            tmp[at[b]] = k;
            at[b] += 1;
        }
        std::mem::swap(keys, &mut tmp);
        shift += DIGIT;
    }
}

/// The most locations of an `n x h x w` tap that `points` points can touch (4 each): the
/// grid's y extent of `gather_bwd_csr_f32` before the `MAX_GRID_Y` cap.
pub fn csr_max_locations(points: usize, n: usize, h: usize, w: usize) -> usize {
    (4 * points).min(n * h * w)
}

/// The deterministic gather backward's table for every tap of `g`, as `gather_bwd_csr_f32`
/// reads it (kernels/gather.ptx): a 4-word header per tap, (L, locs, starts, entries) = the
/// tap's location count and the word offsets of its three CSR arrays (`tap_csr`), then the
/// arrays, each starting at an even offset (8-byte aligned: the kernel reads locs and entries
/// as u32 pairs; pool blocks are 256-byte aligned). Also returns the most words the table can
/// take for this many points (the buffer's size, the same at every step, so that the allocator
/// serves the same size class and a captured graph's buffer always fits).
pub fn gather_csr_table(points: &[SamplePoint], g: &GatherSpec) -> (Vec<u32>, usize) {
    gather_csr_table_for(points, g, true)
}

/// [`gather_csr_table`] for the taps the backward scatters through it in `deterministic` mode
/// or not ([`scatters_through_csr`]); the other taps get no location (L = 0, empty arrays), so
/// that the non-deterministic mode builds and uploads the small taps' part alone.
pub fn gather_csr_table_for(points: &[SamplePoint], g: &GatherSpec, deterministic: bool) -> (Vec<u32>, usize) {
    let used = |h: usize, w: usize| deterministic || is_small_tap(h, w);
    let csrs: Vec<_> = g
        .taps
        .par_iter()
        .map(|&(_, h, w)| if used(h, w) { tap_csr(points, h, w, g.in_h, g.in_w) } else { (Vec::new(), vec![0], Vec::new()) })
        .collect();
    let mut table: Vec<u32> = vec![0; 4 * g.taps.len()];
    let push_even = |table: &mut Vec<u32>, part: &[u32]| {
        let at = table.len() as u32;
        table.extend_from_slice(part);
        if table.len() % 2 == 1 {
            table.push(0);
        }
        at
    };
    for (tap, (locs, starts, entries)) in csrs.iter().enumerate() {
        let n_locs = (starts.len() - 1) as u32;
        let l_at = push_even(&mut table, locs);
        let s_at = push_even(&mut table, starts);
        let e_at = push_even(&mut table, entries);
        table[4 * tap..4 * tap + 4].copy_from_slice(&[n_locs, l_at, s_at, e_at]);
    }
    let bound: usize = 4 * g.taps.len()
        + g.taps
            .iter()
            .map(|&(_, h, w)| {
                if !used(h, w) {
                    return 2; // the empty arrays, starts = [0] padded to an even length
                }
                let locs = csr_max_locations(points.len(), g.n, h, w);
                // locs, starts and entries, each rounded up to an even length.
                (2 * locs + 1) + (locs + 2) + (8 * points.len() + 1)
            })
            .sum::<usize>();
    (table, bound)
}

/// Whether the backward scatters tap `t` with `gather_bwd_csr_f32` (every tap in deterministic
/// mode, the small ones in either) rather than `gather_bwd_atomic_f32`.
pub fn scatters_through_csr(t: &TapGeom, deterministic: bool) -> bool {
    deterministic || is_small_tap(t.h as usize, t.w as usize)
}

/// Scatter of the gathered gradient back into one zero-initialised gradient per tap.
/// `deterministic == false`: `gather_bwd_atomic_f32` (red.global.add.f32), grid as the forward,
/// except on small taps ([`SMALL_TAP_MAX_PLANE`]), which take the CSR scatter below in either
/// mode (fewer sectors, no atomics, and bit-exact).
/// `deterministic == true`: `gather_bwd_csr_f32`, no atomics, bit-exact with the CPU: the host
/// lists each tap's touched locations and their ordered (point, weight) contributions
/// (`tap_csr`, the CPU's f32 lerp), uploaded once for all taps (`gather_csr_table`, a
/// [`FeedKind::GatherCsr`] feed); grid (ceil(c/B), min(most locations, 65535)), block B =
/// min(256, c rounded up to 32), one thread per (location, channel) summing in a register and
/// writing once.
pub fn gather_hypercolumns_backward(
    grad: &CudaStorage,
    points: &[SamplePoint],
    g: &GatherSpec,
    deterministic: bool,
) -> Result<Vec<CudaStorage>> {
    let _r = nvtx::range(if deterministic { "gather_backward_deterministic" } else { "gather_backward" });
    check_len("gather_backward", "grad", grad.len(), points.len() * g.total_channels())?;
    check_points(points, g)?;
    count("gather_backward", grad.len())?;
    if let Some((i, &(_, h, w))) = g.taps.iter().enumerate().find(|(_, &(_, h, w))| h == 0 || w == 0) {
        return Err(Error::bad_shape("gather_backward", format!("tap {i} is {h}x{w}: taps must not be empty")));
    }
    if points.len() >= 1 << 30 {
        return Err(Error::bad_shape("gather_backward", format!("{} points: at most 2^30", points.len())));
    }
    let dev = grad.device().clone();
    let geoms = tap_geoms(g)?;
    let mut outs = Vec::with_capacity(g.taps.len());
    for &(c, h, w) in &g.taps {
        outs.push(dev.zeros(g.n * c * h * w)?);
    }
    if points.is_empty() || g.n == 0 {
        return Ok(outs);
    }
    let ctot = g.total_channels() as u32;
    let csr = |t: &TapGeom| scatters_through_csr(t, deterministic);
    let table_d = match geoms.iter().any(|t| t.c != 0 && csr(t)) {
        true => {
            let (table, bound) = gather_csr_table_for(points, g, deterministic);
            let table_d = dev.upload_words(&table, bound, FeedKind::GatherCsr(g.clone(), deterministic))?;
            if table_d.raw_ptr() % 16 != 0 {
                // The kernel reads each tap's header with one 16-byte load.
                return Err(crate::backend::cuda::error::cuda_error("gather table", "pool block is not 16-byte aligned"));
            }
            Some(table_d)
        }
        false => None,
    };
    let atomic_taps = geoms.iter().any(|t| t.c != 0 && !csr(t));
    let pts = if atomic_taps { Some(upload_u32(&dev, points_u32(points), FeedKind::Points)?) } else { None };
    let np = points.len() as u32;
    for (tap, ((dtap, t), &(_, h, w))) in outs.iter_mut().zip(&geoms).zip(&g.taps).enumerate() {
        if t.c == 0 {
            continue;
        }
        match (&table_d, &pts) {
            (Some(table_d), _) if csr(t) => {
                // Launched for the most locations the points can touch, whatever this step's
                // count (in the table's header), so that the launch is the same at every step.
                let max_locs = csr_max_locations(points.len(), g.n, h, w) as u32;
                let (tap, hw) = (tap as u32, t.h * t.w);
                launch!(
                    dev,
                    entry::GATHER_BWD_CSR_F32,
                    column_rows_cfg(t.c, max_locs),
                    dtap.slice_mut(),
                    grad.slice(),
                    table_d.slice(),
                    &tap,
                    &ctot,
                    &t.col_off,
                    &t.c,
                    &hw
                )?;
            }
            (_, Some(pts)) => {
                launch!(
                    dev,
                    entry::GATHER_BWD_ATOMIC_F32,
                    column_rows_cfg(t.c, np),
                    dtap.slice_mut(),
                    grad.slice(),
                    pts.slice(),
                    &np,
                    &ctot,
                    &t.col_off,
                    &t.c,
                    &t.h,
                    &t.w,
                    &t.scale_h,
                    &t.scale_w
                )?;
            }
            _ => unreachable!("a table for every CSR tap, points for every other"),
        }
    }
    // Dropping the table and the points returns their pool blocks; later users of the blocks
    // are queued after these launches on the same stream.
    Ok(outs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outside deterministic mode the table holds the small taps alone: the large taps' headers
    /// say 0 locations, the small ones' are those of the full table, and the buffer bound
    /// shrinks accordingly.
    #[test]
    fn the_non_deterministic_table_covers_the_small_taps_alone() {
        let g = GatherSpec { n: 2, in_h: 64, in_w: 64, taps: vec![(3, 32, 32), (5, 7, 7), (2, 16, 16)] };
        let pts: Vec<SamplePoint> = (0..40u32).map(|i| SamplePoint { image: i / 20, y: (i * 7) % 64, x: (i * 13) % 64 }).collect();
        let (full, full_bound) = gather_csr_table(&pts, &g);
        let (small, small_bound) = gather_csr_table_for(&pts, &g, false);
        assert_eq!(small[0], 0, "the 32 x 32 tap is scattered with atomics");
        assert_eq!((small[4], small[8]), (full[4], full[8]), "location counts of the small taps");
        assert!(small.len() < full.len() && small_bound < full_bound && small.len() <= small_bound);
        for tap in [1, 2] {
            let (n, at_f, at_s) = (full[4 * tap] as usize, full[4 * tap + 1] as usize, small[4 * tap + 1] as usize);
            assert_eq!(full[at_f..at_f + 2 * n], small[at_s..at_s + 2 * n], "tap {tap}'s locations");
        }
    }

    #[test]
    fn tap_csr_lists_every_contribution_in_cpu_order() {
        let pts = [
            SamplePoint { image: 1, y: 0, x: 0 },
            SamplePoint { image: 0, y: 5, x: 7 },
            SamplePoint { image: 1, y: 0, x: 0 },
            SamplePoint { image: 0, y: 15, x: 15 },
        ];
        let (locs, starts, entries) = tap_csr(&pts, 4, 4, 16, 16);
        assert_eq!(starts.len() * 2, locs.len() + 2);
        assert_eq!(*starts.last().unwrap() as usize * 2, entries.len());
        assert_eq!(entries.len(), pts.len() * 4 * 2);
        for l in 0..starts.len() - 1 {
            let e = &entries[starts[l] as usize * 2..starts[l + 1] as usize * 2];
            let pis: Vec<u32> = e.chunks(2).map(|c| c[0]).collect();
            assert!(pis.windows(2).all(|w| w[0] <= w[1]), "points out of order at location {l}");
            for c in e.chunks(2) {
                assert_eq!(pts[c[0] as usize].image, locs[2 * l]);
            }
        }
        // The bottom-right point clamps: its four corners are one location, in corner order.
        let last = lerp(15, 4, 16);
        assert_eq!((last.0, last.1), (3, 3));
    }

    /// `gather_bwd_csr_f32` emulated on the host, reading the table exactly as the kernel does
    /// (each tap's header, then its arrays at the header's offsets; threads beyond the header's
    /// location count do nothing), gives the CPU reference's gradients bit for bit, and the
    /// table always fits the buffer size the wrapper asks for.

    #[test]
    fn the_gather_table_read_as_the_kernel_reads_it_is_the_cpu_backward() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let small = GatherSpec { n: 3, in_h: 32, in_w: 32, taps: vec![(4, 32, 32), (3, 8, 8), (5, 1, 1), (2, 4, 4)] };
        // More locations than blocks along y (65535) in the first tap: the grid-stride path.
        let large = GatherSpec { n: 3, in_h: 300, in_w: 300, taps: vec![(1, 300, 300), (2, 75, 75)] };
        for (g, npoints) in [(&small, 1usize), (&small, 7), (&small, 200), (&large, 40_000)] {
            let points: Vec<SamplePoint> = (0..npoints)
                .map(|_| SamplePoint {
                    image: rng.random_range(0..g.n as u32),
                    y: rng.random_range(0..g.in_h as u32),
                    x: rng.random_range(0..g.in_w as u32),
                })
                .collect();
            let ctot = g.total_channels();
            let grad: Vec<f32> = (0..npoints * ctot).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let (table, bound) = gather_csr_table(&points, g);
            assert!(table.len() <= bound, "{} words, buffer of {bound}", table.len());
            let want = crate::backend::cpu::resample::gather_backward(&grad, &points, g);
            let mut col_off = 0;
            for (tap, &(c, h, w)) in g.taps.iter().enumerate() {
                let header = &table[4 * tap..4 * tap + 4];
                let (n_locs, l_at, s_at, e_at) = (header[0] as usize, header[1] as usize, header[2] as usize, header[3] as usize);
                let max_locs = csr_max_locations(npoints, g.n, h, w);
                assert!(n_locs <= max_locs);
                assert!(l_at % 2 == 0 && e_at % 2 == 0, "u32 pairs are 8-byte aligned");
                let mut dtap = vec![0.0f32; g.n * c * h * w];
                let mut visits = vec![0u32; n_locs];
                // As launched: blockIdx.y in 0..min(max_locs, 65535), each block walking the
                // locations by gridDim.y; blocks at or beyond L do nothing.
                let grid_y = max_locs.min(MAX_GRID_Y as usize);
                for by in 0..grid_y {
                    for l in (by..n_locs).step_by(grid_y) {
                        visits[l] += 1;
                        let (image, offset) = (table[l_at + 2 * l] as usize, table[l_at + 2 * l + 1] as usize);
                        let (first, end) = (table[s_at + l] as usize, table[s_at + l + 1] as usize);
                        for ch in 0..c {
                            let mut acc = 0.0f32;
                            for k in first..end {
                                let (p, wt) = (table[e_at + 2 * k] as usize, f32::from_bits(table[e_at + 2 * k + 1]));
                                acc += wt * grad[p * ctot + col_off + ch];
                            }
                            dtap[(image * c + ch) * h * w + offset] = acc;
                        }
                    }
                }
                assert!(visits.iter().all(|&v| v == 1), "tap {tap}: every location is written exactly once");
                if g.n * h * w > MAX_GRID_Y as usize && 4 * npoints > MAX_GRID_Y as usize {
                    assert!(n_locs > MAX_GRID_Y as usize, "the large case must take the grid-stride path ({n_locs} locations)");
                }
                let same = dtap.iter().zip(&want[tap]).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "tap {tap} with {npoints} points differs from the CPU backward");
                col_off += c;
            }
        }
    }
}
