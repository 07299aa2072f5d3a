//! Per-image pixel counts (TP, FP, FN, TN) and the ISIC 2017 metrics computed from them, with the official
//! convention that a metric whose denominator is 0 scores 1.0.

use std::ops::{Add, AddAssign};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The official threshold: a grey value `> 128` is lesion.
pub const BINARY_THRESHOLD: u8 = 128;

/// Jaccard below this counts as 0 in the thresholded Jaccard (ISIC 2018 rule).
pub const JACCARD_THRESHOLD: f64 = 0.65;

/// Pixel counts of one prediction against its ground truth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    /// Lesion predicted and true.
    pub tp: u64,
    /// Lesion predicted, background true.
    pub fp: u64,
    /// Background predicted, lesion true.
    #[serde(rename = "fn")]
    pub fn_: u64,
    /// Background predicted and true.
    pub tn: u64,
}

/// `num / den`, or 1.0 when `den` is 0.
fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        1.0
    } else {
        num as f64 / den as f64
    }
}

impl Confusion {
    /// Counts from two grey masks (0-255) of equal length, each binarised at `> 128` as the official scorer does.
    pub fn from_gray(pred: &[u8], truth: &[u8]) -> Result<Confusion> {
        Confusion::from_fn(pred, truth, |p| p > BINARY_THRESHOLD, |t| t > BINARY_THRESHOLD)
    }

    /// Counts from two label masks of equal length where any nonzero value is lesion (e.g. {0, 1} labels).
    pub fn from_labels(pred: &[u8], truth: &[u8]) -> Result<Confusion> {
        Confusion::from_fn(pred, truth, |p| p != 0, |t| t != 0)
    }

    fn from_fn(pred: &[u8], truth: &[u8], p_on: impl Fn(u8) -> bool, t_on: impl Fn(u8) -> bool) -> Result<Confusion> {
        if pred.len() != truth.len() {
            return Err(Error::InvalidValue {
                name: "prediction",
                msg: format!("{} pixels but the ground truth has {}", pred.len(), truth.len()),
            });
        }
        let mut c = Confusion::default();
        for (&p, &t) in pred.iter().zip(truth) {
            match (p_on(p), t_on(t)) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, true) => c.fn_ += 1,
                (false, false) => c.tn += 1,
            }
        }
        Ok(c)
    }

    /// All pixels.
    pub fn total(&self) -> u64 {
        self.tp + self.fp + self.fn_ + self.tn
    }

    /// TP / (TP + FP + FN).
    pub fn jaccard(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp + self.fn_)
    }

    /// The Jaccard, or 0 when it is below [`JACCARD_THRESHOLD`].
    pub fn threshold_jaccard(&self) -> f64 {
        let j = self.jaccard();
        if j < JACCARD_THRESHOLD {
            0.0
        } else {
            j
        }
    }

    /// 2TP / (2TP + FP + FN).
    pub fn dice(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    /// (TP + TN) / all.
    pub fn accuracy(&self) -> f64 {
        ratio(self.tp + self.tn, self.total())
    }

    /// TP / (TP + FN).
    pub fn sensitivity(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// TN / (TN + FP).
    pub fn specificity(&self) -> f64 {
        ratio(self.tn, self.tn + self.fp)
    }
}

impl AddAssign for Confusion {
    fn add_assign(&mut self, o: Confusion) {
        self.tp += o.tp;
        self.fp += o.fp;
        self.fn_ += o.fn_;
        self.tn += o.tn;
    }
}

impl Add for Confusion {
    type Output = Confusion;
    fn add(mut self, o: Confusion) -> Confusion {
        self += o;
        self
    }
}

impl std::iter::Sum for Confusion {
    fn sum<I: Iterator<Item = Confusion>>(iter: I) -> Confusion {
        iter.fold(Confusion::default(), Add::add)
    }
}
