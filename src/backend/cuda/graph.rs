//! CUDA-graph capture on a device's stream, and the *feeds* that make a captured training step
//! replayable with new inputs.
//!
//! A graph records the kernels, copies and library calls queued on the stream with their
//! arguments frozen: addresses and scalars. Work that changes from step to step must therefore
//! read its changing values from device memory, and those buffers must be rewritten before each
//! replay. Every small host-to-device copy an op makes while queuing work goes through
//! [`CudaDevice::upload_words`], which names what the copied values are (a [`FeedKind`]):
//! - [`FeedKind::Constant`]: the same at every replay (pointer tables of buffers the graph owns,
//!   class weights of ones);
//! - [`FeedKind::Points`], [`FeedKind::Labels`]: the step's sampled pixels and their labels;
//! - [`FeedKind::StepSeed`]: a dropout seed, `step + offset` with an offset fixed by the model;
//! - [`FeedKind::AdamScalars`]: the optimiser's learning rate and bias corrections;
//! - [`FeedKind::GatherCsr`]: the gather backward's CSR table (every tap in deterministic mode,
//!   the small taps alone otherwise), built from the points.
//!
//! Outside a capture the copy is made at once, as before. During a capture nothing runs: the
//! destination buffer is allocated from the graph's arena (see [`super::allocator`]), the
//! values are checked against the step the capture was started with ([`StepFeeds`]; an op that
//! uploads points other than the step's fails the capture rather than freezing them), and the
//! feed is recorded. [`CapturedGraph::launch`] rebuilds every varying feed from the new step's
//! [`StepFeeds`], copies them in stream order, then launches the graph. Values that vary and
//! have no feed kind (a generic [`CudaDevice::upload`], a class-weighted loss's normalisation,
//! the factored dense layer's plane table) make the capture fail with [`Error::GraphCapture`].

use std::borrow::Cow;

use cudarc::driver::sys;

use super::allocator::ArenaId;
use super::device::lock;
use super::error::CudaResultExt;
use super::kernels::ops::gather_csr_table_for;
use super::{CudaDevice, CudaStorage};
use crate::backend::{GatherSpec, SamplePoint};
use crate::error::{Error, Result};

/// What the values of a host-to-device copy are, so that a captured graph can rebuild them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedKind {
    /// The same values at every replay.
    Constant,
    /// The step's sample points, as `(image, y, x)` u32 triples.
    Points,
    /// The step's labels.
    Labels,
    /// One dropout seed: `step + offset` (wrapping u32), the offset fixed at capture.
    StepSeed,
    /// The optimiser's `[lr, bias_correction1, bias_correction2]` as f32 bits.
    AdamScalars,
    /// The gather backward's CSR table for the step's points and this geometry, for every tap
    /// (deterministic mode: `true`) or the small taps alone.
    GatherCsr(GatherSpec, bool),
}

/// The per-step values a captured training step reads, from which its varying feeds are built.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepFeeds {
    /// The global step number (dropout seeds derive from it).
    pub step: u64,
    /// The sample points as `(image, y, x)` u32 triples.
    pub points: Vec<u32>,
    /// The labels, one per point.
    pub labels: Vec<u32>,
    /// `[lr, bias_correction1, bias_correction2]` of this step's Adam update.
    pub adam: [f32; 3],
}

/// How a recorded feed's values are rebuilt for a replay.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum FeedSource {
    Constant(Vec<u32>),
    Points,
    Labels,
    StepSeed { offset: u32 },
    AdamScalars,
    GatherCsr(GatherSpec, bool),
}

impl FeedSource {
    /// The values for a step.
    fn words<'a>(&'a self, step: &'a StepFeeds) -> Cow<'a, [u32]> {
        match self {
            FeedSource::Constant(w) => Cow::Borrowed(w),
            FeedSource::Points => Cow::Borrowed(&step.points),
            FeedSource::Labels => Cow::Borrowed(&step.labels),
            FeedSource::StepSeed { offset } => Cow::Owned(vec![(step.step as u32).wrapping_add(*offset)]),
            FeedSource::AdamScalars => Cow::Owned(step.adam.iter().map(|f| f.to_bits()).collect()),
            FeedSource::GatherCsr(g, deterministic) => Cow::Owned(gather_csr_table_for(step_points(step), g, *deterministic).0),
        }
    }

    /// Whether the values change between replays.
    fn varies(&self) -> bool {
        !matches!(self, FeedSource::Constant(_))
    }
}

/// The step's points (whole triples only).
fn step_points(step: &StepFeeds) -> &[SamplePoint] {
    let whole = step.points.len() / 3 * 3;
    bytemuck::cast_slice(&step.points[..whole])
}

/// One recorded host-to-device copy: its destination (`capacity` words) and how to rebuild its
/// values.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Feed {
    dst: u64,
    capacity: usize,
    source: FeedSource,
}

/// The recording state of a capture in progress.
#[derive(Debug)]
pub(crate) struct Capture {
    arena: ArenaId,
    step: StepFeeds,
    feeds: Vec<Feed>,
}

impl Capture {
    pub(crate) fn new(arena: ArenaId, step: StepFeeds) -> Capture {
        Capture { arena, step, feeds: Vec::new() }
    }

    /// Records a copy of `words` to `dst` (a buffer of `capacity` words), checking that varying
    /// values are the step's own.
    pub(crate) fn record(&mut self, dst: u64, capacity: usize, words: &[u32], kind: FeedKind) -> Result<()> {
        let refuse = |what: &str| Err(Error::GraphCapture { msg: format!("{what} uploaded during the capture are not the step's") });
        let source = match kind {
            FeedKind::Constant => FeedSource::Constant(words.to_vec()),
            FeedKind::Points if words == self.step.points.as_slice() => FeedSource::Points,
            FeedKind::Points => return refuse("sample points"),
            FeedKind::Labels if words == self.step.labels.as_slice() => FeedSource::Labels,
            FeedKind::Labels => return refuse("labels"),
            FeedKind::StepSeed => match words {
                [seed] => FeedSource::StepSeed { offset: seed.wrapping_sub(self.step.step as u32) },
                _ => return refuse("dropout seeds"),
            },
            FeedKind::AdamScalars if words == FeedSource::AdamScalars.words(&self.step).as_ref() => FeedSource::AdamScalars,
            FeedKind::AdamScalars => return refuse("optimiser scalars"),
            FeedKind::GatherCsr(g, deterministic) => {
                let source = FeedSource::GatherCsr(g, deterministic);
                if source.words(&self.step).as_ref() != words {
                    return refuse("gather tables");
                }
                source
            }
        };
        self.feeds.push(Feed { dst, capacity, source });
        Ok(())
    }
}

/// A captured stream of work with its arena and feeds: [`CapturedGraph::launch`] replays it for
/// a new step. Dropping it gives the arena's memory back to the device's cache.
pub struct CapturedGraph {
    graph: cudarc::driver::CudaGraph,
    device: CudaDevice,
    arena: ArenaId,
    feeds: Vec<Feed>,
    constants_written: bool,
}

impl std::fmt::Debug for CapturedGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapturedGraph").field("arena", &self.arena).field("feeds", &self.feeds.len()).finish()
    }
}

impl CapturedGraph {
    /// Copies every varying feed of `step` (and the constant ones before the first launch) into
    /// the graph's buffers, then queues one replay; all on the device's stream, in that order.
    pub fn launch(&mut self, step: &StepFeeds) -> Result<()> {
        let _r = super::nvtx::range("graph launch");
        let stream = self.device.stream().cu_stream();
        self.device.bind()?;
        for feed in &self.feeds {
            if self.constants_written && !feed.source.varies() {
                continue;
            }
            let words = feed.source.words(step);
            if words.len() > feed.capacity {
                return Err(Error::GraphCapture {
                    msg: format!(
                        "a feed of {} words does not fit its buffer of {} (the batch differs from the captured one)",
                        words.len(),
                        feed.capacity
                    ),
                });
            }
            if !words.is_empty() {
                self.device.count_call();
                // SAFETY: `dst` is a live arena buffer of at least this many words (recorded
                // from the same kinds of values, whose lengths `launch` callers keep fixed); the
                // copy is queued before the replay that reads it.
                unsafe { cudarc::driver::result::memcpy_htod_async(feed.dst, words.as_ref(), stream) }.ctx("graph feed copy")?;
            }
        }
        self.constants_written = true;
        self.device.count_call();
        self.graph.launch().ctx("cuGraphLaunch")
    }
}

impl Drop for CapturedGraph {
    fn drop(&mut self) {
        lock(&self.device.0.pool).retire_arena(self.arena);
    }
}

impl CudaDevice {
    /// Whether work queued now is being captured into a graph.
    pub fn is_capturing(&self) -> bool {
        lock(&self.0.capture).is_some()
    }

    /// A pool buffer of at least `min_len` words holding a copy of `words`, whose values are of
    /// `kind` (see the module doc): copied now, or during a capture recorded as a feed.
    pub fn upload_words(&self, words: &[u32], min_len: usize, kind: FeedKind) -> Result<CudaStorage> {
        let len = words.len().max(min_len).max(1);
        let mut capture = lock(&self.0.capture);
        if let Some(c) = capture.as_mut() {
            // The host rewrites this buffer before every replay: a block that no other work of
            // the graph uses, before or after (`Pool::allocate_feed`).
            let s = self.alloc_feed(len)?;
            return c.record(s.raw_ptr(), s.len(), words, kind).map(|()| s);
        }
        drop(capture);
        let mut s = self.alloc(len)?;
        if !words.is_empty() {
            // SAFETY: the buffer holds at least words.len() 4-byte elements.
            let mut view = unsafe { s.slice_mut().transmute_mut::<u32>(words.len()) }
                .ok_or_else(|| super::error::cuda_error("upload", "buffer too small"))?;
            self.count_call();
            self.stream().memcpy_htod(words, &mut view).ctx("upload (host to device copy)")?;
        }
        Ok(s)
    }

    /// Fails with [`Error::GraphCapture`] during a capture: `what` cannot be replayed.
    pub(crate) fn refuse_capture(&self, what: &str) -> Result<()> {
        if self.is_capturing() {
            return Err(Error::GraphCapture { msg: format!("{what} cannot be captured") });
        }
        Ok(())
    }

    /// Starts capturing the work queued on the stream into a graph, for the step `step`
    /// (relaxed mode: allocations stay allowed). Waits for queued work first. Every op queued
    /// until [`CudaDevice::end_capture`] or [`CudaDevice::abort_capture`] is recorded, not run.
    pub fn begin_capture(&self, step: StepFeeds) -> Result<()> {
        self.synchronize()?;
        let mut capture = lock(&self.0.capture);
        if capture.is_some() {
            return Err(Error::GraphCapture { msg: "a capture is already in progress on this device".into() });
        }
        let arena = lock(&self.0.pool).begin_arena()?;
        if let Err(e) = self.stream().begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED) {
            let mut pool = lock(&self.0.pool);
            pool.retire_arena(arena);
            return Err(e).ctx("cuStreamBeginCapture");
        }
        *capture = Some(Capture::new(arena, step));
        Ok(())
    }

    /// Ends the capture and instantiates the graph.
    pub fn end_capture(&self) -> Result<CapturedGraph> {
        let capture = lock(&self.0.capture).take().ok_or_else(|| Error::GraphCapture { msg: "no capture in progress".into() })?;
        lock(&self.0.pool).end_arena();
        // An error a destructor left in the context during the capture: cudarc's end_capture
        // would report it before ending the capture, leaving the stream capturing.
        let stored = self.context().check_err().err();
        let flags = sys::CUgraphInstantiate_flags(0);
        let ended = self.stream().end_capture(flags);
        if let Some(e) = stored {
            drop(ended);
            lock(&self.0.pool).retire_arena(capture.arena);
            return Err(Error::GraphCapture { msg: format!("a CUDA call failed during the capture: {e}") });
        }
        let graph = match ended {
            Ok(Some(g)) => g,
            Ok(None) => {
                lock(&self.0.pool).retire_arena(capture.arena);
                return Err(Error::GraphCapture { msg: "the capture recorded no work".into() });
            }
            Err(e) => {
                lock(&self.0.pool).retire_arena(capture.arena);
                return Err(Error::GraphCapture { msg: format!("ending the capture: {e}") });
            }
        };
        Ok(CapturedGraph { graph, device: self.clone(), arena: capture.arena, feeds: capture.feeds, constants_written: false })
    }

    /// Abandons a capture after an error: ends it, drops what it recorded and gives its
    /// memory back. A no-op when none is in progress.
    pub fn abort_capture(&self) {
        let Some(capture) = lock(&self.0.capture).take() else { return };
        lock(&self.0.pool).end_arena();
        // The capture is abandoned after an error already reported: an error stored in the
        // context is dropped so that binding it cannot fail before the capture ends, and the
        // capture is ended with the raw call (nothing to instantiate).
        let _ = self.context().check_err();
        let _ = self.bind();
        // SAFETY: the device's own stream; a graph the call returns is ours, destroyed unused.
        unsafe {
            if let Ok(graph) = cudarc::driver::result::stream::end_capture(self.stream().cu_stream()) {
                if !graph.is_null() {
                    let _ = cudarc::driver::result::graph::destroy(graph);
                }
            }
        }
        lock(&self.0.pool).retire_arena(capture.arena);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::kernels::ops::gather_csr_table;

    fn step() -> StepFeeds {
        StepFeeds { step: 10, points: vec![0, 3, 4, 1, 5, 6], labels: vec![1, 0], adam: [1e-3, 0.1, 0.001] }
    }

    /// Varying feeds are recorded only when their values are the step's, and rebuilt from a
    /// later step's values; constants keep the captured values.
    #[test]
    fn feeds_are_checked_at_capture_and_rebuilt_for_each_step() {
        let s = step();
        let mut c = Capture::new(1, s.clone());
        c.record(0x100, 6, &s.points, FeedKind::Points).unwrap();
        c.record(0x200, 2, &s.labels, FeedKind::Labels).unwrap();
        c.record(0x300, 1, &[12], FeedKind::StepSeed).unwrap();
        let adam: Vec<u32> = s.adam.iter().map(|f| f.to_bits()).collect();
        c.record(0x400, 3, &adam, FeedKind::AdamScalars).unwrap();
        c.record(0x500, 3, &[7, 8, 9], FeedKind::Constant).unwrap();
        let spec = GatherSpec { n: 2, in_h: 8, in_w: 8, taps: vec![(3, 8, 8), (5, 2, 2)] };
        let (table, bound) = gather_csr_table(step_points(&s), &spec);
        c.record(0x700, bound, &table, FeedKind::GatherCsr(spec.clone(), true)).unwrap();
        for (words, kind) in
            [(&[0, 3, 5, 1, 5, 6][..], FeedKind::Points), (&[0, 0][..], FeedKind::Labels), (&[1, 2][..], FeedKind::StepSeed)]
        {
            assert!(matches!(c.record(0x600, 8, words, kind.clone()), Err(Error::GraphCapture { .. })), "{kind:?}");
        }
        assert!(c.record(0x600, 3, &[1, 2, 3], FeedKind::AdamScalars).is_err());
        assert!(c.record(0x600, bound, &table[1..], FeedKind::GatherCsr(spec.clone(), true)).is_err());
        assert_eq!(c.feeds.len(), 6);

        let next = StepFeeds { step: 11, points: vec![1, 1, 1, 0, 2, 2], labels: vec![0, 0], adam: [5e-4, 0.19, 0.002] };
        let words: Vec<Vec<u32>> = c.feeds.iter().map(|f| f.source.words(&next).into_owned()).collect();
        assert_eq!(words[0], next.points);
        assert_eq!(words[1], next.labels);
        assert_eq!(words[2], vec![13], "seed = step + the offset seen at capture");
        assert_eq!(words[3], next.adam.iter().map(|f| f.to_bits()).collect::<Vec<_>>());
        assert_eq!(words[4], vec![7, 8, 9]);
        let next_points: &[SamplePoint] = bytemuck::cast_slice(&next.points);
        assert_eq!(words[5], gather_csr_table(next_points, &spec).0);
        assert_ne!(words[5], table, "the table follows the points");
        assert!(words[5].len() <= bound && table.len() <= bound);
        assert_eq!(c.feeds.iter().filter(|f| f.source.varies()).count(), 5);
    }

    /// A seed below the step (a wrapping offset) still follows the step.
    #[test]
    fn seed_offsets_wrap() {
        let mut c = Capture::new(1, StepFeeds { step: 5, ..StepFeeds::default() });
        c.record(0, 1, &[3], FeedKind::StepSeed).unwrap();
        let later = StepFeeds { step: 9, ..StepFeeds::default() };
        assert_eq!(c.feeds[0].source.words(&later).as_ref(), &[7]);
    }
}
