//! The data pipeline end to end on small folders built here and on the bundled sample: discovery of both layouts
//! and its errors, decoding, augmentation alignment, loader determinism, the cache and its corruption checks, and
//! the inference helpers.

use std::path::{Path, PathBuf};

use hyperseg_engine::data::augment::{sample_rng, AugmentParams};
use hyperseg_engine::data::{
    decode_sample, find_images, load_for_inference, probabilities_to_mask, resize_probabilities, write_mask_png, Augment, Batch, Cache,
    Dataset, Decoded, Loader, LoaderConfig, IMAGENET_MEAN,
};
use image::{GrayImage, Luma, Rgb, RgbImage};

fn sample_dir(split: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sample").join(split)
}

fn save_rgb(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    RgbImage::from_fn(w, h, |x, y| Rgb(f(x, y))).save(path).unwrap();
}

fn save_gray(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    GrayImage::from_fn(w, h, |x, y| Luma([f(x, y)])).save(path).unwrap();
}

/// A pseudo-random but fixed colour per pixel.
fn noise(seed: u32) -> impl Fn(u32, u32) -> [u8; 3] {
    move |x, y| {
        let v = (x.wrapping_mul(73_856_093) ^ y.wrapping_mul(19_349_663) ^ seed.wrapping_mul(83_492_791)) % 65_521;
        [(v % 256) as u8, (v / 7 % 256) as u8, (v / 13 % 256) as u8]
    }
}

/// `dir/images` + `dir/masks` with `n` PNG pairs of `w x h`; the mask is a disc whose centre depends on `i`.
fn make_split(dir: &Path, n: u32, w: u32, h: u32) {
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::create_dir_all(dir.join("masks")).unwrap();
    for i in 0..n {
        let id = format!("ISIC_{:07}", i + 10);
        save_rgb(&dir.join(format!("images/{id}.png")), w, h, noise(i));
        let (cx, cy) = ((i * 5 % w) as i64, (i * 3 % h) as i64);
        save_gray(&dir.join(format!("masks/{id}_segmentation.png")), w, h, |x, y| {
            let (dx, dy) = (x as i64 - cx, y as i64 - cy);
            if dx * dx + dy * dy < 40 {
                255
            } else {
                0
            }
        });
    }
}

fn err_text<T: std::fmt::Debug>(r: hyperseg_engine::error::Result<T>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn discovers_images_and_masks_layout() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("images")).unwrap();
    std::fs::create_dir_all(d.join("masks")).unwrap();
    save_rgb(&d.join("images/ISIC_0000002.png"), 6, 4, noise(1));
    save_rgb(&d.join("images/ISIC_0000001.jpg"), 6, 4, noise(2));
    save_rgb(&d.join("images/ISIC_0000001_superpixels.png"), 6, 4, noise(3));
    save_rgb(&d.join("images/plain.jpeg"), 3, 3, noise(4));
    std::fs::write(d.join("images/metadata.csv"), "image_id\n").unwrap();
    save_gray(&d.join("masks/ISIC_0000001_segmentation.png"), 6, 4, |_, _| 255);
    save_gray(&d.join("masks/ISIC_0000002.png"), 6, 4, |_, _| 0);
    save_gray(&d.join("masks/plain_segmentation.png"), 3, 3, |_, _| 0);
    save_gray(&d.join("masks/ISIC_0000077_segmentation.png"), 2, 2, |_, _| 0); // no image: ignored
    let ds = Dataset::discover(d).unwrap();
    let ids: Vec<&str> = ds.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["ISIC_0000001", "ISIC_0000002", "plain"]);
    assert_eq!(ds.samples()[0].image_path, d.join("images/ISIC_0000001.jpg"));
    assert_eq!(ds.samples()[0].mask_path, d.join("masks/ISIC_0000001_segmentation.png"));
    assert_eq!(ds.samples()[1].mask_path, d.join("masks/ISIC_0000002.png"));
    let found: Vec<String> = find_images(d).unwrap().into_iter().map(|(id, _)| id).collect();
    assert_eq!(found, ["ISIC_0000001", "ISIC_0000002", "plain"]);
}

#[test]
fn discovers_official_isic_layout() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("ISIC-2017_Training_Data");
    let gt = d.join("ISIC-2017_Training_Part1_GroundTruth");
    for f in [&data, &gt, &d.join("ISIC-2017_Training_Part2_GroundTruth")] {
        std::fs::create_dir_all(f).unwrap();
    }
    std::fs::write(d.join("ISIC-2017_Training_Part3_GroundTruth.csv"), "x").unwrap();
    save_rgb(&data.join("ISIC_0000001.jpg"), 5, 7, noise(1));
    save_rgb(&data.join("ISIC_0000001_superpixels.png"), 5, 7, noise(1));
    std::fs::write(data.join("ISIC-2017_Training_Data_metadata.csv"), "image_id,age\n").unwrap();
    save_gray(&gt.join("ISIC_0000001_segmentation.png"), 5, 7, |x, _| if x > 2 { 255 } else { 0 });
    let ds = Dataset::discover(d).unwrap();
    assert_eq!(ds.len(), 1);
    assert_eq!(ds.samples()[0].id, "ISIC_0000001");
    assert_eq!(ds.samples()[0].image_path, data.join("ISIC_0000001.jpg"));
    assert_eq!(ds.samples()[0].mask_path, gt.join("ISIC_0000001_segmentation.png"));
}

#[test]
fn discovers_the_bundled_sample() {
    let train = Dataset::discover(sample_dir("train")).unwrap();
    assert_eq!(train.len(), 160);
    let val = Dataset::discover(sample_dir("val")).unwrap();
    assert_eq!(val.len(), 30);
    let d = decode_sample(&val.samples()[0], 224).unwrap(); // ISIC_0001852, 512x342
    assert_eq!((d.rgb.len(), d.mask.len()), (224 * 224 * 3, 224 * 224));
    let lesion = d.mask.iter().filter(|&&v| v == 1).count();
    assert!(lesion > 100 && lesion < 224 * 224 && d.mask.iter().all(|&v| v <= 1));
}

#[test]
fn empty_folder_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let msg = err_text(Dataset::discover(dir.path()));
    assert!(msg.contains(&dir.path().display().to_string()) && msg.contains("empty"), "{msg}");
    std::fs::create_dir_all(dir.path().join("images")).unwrap();
    std::fs::create_dir_all(dir.path().join("masks")).unwrap();
    std::fs::write(dir.path().join("images/readme.txt"), "x").unwrap();
    let msg = err_text(Dataset::discover(dir.path()));
    assert!(msg.contains("images") && msg.contains("no images"), "{msg}");
    let missing = dir.path().join("nope");
    assert!(err_text(Dataset::discover(&missing)).contains("nope"));
}

#[test]
fn image_without_mask_is_named() {
    let dir = tempfile::tempdir().unwrap();
    make_split(dir.path(), 2, 8, 8);
    std::fs::remove_file(dir.path().join("masks/ISIC_0000011_segmentation.png")).unwrap();
    let msg = err_text(Dataset::discover(dir.path()));
    assert!(msg.contains("images/ISIC_0000011.png") && msg.contains("no mask"), "{msg}");
}

#[test]
fn unreadable_image_is_named() {
    let dir = tempfile::tempdir().unwrap();
    make_split(dir.path(), 2, 8, 8);
    std::fs::write(dir.path().join("images/ISIC_0000011.png"), b"this is not a picture").unwrap();
    let msg = err_text(Dataset::discover(dir.path()));
    assert!(msg.contains("images/ISIC_0000011.png"), "{msg}");
    // A picture whose header reads but whose body is cut short fails at decoding, also named.
    let dir = tempfile::tempdir().unwrap();
    make_split(dir.path(), 1, 32, 32);
    let path = dir.path().join("images/ISIC_0000010.png");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let ds = Dataset::discover(dir.path()).unwrap();
    let msg = err_text(decode_sample(&ds.samples()[0], 16));
    assert!(msg.contains("images/ISIC_0000010.png"), "{msg}");
}

#[test]
fn mask_size_mismatch_names_both_files() {
    let dir = tempfile::tempdir().unwrap();
    make_split(dir.path(), 2, 8, 8);
    save_gray(&dir.path().join("masks/ISIC_0000010_segmentation.png"), 8, 9, |_, _| 0);
    let msg = err_text(Dataset::discover(dir.path()));
    assert!(msg.contains("masks/ISIC_0000010_segmentation.png") && msg.contains("images/ISIC_0000010.png"), "{msg}");
    assert!(msg.contains("8x9") && msg.contains("8x8"), "{msg}");
}

#[test]
fn decoding_normalises_and_binarises() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("images")).unwrap();
    std::fs::create_dir_all(d.join("masks")).unwrap();
    save_rgb(&d.join("images/a.png"), 20, 10, |_, _| [200, 100, 50]);
    save_gray(&d.join("masks/a_segmentation.png"), 20, 10, |x, _| if x < 10 { 128 } else { 127 });
    let ds = Dataset::discover(d).unwrap();
    let dec = decode_sample(&ds.samples()[0], 8).unwrap();
    assert!(dec.rgb.chunks(3).all(|p| p == [200, 100, 50]));
    // Left half > 127 is lesion; nearest neighbour keeps the split at the middle column.
    for y in 0..8 {
        assert_eq!(&dec.mask[y * 8..y * 8 + 8], &[1, 1, 1, 1, 0, 0, 0, 0]);
    }
    let (img, mask) = AugmentParams::identity().apply(&dec);
    assert_eq!(mask, dec.mask);
    for c in 0..3 {
        let want = [200.0, 100.0, 50.0][c] - IMAGENET_MEAN[c];
        assert!(img[c * 64..(c + 1) * 64].iter().all(|&v| v == want));
    }
}

/// The only pixel with nonzero red in channel-planar `img` (after mean removal red > -123.68 + 1).
fn brightest(img: &[f32], size: usize) -> usize {
    let n = size * size;
    (0..n)
        .max_by(|&a, &b| {
            let sa: f32 = (0..3).map(|c| img[c * n + a]).sum();
            let sb: f32 = (0..3).map(|c| img[c * n + b]).sum();
            sa.total_cmp(&sb)
        })
        .unwrap()
}

#[test]
fn augmentation_moves_image_and_mask_together() {
    let s = 8usize;
    let mut d = Decoded { size: s as u32, rgb: vec![0; s * s * 3], mask: vec![0; s * s] };
    let (mx, my) = (1, 2);
    d.rgb[3 * (my * s + mx)..3 * (my * s + mx) + 3].copy_from_slice(&[255, 40, 40]);
    d.mask[my * s + mx] = 1;
    // Every geometric combination: the mark and the mask pixel land together.
    for rot90 in 0..4u8 {
        for hflip in [false, true] {
            for vflip in [false, true] {
                let p = AugmentParams { rot90, hflip, vflip, ..AugmentParams::identity() };
                let (img, mask) = p.apply(&d);
                let at = mask.iter().position(|&v| v == 1).unwrap();
                assert_eq!(mask.iter().filter(|&&v| v == 1).count(), 1);
                assert_eq!(brightest(&img, s), at, "{p:?}");
            }
        }
    }
    // One clockwise quarter turn sends (x, y) to (size-1-y, x).
    let (_, mask) = AugmentParams { rot90: 1, ..AugmentParams::identity() }.apply(&d);
    assert_eq!(mask[mx * s + (s - 1 - my)], 1);
    // Random draws with colour jitter keep the alignment and never touch the mask values.
    for i in 0..32 {
        let p = Augment::paper().sample(&mut sample_rng(7, 0, i));
        let (img, mask) = p.apply(&d);
        assert_eq!(brightest(&img, s), mask.iter().position(|&v| v == 1).unwrap(), "{p:?}");
        assert!(img.iter().enumerate().all(|(k, &v)| {
            let c = k / (s * s);
            (-IMAGENET_MEAN[c]..=255.0 - IMAGENET_MEAN[c]).contains(&v)
        }));
    }
}

#[test]
fn augmented_batches_from_files_stay_aligned() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("images")).unwrap();
    std::fs::create_dir_all(d.join("masks")).unwrap();
    // A white square on black, and its mask, off-centre so every rotation and flip moves it.
    let on = |x: u32, y: u32| (2..6).contains(&x) && (1..4).contains(&y);
    for i in 0..4 {
        save_rgb(&d.join(format!("images/m{i}.png")), 16, 16, |x, y| if on(x, y) { [255; 3] } else { [0; 3] });
        save_gray(&d.join(format!("masks/m{i}.png")), 16, 16, |x, y| if on(x, y) { 255 } else { 0 });
    }
    let cfg = LoaderConfig { workers: 2, ..LoaderConfig::train(2, 16, 3) };
    let loader = Loader::from_dataset(Dataset::discover(d).unwrap(), cfg).unwrap();
    for epoch in 0..3 {
        for batch in loader.epoch(epoch) {
            let batch = batch.unwrap();
            for i in 0..batch.len() {
                let (img, mask) = (batch.image(i), batch.mask(i));
                for p in 0..256 {
                    let bright = img[p] + IMAGENET_MEAN[0] > 127.0;
                    assert_eq!(bright, mask[p] == 1, "epoch {epoch} sample {} pixel {p}", batch.ids[i]);
                }
            }
        }
    }
}

fn collect(loader: &Loader, epoch: u64) -> Vec<Batch> {
    loader.epoch(epoch).map(|b| b.unwrap()).collect()
}

#[test]
fn loader_is_deterministic_across_thread_counts() {
    let dir = tempfile::tempdir().unwrap();
    make_split(dir.path(), 7, 24, 20);
    let ds = Dataset::discover(dir.path()).unwrap();
    let cfg = |workers| LoaderConfig { workers, drop_last: false, ..LoaderConfig::train(3, 16, 99) };
    let base = Loader::from_dataset(ds.clone(), cfg(0)).unwrap();
    assert_eq!(base.batches_per_epoch(), 3);
    let e0 = collect(&base, 0);
    let e1 = collect(&base, 1);
    assert_eq!(e0.iter().map(Batch::len).collect::<Vec<_>>(), [3, 3, 1]);
    assert_eq!(e0[0].images.len(), 3 * 3 * 16 * 16);
    for workers in [1, 2, 3, 8] {
        let l = Loader::from_dataset(ds.clone(), cfg(workers)).unwrap();
        assert_eq!(collect(&l, 0), e0, "{workers} workers, epoch 0");
        assert_eq!(collect(&l, 1), e1, "{workers} workers, epoch 1");
    }
    // Each epoch serves every sample once, in a new order.
    let ids = |e: &[Batch]| e.iter().flat_map(|b| b.ids.clone()).collect::<Vec<_>>();
    let (mut a, b) = (ids(&e0), ids(&e1));
    assert_ne!(a, b);
    a.sort();
    assert_eq!(a, ds.iter().map(|s| s.id.clone()).collect::<Vec<_>>());
    // Another seed, another stream; drop_last drops the short batch.
    let other = Loader::from_dataset(ds.clone(), LoaderConfig { seed: 100, ..cfg(2) }).unwrap();
    assert_ne!(collect(&other, 0), e0);
    let dropping = Loader::from_dataset(ds.clone(), LoaderConfig { drop_last: true, ..cfg(2) }).unwrap();
    assert_eq!(collect(&dropping, 0), e0[..2].to_vec());
    // Abandoning an epoch early stops its workers.
    let l = Loader::from_dataset(ds, cfg(3)).unwrap();
    assert_eq!(l.epoch(0).take(1).count(), 1);
}

#[test]
fn cache_roundtrip_matches_decoding() {
    let dir = tempfile::tempdir().unwrap();
    make_split(&dir.path().join("split"), 5, 20, 12);
    let ds = Dataset::discover(dir.path().join("split")).unwrap();
    let path = dir.path().join("train-15.cache");
    let cache = Cache::build(&ds, 15, &path).unwrap();
    assert_eq!((cache.len(), cache.size()), (5, 15));
    assert_eq!(cache.ids(), ds.iter().map(|s| s.id.clone()).collect::<Vec<_>>());
    for (i, s) in ds.iter().enumerate() {
        assert_eq!(cache.get(i).unwrap(), decode_sample(s, 15).unwrap());
    }
    assert!(cache.get(5).is_err());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "only the split and the cache: {leftovers:?}");

    let cfg = LoaderConfig { workers: 2, drop_last: false, ..LoaderConfig::train(2, 15, 5) };
    let from_files = Loader::from_dataset(ds.clone(), cfg.clone()).unwrap();
    let from_cache = Loader::from_cache(Cache::open(&path).unwrap(), cfg.clone()).unwrap();
    assert_eq!(collect(&from_cache, 4), collect(&from_files, 4));
    let msg = err_text(Loader::from_cache(Cache::open(&path).unwrap(), LoaderConfig { size: 16, ..cfg }));
    assert!(msg.contains("train-15.cache"), "{msg}");

    // open_or_build reuses a matching cache and rebuilds one of another size.
    assert_eq!(Cache::open_or_build(&ds, 15, &path).unwrap().size(), 15);
    assert_eq!(Cache::open_or_build(&ds, 9, &path).unwrap().size(), 9);
}

#[test]
fn corrupt_cache_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    make_split(&dir.path().join("split"), 3, 10, 10);
    let ds = Dataset::discover(dir.path().join("split")).unwrap();
    let path = dir.path().join("c.cache");
    drop(Cache::build(&ds, 8, &path).unwrap());
    let good = std::fs::read(&path).unwrap();
    let name = path.display().to_string();
    let check = |bytes: &[u8], want: &str| {
        std::fs::write(&path, bytes).unwrap();
        let msg = err_text(Cache::open(&path));
        assert!(msg.contains(&name) && msg.contains(want), "{msg}");
    };
    check(&good[..good.len() - 1], "truncated");
    check(&good[..20], "header");
    let mut flipped = good.clone();
    *flipped.last_mut().unwrap() ^= 1;
    check(&flipped, "checksum");
    let mut magic = good.clone();
    magic[0] = b'X';
    check(&magic, "magic");
    std::fs::remove_file(&path).unwrap();
    assert!(err_text(Cache::open(&path)).contains(&name));
}

#[test]
fn inference_helpers_keep_the_original_size() {
    let image = sample_dir("val").join("images/ISIC_0001852.jpg");
    let input = load_for_inference(&image, 224).unwrap();
    assert_eq!((input.width, input.height, input.size), (512, 342, 224));
    assert_eq!(input.image.len(), 3 * 224 * 224);
    // A probability map that is 1 on the left half comes back as a mask of the original size.
    let prob: Vec<f32> = (0..224 * 224).map(|p| if p % 224 < 112 { 1.0 } else { 0.0 }).collect();
    let full = resize_probabilities(&prob, 224, input.width, input.height).unwrap();
    assert_eq!(full.len(), 512 * 342);
    let mask = probabilities_to_mask(&full, 0.5);
    assert_eq!(&mask[..512].iter().filter(|&&v| v == 255).count(), &256);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ISIC_0001852.png");
    write_mask_png(&out, 512, 342, &mask).unwrap();
    let back = image::open(&out).unwrap().into_luma8();
    assert_eq!((back.width(), back.height()), (512, 342));
    assert_eq!(back.into_raw(), mask);
    let msg = err_text(load_for_inference(dir.path().join("missing.jpg"), 224));
    assert!(msg.contains("missing.jpg"), "{msg}");
}
