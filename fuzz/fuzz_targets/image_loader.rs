//! Fuzz target `image_loader`: arbitrary bytes as a picture file must decode or be refused with an error naming
//! the file, never panic, and stay within the decoding limits (`MAX_IMAGE_SIDE`, `MAX_DECODE_BYTES` in
//! `hyperseg_engine::data::decode`, checked from the header before any pixel is decoded).
//!
//! Each input goes through `decode_sample` twice: as the image (with a valid mask of its size when its header can
//! be read, else a 16x16 one) and as the mask (with a valid image likewise). See `fuzz/README.md`.

#![no_main]

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::PathBuf;

use hyperseg_engine::data::decode::image_dimensions;
use hyperseg_engine::data::{decode_sample, Sample};
use image::{GrayImage, Luma, Rgb, RgbImage};
use libfuzzer_sys::fuzz_target;

/// Companion files are written at most this many pixels large.
const MAX_COMPANION_PIXELS: u64 = 512 * 512;

struct Fixture {
    dir: PathBuf,
    made: HashSet<(u32, u32)>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = std::env::temp_dir().join(format!("hyperseg-fuzz-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        Fixture { dir, made: HashSet::new() }
    }

    /// A valid `w x h` image and mask, written once per size.
    fn companions(&mut self, (w, h): (u32, u32)) -> (PathBuf, PathBuf) {
        let image = self.dir.join(format!("image_{w}x{h}.png"));
        let mask = self.dir.join(format!("mask_{w}x{h}.png"));
        if self.made.insert((w, h)) {
            RgbImage::from_fn(w, h, |x, y| Rgb([x as u8, y as u8, (x ^ y) as u8])).save(&image).expect("companion image");
            GrayImage::from_fn(w, h, |x, y| Luma([if (x + y) % 3 == 0 { 255 } else { 0 }])).save(&mask).expect("companion mask");
        }
        (image, mask)
    }
}

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    FIXTURE.with(|f| {
        let mut f = f.borrow_mut();
        let f = f.get_or_insert_with(Fixture::new);
        let input = f.dir.join("input.jpg");
        std::fs::write(&input, data).expect("write input");
        let dims = match image_dimensions(&input) {
            Ok((w, h)) if (w as u64) * (h as u64) <= MAX_COMPANION_PIXELS => (w, h),
            _ => (16, 16),
        };
        let (image, mask) = f.companions(dims);
        let _ = decode_sample(&Sample { id: "fuzz".into(), image_path: input.clone(), mask_path: mask }, 32);
        let _ = decode_sample(&Sample { id: "fuzz".into(), image_path: image, mask_path: input }, 32);
    });
});
