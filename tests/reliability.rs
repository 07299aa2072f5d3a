//! Reliability: what happens with bad inputs, damaged or hostile checkpoints, crashes and divergence.
//!
//! - Inputs: truncated and non-image files, masks of the wrong size or not pure 0/255 (binarised above 127, one
//!   warning per file), images without masks (error) and masks without images (warning), empty folders, pictures
//!   whose header announces a huge size (refused before decoding), file names that are not UTF-8 (skipped with a
//!   warning). Each gives one error or warning naming the file, never a panic.
//! - Checkpoints: damaged optimiser files are named on resume; a crash between the writes of a checkpoint's files
//!   resumes from a consistent state; hostile configurations are refused before the model is allocated.
//! - No-panic stress: a few thousand mutations of a real checkpoint and of real JPEG/PNG files through
//!   `load_checkpoint` and `decode_sample`, the entry points of the cargo-fuzz targets in `fuzz/` (set
//!   `HYPERSEG_STRESS_ITERS` to run more).
//! - Determinism: two runs with one seed give bitwise-identical weights; a run stopped after epoch 1 and resumed
//!   ends bitwise identical to the uninterrupted run; `kill -9` of the CLI mid-training leaves a loadable
//!   checkpoint that resumes to completion.
//! - Divergence: a non-finite loss stops training with `Error::Diverged` naming the step and keeps the last good
//!   checkpoint untouched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyperseg_engine::data::decode::{image_dimensions, MAX_IMAGE_SIDE};
use hyperseg_engine::data::warn::warnings;
use hyperseg_engine::data::{decode_sample, find_images, Augment, Dataset, Sample};
use hyperseg_engine::infer::InferOptions;
use hyperseg_engine::model::{load_checkpoint, load_optimizer, save_checkpoint, HypercolumnNet, ModelConfig};
use hyperseg_engine::nn::Module;
use hyperseg_engine::optim::{Adam, AdamConfig};
use hyperseg_engine::train::{train, Silent, TrainOptions};
use hyperseg_engine::{Device, Error};
use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

// ---------------------------------------------------------------------------------------------------------------
// Helpers

fn sample(split: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sample").join(split)
}

/// `dir/images` + `dir/masks` holding the first `n` pairs of the bundled training sample.
fn copy_sample(dir: &Path, n: usize) -> PathBuf {
    for sub in ["images", "masks"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let mut images: Vec<PathBuf> = std::fs::read_dir(sample("train").join("images")).unwrap().map(|e| e.unwrap().path()).collect();
    images.sort();
    for p in images.into_iter().take(n) {
        let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
        std::fs::copy(&p, dir.join("images").join(p.file_name().unwrap())).unwrap();
        let m = format!("{stem}_segmentation.png");
        std::fs::copy(sample("train").join("masks").join(&m), dir.join("masks").join(&m)).unwrap();
    }
    dir.to_path_buf()
}

fn noise_rgb(path: &Path, w: u32, h: u32) {
    RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7 + y) as u8, (x ^ y) as u8, (y * 3) as u8])).save(path).unwrap();
}

fn gray(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    GrayImage::from_fn(w, h, |x, y| Luma([f(x, y)])).save(path).unwrap();
}

/// The error's text; fails if it is Ok.
fn err<T>(r: hyperseg_engine::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// Warnings printed so far that mention `needle`.
fn warnings_about(needle: &str) -> Vec<String> {
    warnings().into_iter().filter(|w| w.contains(needle)).collect()
}

/// CRC-32 (PNG's) of `bytes`.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A PNG whose header claims `w x h` (bit depth `depth`, colour type `color`) with a token IDAT: a few dozen bytes
/// standing for a picture that would need gigabytes once decoded.
fn png_header_only(w: u32, h: u32, depth: u8, color: u8) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[depth, color, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    // zlib: one stored block holding a single 0 byte.
    png_chunk(&mut out, b"IDAT", &[0x78, 0x01, 0x01, 0x01, 0x00, 0xfe, 0xff, 0x00, 0x00, 0x01, 0x00, 0x01]);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A small model configuration that trains fast on two cores.
fn small_config() -> ModelConfig {
    ModelConfig { input_size: 32, batch_size: 2, sample_points: 256, ..ModelConfig::tiny() }
}

fn options(data: &Path, out: &Path, epochs: usize, resume: Option<PathBuf>) -> TrainOptions {
    TrainOptions {
        data: data.to_path_buf(),
        val: None,
        out: out.to_path_buf(),
        config: small_config(),
        epochs,
        seed: 7,
        resume,
        augment: Augment::paper(),
        workers: 1,
        infer: InferOptions::default(),
        cuda_graph: false,
    }
}

/// Every tensor of a safetensors file, name to raw little-endian bytes.
fn tensors_of(path: &Path) -> HashMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(n, t)| (n, t.data().to_vec())).collect()
}

/// Rewrites a safetensors file's metadata with `edit`, keeping its tensors.
fn edit_metadata(path: &Path, edit: impl FnOnce(&mut HashMap<String, String>)) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = meta.metadata().clone().unwrap_or_default();
    edit(&mut meta);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
    let out = safetensors::serialize(views, Some(meta)).unwrap();
    std::fs::write(path, out).unwrap();
}

fn set_config(path: &Path, edit: impl FnOnce(&mut ModelConfig)) {
    edit_metadata(path, |meta| {
        let mut c: ModelConfig = serde_json::from_str(&meta["config"]).unwrap();
        edit(&mut c);
        meta.insert("config".into(), serde_json::to_string(&c).unwrap());
    });
}

// ---------------------------------------------------------------------------------------------------------------
// Inputs

#[test]
fn truncated_and_non_image_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let jpeg = std::fs::read(sample("train").join("images/ISIC_0000000.jpg")).unwrap();
    let png = std::fs::read(sample("train").join("masks/ISIC_0000000_segmentation.png")).unwrap();
    let good_mask = sample("train").join("masks/ISIC_0000000_segmentation.png");
    let good_image = sample("train").join("images/ISIC_0000000.jpg");
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("truncated.jpg", jpeg[..jpeg.len() / 3].to_vec(), true),
        ("header_only.jpg", jpeg[..200].to_vec(), true),
        ("text.jpg", b"this is not a picture".to_vec(), true),
        ("empty.png", Vec::new(), true),
        ("truncated_mask.png", png[..png.len() / 2].to_vec(), false),
        ("text_mask.png", b"<html>not a mask</html>".to_vec(), false),
    ];
    for (name, bytes, is_image) in cases {
        let p = d.join(name);
        std::fs::write(&p, &bytes).unwrap();
        let s = if is_image {
            Sample { id: name.into(), image_path: p.clone(), mask_path: good_mask.clone() }
        } else {
            Sample { id: name.into(), image_path: good_image.clone(), mask_path: p.clone() }
        };
        match decode_sample(&s, 32) {
            // The JPEG decoder fills in what is missing of a JPEG cut short: one warning names the file.
            Ok(d) => {
                assert!(name == "truncated.jpg" && d.rgb.len() == 32 * 32 * 3, "{name} decoded");
                decode_sample(&s, 32).unwrap();
                let w = warnings_about(&p.display().to_string());
                assert!(w.len() == 1 && w[0].contains("truncated"), "{w:?}");
            }
            Err(e) => assert!(e.to_string().contains(name), "{name}: {e}"),
        }
    }
    // Complete files give no warning: every image and mask of the bundled sample.
    for split in ["train", "val"] {
        for s in Dataset::discover(sample(split)).unwrap().iter() {
            decode_sample(s, 32).unwrap();
            for p in [&s.image_path, &s.mask_path] {
                assert!(warnings_about(&p.display().to_string()).is_empty(), "{p:?}");
            }
        }
    }
}

#[test]
fn mask_of_the_wrong_size_names_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    std::fs::create_dir_all(data.join("images")).unwrap();
    std::fs::create_dir_all(data.join("masks")).unwrap();
    noise_rgb(&data.join("images/ISIC_0000100.png"), 40, 30);
    gray(&data.join("masks/ISIC_0000100_segmentation.png"), 30, 40, |_, _| 255);
    let e = err(Dataset::discover(&data));
    assert!(e.contains("ISIC_0000100_segmentation.png") && e.contains("ISIC_0000100.png") && e.contains("30x40"), "{e}");
}

#[test]
fn masks_that_are_not_0_255_are_binarised_with_one_warning() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("grey_image.png");
    noise_rgb(&image, 8, 8);
    // Columns: 0, 100, 128, 255 twice over: lesion where > 127.
    let mask = dir.path().join("grey_levels_segmentation.png");
    gray(&mask, 8, 8, |x, _| [0, 100, 128, 255][x as usize % 4]);
    let s = Sample { id: "g".into(), image_path: image.clone(), mask_path: mask.clone() };
    let first = decode_sample(&s, 8).unwrap();
    let second = decode_sample(&s, 8).unwrap();
    assert_eq!(first, second);
    assert_eq!(&first.mask[..8], &[0, 0, 1, 1, 0, 0, 1, 1]);
    let w = warnings_about(&mask.display().to_string());
    assert_eq!(w.len(), 1, "one warning per file, got {w:?}");
    assert!(w[0].starts_with("warning: ") && w[0].contains("> 127") && w[0].contains("32 of 64"), "{w:?}");
    // A 0/1 mask reads as all background: the warning says so.
    let ones = dir.path().join("zero_one_segmentation.png");
    gray(&ones, 8, 8, |x, _| (x % 2) as u8);
    let d = decode_sample(&Sample { id: "z".into(), image_path: image.clone(), mask_path: ones.clone() }, 8).unwrap();
    assert!(d.mask.iter().all(|&l| l == 0));
    let w = warnings_about(&ones.display().to_string());
    assert!(w.len() == 1 && w[0].contains("0/1"), "{w:?}");
    // A clean 0/255 mask gives no warning.
    let clean = dir.path().join("clean_segmentation.png");
    gray(&clean, 8, 8, |x, _| if x < 4 { 0 } else { 255 });
    decode_sample(&Sample { id: "c".into(), image_path: image, mask_path: clean.clone() }, 8).unwrap();
    assert!(warnings_about(&clean.display().to_string()).is_empty());
}

#[test]
fn images_without_masks_and_masks_without_images() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    std::fs::create_dir_all(data.join("images")).unwrap();
    std::fs::create_dir_all(data.join("masks")).unwrap();
    noise_rgb(&data.join("images/ISIC_0000200.png"), 8, 8);
    gray(&data.join("masks/ISIC_0000200_segmentation.png"), 8, 8, |_, _| 0);
    // A mask without an image: used without it, with a warning naming it.
    let orphan = data.join("masks/ISIC_0000201_segmentation.png");
    gray(&orphan, 8, 8, |_, _| 0);
    let ds = Dataset::discover(&data).unwrap();
    assert_eq!(ds.len(), 1);
    let w = warnings_about(&orphan.display().to_string());
    assert!(w.len() == 1 && w[0].contains("without an image"), "{w:?}");
    // An image without a mask: an error naming it.
    noise_rgb(&data.join("images/ISIC_0000202.png"), 8, 8);
    let e = err(Dataset::discover(&data));
    assert!(e.contains("ISIC_0000202.png") && e.contains("no mask"), "{e}");
}

#[test]
fn empty_folders_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty_one");
    std::fs::create_dir_all(&empty).unwrap();
    let e = err(Dataset::discover(&empty));
    assert!(e.contains("empty_one") && e.contains("empty"), "{e}");
    let layout = dir.path().join("layout_only");
    std::fs::create_dir_all(layout.join("images")).unwrap();
    std::fs::create_dir_all(layout.join("masks")).unwrap();
    let e = err(Dataset::discover(&layout));
    assert!(e.contains("layout_only") && e.contains("no images"), "{e}");
    let e = err(find_images(&layout));
    assert!(e.contains("layout_only"), "{e}");
}

#[test]
fn huge_pictures_are_refused_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let started = Instant::now();
    // 20000x20000 grey PNG (sides over the limit).
    let big = d.join("huge.png");
    std::fs::write(&big, png_header_only(20000, 20000, 8, 0)).unwrap();
    let e = err(image_dimensions(&big));
    assert!(e.contains("huge.png") && e.contains("20000x20000") && e.contains(&MAX_IMAGE_SIDE.to_string()), "{e}");
    let mask = sample("train").join("masks/ISIC_0000000_segmentation.png");
    let e = err(decode_sample(&Sample { id: "h".into(), image_path: big.clone(), mask_path: mask.clone() }, 32));
    assert!(e.contains("huge.png") && e.contains("20000x20000"), "{e}");
    // 16384x16384 RGBA at 16 bits: sides within the limit, 2 GiB decoded: refused by size.
    let deep = d.join("deep.png");
    std::fs::write(&deep, png_header_only(16384, 16384, 16, 6)).unwrap();
    let e = err(decode_sample(&Sample { id: "d".into(), image_path: deep, mask_path: mask.clone() }, 32));
    assert!(e.contains("deep.png") && e.contains("16384x16384") && e.contains("bytes"), "{e}");
    // A real JPEG whose frame header is edited to claim 20000x20000.
    let mut jpeg = std::fs::read(sample("train").join("images/ISIC_0000000.jpg")).unwrap();
    let sof = (0..jpeg.len() - 1).find(|&i| jpeg[i] == 0xFF && matches!(jpeg[i + 1], 0xC0..=0xC2)).expect("a SOF marker");
    jpeg[sof + 5..sof + 9].copy_from_slice(&[0x4E, 0x20, 0x4E, 0x20]);
    let huge_jpeg = d.join("huge.jpg");
    std::fs::write(&huge_jpeg, &jpeg).unwrap();
    let e = err(decode_sample(&Sample { id: "j".into(), image_path: huge_jpeg.clone(), mask_path: mask }, 32));
    assert!(e.contains("huge.jpg") && e.contains("20000x20000"), "{e}");
    // Discovery refuses it from the header already.
    let data = d.join("data");
    std::fs::create_dir_all(data.join("images")).unwrap();
    std::fs::create_dir_all(data.join("masks")).unwrap();
    std::fs::copy(&big, data.join("images/ISIC_0000300.png")).unwrap();
    std::fs::copy(&big, data.join("masks/ISIC_0000300_segmentation.png")).unwrap();
    let e = err(Dataset::discover(&data));
    assert!(e.contains("ISIC_0000300") && e.contains("20000x20000"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5), "refusals must not decode: {:?}", started.elapsed());
}

#[cfg(unix)]
#[test]
fn file_names_that_are_not_utf8_are_skipped_with_a_warning() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    // The data folder itself has a non-UTF-8 name too.
    let data = dir.path().join(OsStr::from_bytes(b"data_\xff\xfe"));
    copy_sample(&data, 2);
    let bad_image = data.join("images").join(OsStr::from_bytes(b"ISIC_0000900_\xe9t\xe9.jpg"));
    std::fs::copy(sample("train").join("images/ISIC_0000000.jpg"), &bad_image).unwrap();
    let bad_mask = data.join("masks").join(OsStr::from_bytes(b"ISIC_0000901\xff_segmentation.png"));
    std::fs::copy(sample("train").join("masks/ISIC_0000000_segmentation.png"), &bad_mask).unwrap();
    let ds = Dataset::discover(&data).unwrap();
    assert_eq!(ds.len(), 2);
    for p in [&bad_image, &bad_mask] {
        let w = warnings_about(&p.display().to_string());
        assert!(w.len() == 1 && w[0].contains("not valid UTF-8"), "{p:?}: {w:?}");
    }
    assert_eq!(find_images(&data).unwrap().len(), 2);
    decode_sample(&ds.samples()[0], 32).unwrap();
    // Errors about files in such a folder show the path lossily.
    std::fs::remove_file(data.join("masks/ISIC_0000001_segmentation.png")).unwrap();
    let e = err(Dataset::discover(&data));
    assert!(e.contains("data_\u{FFFD}\u{FFFD}") && e.contains("ISIC_0000001.jpg"), "{e}");
}

// ---------------------------------------------------------------------------------------------------------------
// Checkpoints

/// A run folder trained for `epochs` with the small configuration.
fn trained_run(root: &Path, epochs: usize) -> (PathBuf, PathBuf) {
    let data = copy_sample(&root.join("data"), 4);
    let out = root.join("run");
    train(&options(&data, &out, epochs, None), &Device::Cpu, &mut Silent).unwrap();
    (data, out)
}

#[test]
fn damaged_optimizer_state_is_named_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = trained_run(dir.path(), 1);
    let last = out.join("last.safetensors");
    let optim = out.join("last.optim.safetensors");
    let good = std::fs::read(&optim).unwrap();
    let resume = |tag: &str| {
        let e = err(train(&options(&data, &out, 2, Some(last.clone())), &Device::Cpu, &mut Silent));
        assert!(e.contains("last.optim.safetensors"), "{tag}: {e}");
        e
    };
    std::fs::write(&optim, &good[..good.len() / 2]).unwrap();
    resume("truncated");
    std::fs::write(&optim, b"garbage").unwrap();
    resume("garbage");
    let mut flipped = good.clone();
    flipped[3] ^= 0x40; // the header length
    std::fs::write(&optim, &flipped).unwrap();
    resume("bad header");
    std::fs::remove_file(&optim).unwrap();
    resume("missing");
    // An optimiser file of another step.
    std::fs::write(&optim, &good).unwrap();
    edit_metadata(&optim, |m| {
        m.insert("step".into(), "12345".into());
    });
    let e = resume("other step");
    assert!(e.contains("12345"), "{e}");
    // The weights themselves were never touched: with the good file back, resuming works.
    std::fs::write(&optim, &good).unwrap();
    train(&options(&data, &out, 2, Some(last)), &Device::Cpu, &mut Silent).unwrap();
}

#[test]
fn a_crash_between_checkpoint_files_resumes_consistently() {
    let dir = tempfile::tempdir().unwrap();
    let (_data, out) = trained_run(dir.path(), 2);
    let last = out.join("last.safetensors");
    let (model, c2) = load_checkpoint(&last, &Device::Cpu).unwrap();
    let step2 = c2.training.as_ref().unwrap().step;
    let adam_steps = |path: &Path| {
        let (model, _) = load_checkpoint(path, &Device::Cpu).unwrap();
        let mut adam = Adam::new(model.parameters(), AdamConfig::default()).unwrap();
        load_optimizer(path, &model, &mut adam).map(|_| adam.steps())
    };
    assert_eq!(adam_steps(&last).unwrap(), step2);
    // Save epoch "3" by hand, dying at each point of the sequence: optimiser to .next, JSON, weights, rename.
    let mut adam = Adam::new(model.parameters(), AdamConfig::default()).unwrap();
    load_optimizer(&last, &model, &mut adam).unwrap();
    let crashed = dir.path().join("crashed");
    std::fs::create_dir_all(&crashed).unwrap();
    let mut state3 = c2.training.clone().unwrap();
    state3.epoch += 1;
    state3.step += 7;
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    // A consistent epoch-3 set, saved with an optimiser 7 steps further.
    adam.zero_grad();
    for _ in 0..7 {
        adam.step().unwrap(); // no gradients: only the step count moves
    }
    save_checkpoint(&scratch.join("last.safetensors"), &model, Some(&adam), Some(&state3)).unwrap();
    let copy = |from: &Path, name: &str| std::fs::copy(from, crashed.join(name)).unwrap();
    let old = |name: &str| out.join(name);
    let new = |name: &str| scratch.join(name);
    // (a) died after writing the new optimiser and JSON, before the weights: the old checkpoint, whole.
    copy(&old("last.safetensors"), "last.safetensors");
    copy(&old("last.optim.safetensors"), "last.optim.safetensors");
    copy(&new("last.optim.safetensors"), "last.optim.next.safetensors");
    copy(&new("last.json"), "last.json");
    let (_, c) = load_checkpoint(&crashed.join("last.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(c.training.unwrap().step, step2, "the weights' own training state wins over a newer sidecar");
    assert_eq!(adam_steps(&crashed.join("last.safetensors")).unwrap(), step2);
    // (b) died after the weights, before the rename: the new checkpoint, with the pending optimiser file.
    copy(&new("last.safetensors"), "last.safetensors");
    let (_, c) = load_checkpoint(&crashed.join("last.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(c.training.unwrap().step, step2 + 7);
    assert_eq!(adam_steps(&crashed.join("last.safetensors")).unwrap(), step2 + 7);
    // Without the pending file the mismatch is an error naming the optimiser file.
    std::fs::remove_file(crashed.join("last.optim.next.safetensors")).unwrap();
    let e = err(adam_steps(&crashed.join("last.safetensors")));
    assert!(e.contains("last.optim.safetensors") && e.contains(&format!("step {step2}")), "{e}");
    // A normal save leaves no pending file behind.
    assert!(!scratch.join("last.optim.next.safetensors").exists());
    assert!(!out.join("last.optim.next.safetensors").exists());
}

#[test]
fn hostile_configurations_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let model = HypercolumnNet::new(small_config(), &mut rng, &Device::Cpu).unwrap();
    let good = dir.path().join("good.safetensors");
    save_checkpoint(&good, &model, None, None).unwrap();
    let started = Instant::now();
    type Edit = Box<dyn Fn(&mut ModelConfig)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("input.safetensors", Box::new(|c| c.input_size = 8192), "input size 8192"),
        ("wide.safetensors", Box::new(|c| c.fc_width = 1 << 20), "parameters"),
        ("absurd.safetensors", Box::new(|c| c.block_widths = [usize::MAX / 2; 5]), "parameters"),
        ("points.safetensors", Box::new(|c| c.sample_points = usize::MAX), "sampled pixels"),
        ("batch.safetensors", Box::new(|c| c.batch_size = 1 << 40), "batch size"),
        ("deep.safetensors", Box::new(|c| c.mlp_hidden = vec![1; 1000]), "hidden MLP layers"),
        // Plausible but larger than the file: would allocate before finding the tensors missing.
        ("bigger.safetensors", Box::new(|c| c.fc_width = 4096), "bytes"),
    ];
    for (name, edit, needle) in cases {
        let p = dir.path().join(name);
        std::fs::copy(&good, &p).unwrap();
        set_config(&p, edit);
        let e = err(load_checkpoint(&p, &Device::Cpu));
        assert!(e.contains(name) && e.contains(needle), "{name}: {e}");
    }
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------------------------
// No-panic stress (the fuzz targets' entry points, driven by seeded mutations)

fn stress_iters() -> usize {
    std::env::var("HYPERSEG_STRESS_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1500)
}

/// One random mutation of `base`: bit flips, byte overwrites (often with boundary values), truncation,
/// insertion, deletion or a duplicated block; `hot` bytes at the start get half of the point mutations.
fn mutate(base: &[u8], hot: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut b = base.to_vec();
    let pick = |rng: &mut ChaCha8Rng, len: usize| {
        if hot > 0 && rng.random_bool(0.5) {
            rng.random_range(0..hot.min(len))
        } else {
            rng.random_range(0..len)
        }
    };
    for _ in 0..rng.random_range(1..=4) {
        if b.is_empty() {
            b.push(rng.random());
            continue;
        }
        match rng.random_range(0..7) {
            0 => {
                let i = pick(rng, b.len());
                b[i] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let i = pick(rng, b.len());
                b[i] = [0, 1, 0x7f, 0x80, 0xff, rng.random()][rng.random_range(0..6)];
            }
            2 => {
                let n = rng.random_range(0..b.len());
                b.truncate(n);
            }
            3 => {
                let i = pick(rng, b.len());
                let n = rng.random_range(1..16);
                for _ in 0..n {
                    b.insert(i, rng.random());
                }
            }
            4 => {
                let i = pick(rng, b.len());
                let n = rng.random_range(1..16).min(b.len() - i);
                b.drain(i..i + n);
            }
            5 => {
                let i = rng.random_range(0..b.len());
                let n = rng.random_range(1..64).min(b.len() - i);
                let block = b[i..i + n].to_vec();
                let j = rng.random_range(0..b.len());
                b.splice(j..j, block);
            }
            _ => {
                // A 4-byte field set to a large or boundary value (sizes, offsets, dimensions).
                if b.len() >= 4 {
                    let i = pick(rng, b.len() - 3);
                    let v: u32 = [0, 1, u32::MAX, 0x7fff_ffff, 20000, 65535, rng.random()][rng.random_range(0..7)];
                    let bytes = if rng.random_bool(0.5) { v.to_le_bytes() } else { v.to_be_bytes() };
                    b[i..i + 4].copy_from_slice(&bytes);
                }
            }
        }
    }
    b
}

/// The `checkpoint_reader` fuzz target's body: `bytes` as a checkpoint file must load or be refused.
fn check_checkpoint_bytes(dir: &Path, bytes: &[u8]) -> bool {
    let p = dir.join("fuzz.safetensors");
    std::fs::write(&p, bytes).unwrap();
    load_checkpoint(&p, &Device::Cpu).is_ok()
}

/// The `image_loader` fuzz target's body: `bytes` as an image (with a mask of its size when the header can be
/// read) must decode or be refused, and the mask the same.
fn check_image_bytes(dir: &Path, bytes: &[u8], ext: &str, as_mask: bool) -> bool {
    let p = dir.join(format!("fuzz.{ext}"));
    std::fs::write(&p, bytes).unwrap();
    let other = dir.join("other.png");
    let (w, h) = match image_dimensions(&p) {
        Ok((w, h)) if (w as u64) * (h as u64) <= 1 << 22 => (w, h),
        _ => (16, 16),
    };
    if as_mask {
        noise_rgb(&other, w, h);
    } else {
        gray(&other, w, h, |x, y| if (x + y) % 3 == 0 { 255 } else { 0 });
    }
    let s = if as_mask {
        Sample { id: "f".into(), image_path: other, mask_path: p }
    } else {
        Sample { id: "f".into(), image_path: p, mask_path: other }
    };
    decode_sample(&s, 32).is_ok()
}

/// The fuzz targets' tiny model, saved as a training checkpoint `dir/base.safetensors` (with its optimiser file).
fn tiny_checkpoint(dir: &Path) -> HypercolumnNet {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let config = ModelConfig { input_size: 32, block_widths: [2, 2, 2, 2, 2], fc_width: 4, mlp_hidden: vec![4], ..ModelConfig::tiny() };
    let model = HypercolumnNet::new(config, &mut rng, &Device::Cpu).unwrap();
    let adam = Adam::new(model.parameters(), AdamConfig::default()).unwrap();
    let state = hyperseg_engine::model::TrainingState { epoch: 0, step: 0, seed: 0, best_jaccard: 0.0 };
    save_checkpoint(&dir.join("base.safetensors"), &model, Some(&adam), Some(&state)).unwrap();
    model
}

/// Offset just past a safetensors header (where the tensor data starts).
fn header_end(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

#[test]
fn mutated_checkpoints_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let model = tiny_checkpoint(dir.path());
    let base = std::fs::read(dir.path().join("base.safetensors")).unwrap();
    assert!(check_checkpoint_bytes(dir.path(), &base));
    let (mut ok, n) = (0, stress_iters());
    let started = Instant::now();
    for _ in 0..n {
        ok += check_checkpoint_bytes(dir.path(), &mutate(&base, header_end(&base), &mut rng)) as usize;
    }
    eprintln!("checkpoint stress: {n} mutations, {ok} loaded, the rest refused, in {:?}", started.elapsed());
    // The optimiser file of the same checkpoint, through load_optimizer.
    let optim_path = dir.path().join("base.optim.safetensors");
    let optim = std::fs::read(&optim_path).unwrap();
    let mut ok = 0;
    for _ in 0..n / 3 {
        std::fs::write(&optim_path, mutate(&optim, header_end(&optim), &mut rng)).unwrap();
        let mut adam = Adam::new(model.parameters(), AdamConfig::default()).unwrap();
        ok += load_optimizer(&dir.path().join("base.safetensors"), &model, &mut adam).is_ok() as usize;
    }
    eprintln!("optimizer stress: {} mutations, {ok} loaded, the rest refused", n / 3);
}

/// Writes the fuzz targets' seeds (`fuzz/seeds/`): the tiny checkpoint and its optimiser file, and small pictures
/// of the kinds the image decoders take (8-bit RGB, grey with odd values, 16-bit grey, RGBA PNGs; a baseline JPEG
/// and a grey JPEG). See fuzz/README.md.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let dir = tempfile::tempdir().unwrap();
    tiny_checkpoint(dir.path());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let seeds = root.join("checkpoint_reader");
    std::fs::create_dir_all(&seeds).unwrap();
    std::fs::copy(dir.path().join("base.safetensors"), seeds.join("tiny.safetensors")).unwrap();
    std::fs::copy(dir.path().join("base.optim.safetensors"), seeds.join("tiny.optim.safetensors")).unwrap();
    let seeds = root.join("image_loader");
    std::fs::create_dir_all(&seeds).unwrap();
    let rgb = RgbImage::from_fn(24, 20, |x, y| Rgb([x as u8 * 9, y as u8 * 11, 77]));
    rgb.save(seeds.join("rgb.png")).unwrap();
    rgb.save(seeds.join("rgb.jpg")).unwrap();
    let grey = GrayImage::from_fn(16, 16, |x, y| Luma([[0, 1, 127, 128, 200, 255][((x + y) % 6) as usize]]));
    grey.save(seeds.join("grey_levels.png")).unwrap();
    grey.save(seeds.join("grey.jpg")).unwrap();
    image::ImageBuffer::<Luma<u16>, Vec<u16>>::from_fn(12, 10, |x, y| Luma([(x * 5000 + y * 300) as u16]))
        .save(seeds.join("grey16.png"))
        .unwrap();
    image::RgbaImage::from_fn(10, 12, |x, y| image::Rgba([x as u8 * 20, y as u8 * 20, 0, (x * y) as u8]))
        .save(seeds.join("rgba.png"))
        .unwrap();
}

#[test]
fn mutated_images_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let jpeg = std::fs::read(sample("train").join("images/ISIC_0000001.jpg")).unwrap();
    let png = std::fs::read(sample("train").join("masks/ISIC_0000001_segmentation.png")).unwrap();
    let mut rgb_png = Vec::new();
    RgbImage::from_fn(24, 20, |x, y| Rgb([x as u8 * 9, y as u8 * 11, 77]))
        .write_to(&mut std::io::Cursor::new(&mut rgb_png), image::ImageFormat::Png)
        .unwrap();
    let bases: [(&[u8], &str, bool); 3] = [(&jpeg, "jpg", false), (&rgb_png, "png", false), (&png, "png", true)];
    for (b, ext, mask) in bases {
        assert!(check_image_bytes(dir.path(), b, ext, mask), "the unmutated {ext} decodes");
    }
    let (mut ok, n) = (0, stress_iters());
    let started = Instant::now();
    for i in 0..n {
        let (base, ext, mask) = bases[i % 3];
        // The headers (JPEG markers, PNG IHDR) are in the first few hundred bytes.
        ok += check_image_bytes(dir.path(), &mutate(base, 700, &mut rng), ext, mask) as usize;
    }
    eprintln!("image stress: {n} mutations, {ok} decoded, the rest refused, in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------------------------
// Determinism, crash and resume

#[test]
fn same_seed_runs_and_resumed_runs_are_bitwise_identical() {
    hyperseg_engine::settings::set_deterministic(true);
    let dir = tempfile::tempdir().unwrap();
    let data = copy_sample(&dir.path().join("data"), 6);
    let run = |name: &str, epochs: usize, resume: Option<PathBuf>| {
        let out = dir.path().join(name);
        let s = train(&options(&data, &out, epochs, resume), &Device::Cpu, &mut Silent).unwrap();
        (out, s)
    };
    let (a, sa) = run("a", 3, None);
    let (b, _) = run("b", 3, None);
    let weights_a = tensors_of(&a.join("last.safetensors"));
    assert!(weights_a.len() > 10);
    assert!(weights_a == tensors_of(&b.join("last.safetensors")), "two runs with one seed differ");
    // Stopped after epoch 1, resumed to 3.
    let (c, _) = run("c", 1, None);
    let (c, sc) = run("c", 3, Some(c.join("last.safetensors")));
    let weights_c = tensors_of(&c.join("last.safetensors"));
    let differing: Vec<&String> = weights_a.keys().filter(|k| weights_a[*k] != weights_c[*k]).collect();
    assert!(differing.is_empty(), "resumed run differs in {} tensors, e.g. {:?}", differing.len(), &differing[..differing.len().min(5)]);
    assert!(tensors_of(&a.join("last.optim.safetensors")) == tensors_of(&c.join("last.optim.safetensors")), "Adam moments differ");
    let losses = |s: &hyperseg_engine::train::TrainSummary| s.records.iter().map(|r| r.train_loss.to_bits()).collect::<Vec<_>>();
    assert_eq!(losses(&sa), losses(&sc), "per-epoch losses differ");
}

#[test]
fn kill_9_mid_training_leaves_a_checkpoint_that_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = copy_sample(&dir.path().join("data"), 4);
    let out = dir.path().join("run");
    let epochs = "30";
    let cmd = |extra: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_hyperseg-engine"));
        c.args([
            "train",
            "--device",
            "cpu",
            "--preset",
            "tiny",
            "--input-size",
            "32",
            "--batch-size",
            "2",
            "--sample-points",
            "256",
            "--workers",
            "1",
            "--epochs",
            epochs,
            "--data",
        ])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
        c
    };
    let last = out.join("last.safetensors");
    // Kill it at several points (the first time once a checkpoint exists), resuming each time.
    for (round, delay_ms) in [0u64, 30, 80, 160].into_iter().enumerate() {
        let resume: Vec<&str> = if round == 0 { vec![] } else { vec!["--resume", last.to_str().unwrap()] };
        let mut child = cmd(&resume).stderr(std::process::Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !last.exists() {
            assert!(Instant::now() < deadline, "no checkpoint after 60 s");
            if let Some(status) = child.try_wait().unwrap() {
                panic!("training stopped before its first checkpoint: {status}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "round {round} failed before the kill");
            eprintln!("kill -9 round {round}: training had already finished");
            break;
        }
        child.kill().unwrap(); // SIGKILL
        assert!(!child.wait().unwrap().success());
        // The files left behind form one consistent checkpoint.
        let (model, c) = load_checkpoint(&last, &Device::Cpu).expect("the checkpoint left by kill -9 loads");
        let state = c.training.expect("training state");
        let mut adam = Adam::new(model.parameters(), AdamConfig::default()).unwrap();
        load_optimizer(&last, &model, &mut adam).expect("its optimizer state loads");
        assert_eq!(adam.steps(), state.step);
        eprintln!("kill -9 round {round}: checkpoint at epoch {} (step {})", state.epoch, state.step);
    }
    let o = cmd(&["--resume", last.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && !stderr.contains("panicked"), "resume failed: {stderr}");
    let (_, c) = load_checkpoint(&last, &Device::Cpu).unwrap();
    assert_eq!(c.training.unwrap().epoch, 30);
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let epochs: Vec<u64> = log.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs, (1..=30).collect::<Vec<_>>(), "one log record per epoch after the crashes");
    assert!(!out.join("last.optim.next.safetensors").exists());
    let leftovers: Vec<_> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n.to_string_lossy().ends_with(".tmp")).collect();
    assert!(leftovers.is_empty(), "temporary files of killed runs remain: {leftovers:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// Divergence

#[test]
fn divergence_stops_training_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = trained_run(dir.path(), 1);
    let last = out.join("last.safetensors");
    // Continue with an absurd learning rate: the weights blow up within a step or two.
    set_config(&last, |c| c.learning_rate = 1e38);
    let kept: Vec<Vec<u8>> =
        ["last.safetensors", "last.optim.safetensors", "last.json"].iter().map(|f| std::fs::read(out.join(f)).unwrap()).collect();
    let (_, c) = load_checkpoint(&last, &Device::Cpu).unwrap();
    let step1 = c.training.unwrap().step;
    match train(&options(&data, &out, 3, Some(last.clone())), &Device::Cpu, &mut Silent) {
        Err(Error::Diverged { step, epoch, value }) => {
            assert!(!value.is_finite());
            assert!(step > step1 && epoch >= 1, "step {step}, epoch {epoch}");
            let msg = Error::Diverged { step, epoch, value }.to_string();
            assert!(msg.contains(&format!("step {step}")), "{msg}");
        }
        other => panic!("expected divergence, got {:?}", other.map(|s| s.records.len())),
    }
    for (f, bytes) in ["last.safetensors", "last.optim.safetensors", "last.json"].iter().zip(&kept) {
        assert!(std::fs::read(out.join(f)).unwrap() == *bytes, "{f} changed");
    }
    let (_, c) = load_checkpoint(&last, &Device::Cpu).unwrap();
    assert_eq!(c.training.unwrap().step, step1);
}
