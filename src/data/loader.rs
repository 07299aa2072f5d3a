//! The prefetching loader: shuffles a dataset each epoch with a seeded generator and decodes and augments batches
//! on worker threads ahead of the consumer, through bounded channels.
//!
//! Batch `b` of an epoch is built by worker `b % workers` and read back in order, so the output depends only on
//! the seed, the epoch and the configuration, never on the number of threads or their timing.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::augment::{augment_seed, sample_rng, Augment};
use super::batch::Batch;
use super::cache::Cache;
use super::decode::{check_size, decode_sample, Decoded};
use super::discover::Dataset;
use crate::error::{Error, Result};

/// How the loader batches, shuffles, augments and prefetches.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    /// Samples per batch (the paper: 5).
    pub batch_size: usize,
    /// Model input side in pixels (the paper: 224).
    pub size: u32,
    /// Augmentation drawn per sample.
    pub augment: Augment,
    /// Seed of the shuffles and augmentations.
    pub seed: u64,
    /// Shuffle each epoch (else dataset order).
    pub shuffle: bool,
    /// Drop a last incomplete batch.
    pub drop_last: bool,
    /// Worker threads; 0 decodes on the consumer's thread.
    pub workers: usize,
    /// Batches each worker may hold ready ahead of the consumer (at least 1).
    pub prefetch: usize,
}

impl LoaderConfig {
    /// Training: shuffled, paper augmentation, last incomplete batch dropped, 2 workers prefetching 2 batches.
    pub fn train(batch_size: usize, size: u32, seed: u64) -> LoaderConfig {
        LoaderConfig { batch_size, size, augment: Augment::paper(), seed, shuffle: true, drop_last: true, workers: 2, prefetch: 2 }
    }

    /// Evaluation: dataset order, no augmentation, every sample.
    pub fn eval(batch_size: usize, size: u32) -> LoaderConfig {
        LoaderConfig { batch_size, size, augment: Augment::none(), seed: 0, shuffle: false, drop_last: false, workers: 2, prefetch: 2 }
    }
}

/// Where decoded samples come from.
enum Source {
    Files(Dataset),
    Cache(Cache),
}

impl Source {
    fn len(&self) -> usize {
        match self {
            Source::Files(d) => d.len(),
            Source::Cache(c) => c.len(),
        }
    }

    fn id(&self, index: usize) -> &str {
        match self {
            Source::Files(d) => &d.samples()[index].id,
            Source::Cache(c) => &c.ids()[index],
        }
    }

    fn decoded(&self, index: usize, size: u32) -> Result<Decoded> {
        match self {
            Source::Files(d) => decode_sample(&d.samples()[index], size),
            Source::Cache(c) => c.get(index),
        }
    }
}

struct Inner {
    source: Source,
    config: LoaderConfig,
}

/// Serves epochs of batches from a dataset or a pre-decoded cache.
#[derive(Clone)]
pub struct Loader {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader").field("samples", &self.len()).field("config", &self.inner.config).finish()
    }
}

impl Loader {
    /// A loader decoding the dataset's files.
    pub fn from_dataset(dataset: Dataset, config: LoaderConfig) -> Result<Loader> {
        Loader::new(Source::Files(dataset), config)
    }

    /// A loader reading a pre-decoded cache; its size must equal `config.size`.
    pub fn from_cache(cache: Cache, config: LoaderConfig) -> Result<Loader> {
        if cache.size() != config.size {
            return Err(Error::bad_file(
                cache.path(),
                format!("cache holds {0}x{0} samples but the loader wants {1}x{1}; rebuild it", cache.size(), config.size),
            ));
        }
        Loader::new(Source::Cache(cache), config)
    }

    fn new(source: Source, config: LoaderConfig) -> Result<Loader> {
        check_size(config.size)?;
        if config.batch_size == 0 {
            return Err(Error::InvalidValue { name: "batch_size", msg: "must be at least 1".into() });
        }
        if source.len() == 0 {
            return Err(Error::InvalidValue { name: "dataset", msg: "has no samples".into() });
        }
        Ok(Loader { inner: Arc::new(Inner { source, config }) })
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.inner.config
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.inner.source.len()
    }

    /// Whether there are no samples (never true for a constructed loader).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.len(), self.inner.config.batch_size);
        if self.inner.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The sample indices of `epoch`, in the order they are served.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        if self.inner.config.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(augment_seed(self.inner.config.seed, epoch, u64::MAX));
            order.shuffle(&mut rng);
        }
        order
    }

    /// The batches of `epoch`, decoded ahead by the workers. After an error the iterator ends.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        let order = Arc::new(self.order(epoch));
        let n_batches = self.batches_per_epoch();
        let cfg = &self.inner.config;
        let workers = cfg.workers.min(n_batches);
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = sync_channel(cfg.prefetch.max(1));
            let (inner, order) = (Arc::clone(&self.inner), Arc::clone(&order));
            let spawned = std::thread::Builder::new().name(format!("loader-{w}")).spawn(move || {
                for b in (w..n_batches).step_by(workers) {
                    let batch = build_batch(&inner, &order, epoch, b);
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        break;
                    }
                }
            });
            match spawned {
                Ok(h) => {
                    receivers.push(rx);
                    handles.push(h);
                }
                Err(_) => {
                    // No thread to be had: stop those started and build every batch inline instead.
                    receivers.clear();
                    handles.drain(..).for_each(|h: JoinHandle<()>| {
                        let _ = h.join();
                    });
                    break;
                }
            }
        }
        Epoch { inner: Arc::clone(&self.inner), order, epoch, next: 0, n_batches, receivers, handles, done: false }
    }
}

/// Decodes and augments batch `b` of an epoch.
fn build_batch(inner: &Inner, order: &[usize], epoch: u64, b: usize) -> Result<Batch> {
    let cfg = &inner.config;
    let start = b * cfg.batch_size;
    let end = (start + cfg.batch_size).min(order.len());
    let mut batch = Batch::with_capacity(end - start, cfg.size as usize);
    for &index in &order[start..end] {
        let decoded = inner.source.decoded(index, cfg.size)?;
        let params = cfg.augment.sample(&mut sample_rng(cfg.seed, epoch, index as u64));
        let (image, mask) = params.apply(&decoded);
        batch.push(inner.source.id(index).to_string(), &image, &mask);
    }
    Ok(batch)
}

/// One epoch's batches, in order. Dropping it stops the workers.
pub struct Epoch {
    inner: Arc<Inner>,
    order: Arc<Vec<usize>>,
    epoch: u64,
    next: usize,
    n_batches: usize,
    receivers: Vec<Receiver<Result<Batch>>>,
    handles: Vec<JoinHandle<()>>,
    done: bool,
}

impl Iterator for Epoch {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.done || self.next >= self.n_batches {
            return None;
        }
        let b = self.next;
        self.next += 1;
        let item = if self.receivers.is_empty() {
            build_batch(&self.inner, &self.order, self.epoch, b)
        } else {
            match self.receivers[b % self.receivers.len()].recv() {
                Ok(item) => item,
                Err(_) => Err(Error::InvalidValue { name: "loader", msg: format!("worker for batch {b} stopped unexpectedly") }),
            }
        };
        self.done = item.is_err();
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = if self.done { 0 } else { self.n_batches - self.next };
        (0, Some(left))
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
