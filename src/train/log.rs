//! The run's metrics log: one JSON object per epoch in `metrics.jsonl`, rewritten atomically.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::metrics::ScoreReport;

/// One epoch of a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epochs completed (1-based).
    pub epoch: usize,
    /// Optimiser steps completed.
    pub step: u64,
    /// Mean training loss over the epoch's steps.
    pub train_loss: f64,
    /// Training throughput.
    pub images_per_second: f64,
    /// Wall time of the epoch, validation included.
    pub seconds: f64,
    /// Validation metrics (ISIC rules), when a validation set was given.
    pub val_jaccard: Option<f64>,
    pub val_threshold_jaccard: Option<f64>,
    pub val_dice: Option<f64>,
    pub val_accuracy: Option<f64>,
}

impl EpochRecord {
    pub fn new(epoch: usize, step: u64, train_loss: f64, images_per_second: f64, seconds: f64, val: Option<&ScoreReport>) -> Self {
        EpochRecord {
            epoch,
            step,
            train_loss,
            images_per_second,
            seconds,
            val_jaccard: val.map(|r| r.jaccard),
            val_threshold_jaccard: val.map(|r| r.threshold_jaccard),
            val_dice: val.map(|r| r.dice),
            val_accuracy: val.map(|r| r.accuracy),
        }
    }
}

/// Writes every record, one JSON object per line.
pub fn write_log(path: &Path, records: &[EpochRecord]) -> Result<()> {
    write_atomic(path, |w| {
        for r in records {
            serde_json::to_writer(&mut *w, r).map_err(std::io::Error::other)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// Reads a log written by [`write_log`]; a missing file is an empty log.
pub fn read_log(path: &Path) -> Result<Vec<EpochRecord>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::bad_file(path, format!("line {}: {e}", i + 1))))
        .collect()
}
