//! The training progress bar (indicatif): loss, images/s and ETA; one line per epoch (on stderr
//! when it is not a terminal and the bar is hidden), and notices.

use hyperseg_engine::train::{EpochRecord, TrainObserver};
use indicatif::{ProgressBar, ProgressStyle};

/// Shows a progress bar over all the steps of the run.
pub struct Bar {
    bar: ProgressBar,
    images: usize,
    started: std::time::Instant,
}

impl Bar {
    pub fn new() -> Bar {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} epoch {prefix} [{bar:30}] {pos}/{len} steps  {msg}  eta {eta}")
                .expect("static template")
                .progress_chars("=> "),
        );
        Bar { bar, images: 0, started: std::time::Instant::now() }
    }

    /// A line above the bar, or on stderr when the bar is hidden (stderr is not a terminal).
    fn line(&self, text: String) {
        if self.bar.is_hidden() {
            eprintln!("{text}");
        } else {
            self.bar.println(text);
        }
    }
}

impl TrainObserver for Bar {
    fn on_start(&mut self, steps_per_epoch: usize, epochs: std::ops::Range<usize>) {
        self.bar.set_length((steps_per_epoch * epochs.len()) as u64);
        self.bar.set_prefix(format!("{}/{}", epochs.start + 1, epochs.end));
        self.started = std::time::Instant::now();
    }

    fn on_step(&mut self, epoch: usize, _step: u64, loss: f32, images: usize) {
        self.images += images;
        let rate = self.images as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_prefix(format!("{}", epoch + 1));
        self.bar.set_message(format!("loss {loss:.4}  {rate:.1} img/s"));
        self.bar.inc(1);
    }

    fn on_epoch(&mut self, r: &EpochRecord) {
        let val = r.val_jaccard.map(|j| format!("  val jaccard {j:.4}")).unwrap_or_default();
        self.line(format!("epoch {:>3}  loss {:.4}  {:.1} img/s{val}", r.epoch, r.train_loss, r.images_per_second));
    }

    fn on_notice(&mut self, message: &str) {
        self.line(format!("note: {message}"));
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
