//! ISIC 2017 scoring against hand-computed values: zero-denominator rules, the > 128 threshold, thresholded
//! Jaccard, mean over images versus pooled counts, JSON keys, the CSV, and folder pairing with its errors.

use std::path::Path;

use hyperseg_engine::metrics::{per_image_csv, score_dirs, write_per_image_csv, Confusion, ImageScore, ScoreReport, CSV_HEADER};

const EPS: f64 = 1e-12;

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < EPS, "{a} != {b}");
}

/// A 4x4 grey mask (0/255) with lesion at the listed pixel indices.
fn mask(on: &[usize]) -> Vec<u8> {
    let mut m = vec![0u8; 16];
    for &i in on {
        m[i] = 255;
    }
    m
}

#[test]
fn partial_overlap_matches_hand_computation() {
    // Truth: 6 pixels. Prediction: 4 of them and 2 others. TP 4, FP 2, FN 2, TN 8.
    let truth = mask(&[0, 1, 2, 3, 4, 5]);
    let pred = mask(&[0, 1, 2, 3, 10, 11]);
    let s = ImageScore::from_gray("a", &pred, &truth).unwrap();
    assert_eq!(s.confusion, Confusion { tp: 4, fp: 2, fn_: 2, tn: 8 });
    close(s.jaccard, 0.5);
    close(s.threshold_jaccard, 0.0);
    close(s.dice, 8.0 / 12.0);
    close(s.accuracy, 0.75);
    close(s.sensitivity, 4.0 / 6.0);
    close(s.specificity, 0.8);
}

#[test]
fn empty_prediction() {
    let s = ImageScore::from_gray("e", &mask(&[]), &mask(&[5, 6, 9, 10])).unwrap();
    assert_eq!(s.confusion, Confusion { tp: 0, fp: 0, fn_: 4, tn: 12 });
    close(s.jaccard, 0.0);
    close(s.dice, 0.0);
    close(s.accuracy, 0.75);
    close(s.sensitivity, 0.0);
    close(s.specificity, 1.0);
}

#[test]
fn full_prediction() {
    let all: Vec<usize> = (0..16).collect();
    let s = ImageScore::from_gray("f", &mask(&all), &mask(&[5, 6, 9, 10])).unwrap();
    assert_eq!(s.confusion, Confusion { tp: 4, fp: 12, fn_: 0, tn: 0 });
    close(s.jaccard, 0.25);
    close(s.dice, 0.4);
    close(s.accuracy, 0.25);
    close(s.sensitivity, 1.0);
    close(s.specificity, 0.0);
    // Full truth too: TN + FP = 0, so specificity scores 1.0.
    let s = ImageScore::from_gray("ff", &mask(&all), &mask(&all)).unwrap();
    close(s.specificity, 1.0);
    close(s.jaccard, 1.0);
}

#[test]
fn empty_union_scores_one_everywhere() {
    let s = ImageScore::from_gray("none", &mask(&[]), &mask(&[])).unwrap();
    assert_eq!(s.confusion, Confusion { tp: 0, fp: 0, fn_: 0, tn: 16 });
    for v in [s.jaccard, s.threshold_jaccard, s.dice, s.accuracy, s.sensitivity, s.specificity] {
        close(v, 1.0);
    }
}

#[test]
fn binarisation_is_strictly_above_128() {
    let pred = vec![128, 129, 0, 255];
    let truth = vec![255, 255, 128, 129];
    // Pixel by pixel: (off, on) FN, (on, on) TP, (off, off) TN, (on, on) TP.
    let c = Confusion::from_gray(&pred, &truth).unwrap();
    assert_eq!(c, Confusion { tp: 2, fp: 0, fn_: 1, tn: 1 });
    // Labels {0, 1} go through from_labels, not from_gray.
    assert_eq!(Confusion::from_labels(&[1, 0], &[1, 1]).unwrap(), Confusion { tp: 1, fp: 0, fn_: 1, tn: 0 });
    assert!(Confusion::from_gray(&[0; 3], &[0; 4]).is_err());
}

#[test]
fn thresholded_jaccard_cuts_below_065() {
    let c = |tp, fp| Confusion { tp, fp, fn_: 0, tn: 100 };
    close(c(13, 7).threshold_jaccard(), 0.65); // exactly 0.65 is kept
    close(c(7, 3).threshold_jaccard(), 0.7);
    close(c(6, 4).threshold_jaccard(), 0.0);
}

#[test]
fn report_is_the_mean_over_images_not_pooled() {
    // Image A: a one-pixel lesion found exactly (J = 1). Image B: 8-pixel lesion, half found (J = 0.5).
    let a = ImageScore::from_gray("A", &mask(&[3]), &mask(&[3])).unwrap();
    let b = ImageScore::from_gray("B", &mask(&[0, 1, 2, 3]), &mask(&[0, 1, 2, 3, 4, 5, 6, 7])).unwrap();
    let r = ScoreReport::from_images(vec![a, b]).unwrap();
    assert_eq!(r.n_images, 2);
    close(r.jaccard, 0.75);
    close(r.threshold_jaccard, 0.5); // 1.0 and 0 (0.5 < 0.65)
    close(r.dice, (1.0 + 8.0 / 12.0) / 2.0);
    close(r.sensitivity, 0.75);
    close(r.specificity, 1.0);
    close(r.accuracy, (1.0 + 12.0 / 16.0) / 2.0);
    // Pooled: TP 5, FP 0, FN 4 -> 5/9, which is not what ISIC reports.
    let pooled = r.pooled();
    assert_eq!(pooled, Confusion { tp: 5, fp: 0, fn_: 4, tn: 23 });
    close(pooled.jaccard(), 5.0 / 9.0);
    assert!(ScoreReport::from_images(vec![]).is_err());
}

#[test]
fn json_has_exactly_the_agreed_keys() {
    let a = ImageScore::from_gray("A", &mask(&[3]), &mask(&[3])).unwrap();
    let r = ScoreReport::from_images(vec![a]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["accuracy", "dice", "jaccard", "n_images", "sensitivity", "specificity", "threshold_jaccard"]);
    assert_eq!(v["n_images"], 1);
    assert_eq!(v["jaccard"], 1.0);
}

#[test]
fn csv_lists_every_image() {
    let a = ImageScore::from_gray("ISIC_0000001", &mask(&[0, 1, 2, 3]), &mask(&[0, 1, 2, 3, 4, 5, 6, 7])).unwrap();
    let b = ImageScore::from_gray("odd,name", &mask(&[]), &mask(&[])).unwrap();
    let text = per_image_csv(&[a.clone(), b.clone()]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], CSV_HEADER);
    assert_eq!(lines[1], "ISIC_0000001,4,0,4,8,0.500000,0.000000,0.666667,0.750000,0.500000,1.000000");
    assert!(lines[2].starts_with("\"odd,name\",0,0,0,16,1.000000"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scores.csv");
    write_per_image_csv(&path, &[a, b]).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left behind");
}

fn save_mask(path: &Path, w: u32, h: u32, on: impl Fn(u32, u32) -> bool) {
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([if on(x, y) { 255 } else { 0 }])).save(path).unwrap();
}

#[test]
fn score_dirs_pairs_by_id_with_optional_suffix() {
    let root = tempfile::tempdir().unwrap();
    let truth = root.path().join("split");
    let pred = root.path().join("pred");
    std::fs::create_dir_all(truth.join("masks")).unwrap();
    std::fs::create_dir_all(truth.join("images")).unwrap();
    std::fs::create_dir_all(&pred).unwrap();
    // ISIC_0000001: truth left half of 8x4, prediction left quarter -> J 0.5.
    save_mask(&truth.join("masks/ISIC_0000001_segmentation.png"), 8, 4, |x, _| x < 4);
    save_mask(&pred.join("ISIC_0000001.png"), 8, 4, |x, _| x < 2);
    // ISIC_0000002: exact, with the suffix on the prediction only -> J 1.
    save_mask(&truth.join("masks/ISIC_0000002.png"), 5, 3, |x, y| x == y);
    save_mask(&pred.join("prob_ISIC_0000002_segmentation.png"), 5, 3, |x, y| x == y);
    // A non-ISIC name paired by stem: both empty -> 1.
    save_mask(&truth.join("masks/lesionA_segmentation.png"), 4, 4, |_, _| false);
    save_mask(&pred.join("lesionA.png"), 4, 4, |_, _| false);
    // Ignored: a prediction without truth, a CSV, superpixels.
    save_mask(&pred.join("ISIC_0000099.png"), 2, 2, |_, _| true);
    std::fs::write(pred.join("notes.csv"), "x").unwrap();
    save_mask(&truth.join("masks/ISIC_0000001_superpixels.png"), 1, 1, |_, _| true);

    let r = score_dirs(&pred, &truth).unwrap();
    assert_eq!(r.n_images, 3);
    let ids: Vec<&str> = r.per_image.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["ISIC_0000001", "ISIC_0000002", "lesionA"]);
    close(r.jaccard, (0.5 + 1.0 + 1.0) / 3.0);
    close(r.threshold_jaccard, 2.0 / 3.0);
    close(r.sensitivity, (0.5 + 1.0 + 1.0) / 3.0);
    // The masks folder itself works as the truth folder too.
    assert_eq!(score_dirs(&pred, truth.join("masks")).unwrap(), r);
}

#[test]
fn score_dirs_reads_the_official_ground_truth_folder() {
    let root = tempfile::tempdir().unwrap();
    let gt = root.path().join("ISIC-2017_Validation_Part1_GroundTruth");
    let pred = root.path().join("pred");
    std::fs::create_dir_all(&gt).unwrap();
    std::fs::create_dir_all(&pred).unwrap();
    std::fs::create_dir_all(root.path().join("ISIC-2017_Validation_Data")).unwrap();
    save_mask(&gt.join("ISIC_0000003_segmentation.png"), 6, 6, |x, y| x + y < 6);
    save_mask(&pred.join("ISIC_0000003_segmentation.png"), 6, 6, |x, y| x + y < 6);
    let r = score_dirs(&pred, root.path()).unwrap();
    assert_eq!(r.n_images, 1);
    close(r.jaccard, 1.0);
}

#[test]
fn missing_prediction_names_the_truth_file() {
    let root = tempfile::tempdir().unwrap();
    let (truth, pred) = (root.path().join("truth"), root.path().join("pred"));
    std::fs::create_dir_all(&truth).unwrap();
    std::fs::create_dir_all(&pred).unwrap();
    save_mask(&truth.join("ISIC_0000001_segmentation.png"), 4, 4, |_, _| true);
    save_mask(&truth.join("ISIC_0000002_segmentation.png"), 4, 4, |_, _| true);
    save_mask(&pred.join("ISIC_0000001.png"), 4, 4, |_, _| true);
    let msg = score_dirs(&pred, &truth).unwrap_err().to_string();
    assert!(msg.contains("ISIC_0000002_segmentation.png") && msg.contains("no prediction"), "{msg}");
}

#[test]
fn size_mismatch_names_both_files() {
    let root = tempfile::tempdir().unwrap();
    let (truth, pred) = (root.path().join("truth"), root.path().join("pred"));
    std::fs::create_dir_all(&truth).unwrap();
    std::fs::create_dir_all(&pred).unwrap();
    save_mask(&truth.join("ISIC_0000001_segmentation.png"), 8, 6, |_, _| true);
    save_mask(&pred.join("ISIC_0000001.png"), 6, 8, |_, _| true);
    let msg = score_dirs(&pred, &truth).unwrap_err().to_string();
    assert!(msg.contains("pred/ISIC_0000001.png") && msg.contains("truth/ISIC_0000001_segmentation.png"), "{msg}");
    assert!(msg.contains("6x8") && msg.contains("8x6"), "{msg}");
}

#[test]
fn empty_truth_folder_is_an_error() {
    let root = tempfile::tempdir().unwrap();
    let msg = score_dirs(root.path(), root.path()).unwrap_err().to_string();
    assert!(msg.contains(&root.path().display().to_string()), "{msg}");
}

#[test]
fn bundled_sample_scores_perfectly_against_itself() {
    let val = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sample/val");
    let r = score_dirs(val.join("masks"), &val).unwrap();
    assert_eq!(r.n_images, 30);
    for v in [r.jaccard, r.threshold_jaccard, r.dice, r.accuracy, r.sensitivity, r.specificity] {
        close(v, 1.0);
    }
}
