//! Procedural scenes and the P-MMVP pair benchmark.

use agff_lens::scenes::{
    MmvpPattern, MmvpTally, SCENE_SIZE, Scene, ScenePair, SceneRng, ScenesError,
    differing_patterns, export_mmvp, mmvp_pair_correct, pmmvp_pairs, read_mmvp_dir, vocabulary,
    write_scenes,
};
use std::collections::BTreeSet;
use std::path::PathBuf;

fn png_bytes(img: &image::RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir =
        std::env::temp_dir().join(format!("agff_scenes_{name}_{}_{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn assert_in_vocabulary(text: &str, vocab: &BTreeSet<&str>) {
    assert!(!text.is_empty());
    for w in text.split(' ') {
        assert!(
            vocab.contains(w),
            "word {w:?} of {text:?} not in vocabulary"
        );
    }
}

#[test]
fn same_seed_same_scene_pixels_and_captions() {
    for seed in [0u64, 1, 42, u64::MAX] {
        let a = Scene::random(&mut SceneRng::new(seed));
        let b = Scene::random(&mut SceneRng::new(seed));
        assert_eq!(a, b);
        assert_eq!(a.caption(), b.caption());
        assert_eq!(a.fine_captions(), b.fine_captions());
        let (ia, ib) = (a.render(), b.render());
        assert_eq!(ia.dimensions(), (SCENE_SIZE, SCENE_SIZE));
        assert_eq!(png_bytes(&ia), png_bytes(&ib));
    }
    let a = Scene::random(&mut SceneRng::new(1));
    let b = Scene::random(&mut SceneRng::new(2));
    assert_ne!(a, b);
    assert_ne!(a.render(), b.render());
    let pa = pmmvp_pairs(MmvpPattern::Text, 3, 9);
    let pb = pmmvp_pairs(MmvpPattern::Text, 3, 9);
    let pc = pmmvp_pairs(MmvpPattern::Text, 3, 10);
    for ((x, y), z) in pa.iter().zip(&pb).zip(&pc) {
        assert_eq!((&x.a, &x.b, &x.statements), (&y.a, &y.b, &y.statements));
        assert_ne!(x.a, z.a);
    }
}

#[test]
fn random_scenes_use_vocabulary_and_valid_boxes() {
    let vocab: BTreeSet<&str> = vocabulary().into_iter().collect();
    let mut rng = SceneRng::new(2024);
    let mut counts = BTreeSet::new();
    let mut perspectives = BTreeSet::new();
    for _ in 0..200 {
        let s = Scene::random(&mut rng);
        assert!((1..=5).contains(&s.objects.len()));
        counts.insert(s.objects.len());
        let cap = s.caption();
        assert_in_vocabulary(&cap, &vocab);
        assert!(cap.split(' ').count() <= 60, "{cap}");
        assert!(cap.contains(s.setting.name()));
        let look = |o: &agff_lens::scenes::SceneObject| {
            (o.shape, o.colour, o.size, o.filled, o.orientation, o.label)
        };
        if s.objects.iter().any(|o| look(o) != look(&s.objects[0])) {
            assert!(
                ["left of", "right of", "above", "below"]
                    .iter()
                    .any(|r| cap.contains(r)),
                "no relation in {cap}"
            );
        }
        for f in s.fine_captions() {
            assert!(["attributes", "count", "spatial", "text"].contains(&f.perspective));
            perspectives.insert(f.perspective);
            assert_in_vocabulary(&f.text, &vocab);
        }
        let n = SCENE_SIZE as f32;
        for (i, o) in s.objects.iter().enumerate() {
            assert!(o.filled || o.shape.can_outline(o.size));
            let [x0, y0, x1, y1] = o.bbox;
            assert!(0.0 <= x0 && x0 < x1 && x1 <= n && 0.0 <= y0 && y0 < y1 && y1 <= n);
            if let Some(c) = o.label {
                assert!(c.is_ascii_uppercase() || c.is_ascii_digit());
                assert!(o.shape.can_carry_label());
            }
            if !o.shape.oriented() {
                assert_eq!(o.orientation, agff_lens::scenes::Orientation::Up);
            }
            for p in &s.objects[i + 1..] {
                let overlap = x0 < p.bbox[2] && p.bbox[0] < x1 && y0 < p.bbox[3] && p.bbox[1] < y1;
                assert!(!overlap, "{:?} overlaps {:?}", o.bbox, p.bbox);
            }
        }
    }
    assert_eq!(counts.len(), 5);
    assert_eq!(perspectives.len(), 4);
}

#[test]
fn vocabulary_is_small_sorted_and_has_characters() {
    let v = vocabulary();
    assert!(v.windows(2).all(|w| w[0] < w[1]));
    assert!((80..=160).contains(&v.len()), "{}", v.len());
    for c in ('a'..='z').chain('0'..='9') {
        assert!(v.contains(&c.to_string().as_str()), "{c}");
    }
}

#[test]
fn pairs_differ_only_in_their_pattern() {
    let vocab: BTreeSet<&str> = vocabulary().into_iter().collect();
    for pattern in MmvpPattern::ALL {
        assert_eq!(MmvpPattern::from_name(pattern.name()), Some(pattern));
        assert_eq!(MmvpPattern::from_name(pattern.mmvp_type()), Some(pattern));
        let pairs = pmmvp_pairs(pattern, 20, 7);
        assert_eq!(pairs.len(), 20);
        for p in &pairs {
            assert_eq!(p.pattern, pattern);
            assert_eq!(
                differing_patterns(&p.a, &p.b),
                vec![pattern],
                "{pattern:?}: {:?}",
                p.statements
            );
            assert_eq!(p.a.setting, p.b.setting);
            assert_ne!(p.statements[0], p.statements[1]);
            for s in &p.statements {
                assert_in_vocabulary(s, &vocab);
            }
            assert_ne!(p.a.render(), p.b.render(), "{pattern:?}");
        }
    }
    assert_eq!(MmvpPattern::from_name("colour"), Some(MmvpPattern::Colour));
    assert_eq!(MmvpPattern::from_name("nope"), None);
}

#[test]
fn differing_patterns_of_identical_scenes_is_empty() {
    let s = Scene::random(&mut SceneRng::new(3));
    assert!(differing_patterns(&s, &s).is_empty());
    let mut rng = SceneRng::new(5);
    let p = ScenePair::generate(MmvpPattern::Colour, &mut rng);
    assert_eq!(differing_patterns(&p.b, &p.a), vec![MmvpPattern::Colour]);
}

#[test]
fn mmvp_scoring_by_hand() {
    // Both statements prefer their own image.
    assert!(mmvp_pair_correct([[0.9, 0.1], [0.2, 0.8]]));
    // Statement 1 prefers image 0: wrong.
    assert!(!mmvp_pair_correct([[0.9, 0.1], [0.8, 0.2]]));
    // Both prefer image 0 (the typical "blind" failure).
    assert!(!mmvp_pair_correct([[0.5, 0.4], [0.5, 0.4]]));
    // Ties are wrong.
    assert!(!mmvp_pair_correct([[0.5, 0.5], [0.1, 0.9]]));
    assert!(!mmvp_pair_correct([[0.6, 0.1], [0.3, 0.3]]));
    assert!(!mmvp_pair_correct([[0.0, 0.0], [0.0, 0.0]]));
    // Negative similarities work the same.
    assert!(mmvp_pair_correct([[-0.1, -0.3], [-0.4, -0.2]]));

    let mut t = MmvpTally::default();
    assert_eq!(t.average(), None);
    assert_eq!(t.percent(MmvpPattern::Text), None);
    // Orientation: 3 of 4 → 75 %; Text: 1 of 2 → 50 %; Viewpoint: 0 of 1 → 0 %.
    for c in [true, true, false, true] {
        t.add(MmvpPattern::Orientation, c);
    }
    t.add(MmvpPattern::Text, true);
    t.add(MmvpPattern::Text, false);
    t.add(MmvpPattern::Viewpoint, false);
    assert_eq!(t.percent(MmvpPattern::Orientation), Some(75.0));
    assert_eq!(t.percent(MmvpPattern::Text), Some(50.0));
    assert_eq!(t.percent(MmvpPattern::Viewpoint), Some(0.0));
    assert_eq!(t.percent(MmvpPattern::Colour), None);
    // Mean over the three patterns with pairs, not over pairs (4/7 would be 57.1 %).
    let avg = t.average().unwrap_or(f64::NAN);
    assert!((avg - 125.0 / 3.0).abs() < 1e-9, "{avg}");
    // Standard error: sqrt(0.75·0.25/4 + 0.5·0.5/2 + 0/1) / 3, in points.
    let se = t.average_standard_error().unwrap_or(f64::NAN);
    let want = 100.0 * (0.75f64 * 0.25 / 4.0 + 0.25 / 2.0).sqrt() / 3.0;
    assert!((se - want).abs() < 1e-9, "{se} against {want}");
    // More pairs at the same accuracy shrink it as 1/sqrt(n).
    let mut big = MmvpTally::default();
    for _ in 0..100 {
        for c in [true, true, false, true] {
            big.add(MmvpPattern::Orientation, c);
        }
    }
    assert_eq!(MmvpTally::default().average_standard_error(), None);
    let mut small = MmvpTally::default();
    for c in [true, true, false, true] {
        small.add(MmvpPattern::Orientation, c);
    }
    let (s, b) = (
        small.average_standard_error().unwrap_or(f64::NAN),
        big.average_standard_error().unwrap_or(f64::NAN),
    );
    assert!((s / b - 10.0).abs() < 1e-9, "{s} / {b}");
}

#[test]
fn write_scenes_writes_pngs_and_jsonl() {
    let dir = temp_dir("write");
    assert_eq!(write_scenes(&dir, 3, 11).expect("write"), 3);
    let jsonl = std::fs::read_to_string(dir.join("scenes.jsonl")).expect("jsonl");
    let lines: Vec<&str> = jsonl.lines().collect();
    assert_eq!(lines.len(), 3);
    for (i, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        let file = format!("scene_{i:05}.png");
        assert_eq!(v["file"], file.as_str());
        let scene: Scene = serde_json::from_value(v["scene"].clone()).expect("scene");
        assert_eq!(v["caption"], scene.caption().as_str());
        let fine = v["fine_captions"].as_array().expect("array");
        assert!(
            !fine.is_empty() && fine[0]["perspective"].is_string() && fine[0]["text"].is_string()
        );
        let img = image::open(dir.join(&file)).expect("png").to_rgb8();
        assert_eq!(img, scene.render(), "png and metadata agree");
    }
    // Same seed → same bytes.
    let again = temp_dir("write_again");
    write_scenes(&again, 3, 11).expect("write");
    for f in ["scene_00000.png", "scene_00002.png", "scenes.jsonl"] {
        assert_eq!(
            std::fs::read(dir.join(f)).expect("a"),
            std::fs::read(again.join(f)).expect("b")
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&again);
}

#[test]
fn export_and_read_mmvp_round_trip() {
    let dir = temp_dir("mmvp");
    // Given out of category order: export groups them in MMVP-VLM order.
    let mut pairs = pmmvp_pairs(MmvpPattern::Viewpoint, 1, 1);
    pairs.extend(pmmvp_pairs(MmvpPattern::Orientation, 2, 1));
    pairs.extend(pmmvp_pairs(MmvpPattern::Text, 1, 1));
    export_mmvp(&dir, &pairs).expect("export");
    let csv = std::fs::read_to_string(dir.join("Questions.csv")).expect("csv");
    assert!(csv.starts_with("Question ID,Type,Statement\n"));
    assert!(
        dir.join("MLLM_VLM Images/Orientation and Direction/1.jpg")
            .is_file()
    );
    assert!(
        dir.join("MLLM_VLM Images/Viewpoint and Perspective/8.jpg")
            .is_file()
    );
    let items = read_mmvp_dir(&dir).expect("read");
    let expect: Vec<&ScenePair> = [&pairs[1], &pairs[2], &pairs[3], &pairs[0]].into();
    assert_eq!(items.len(), 4);
    for (k, (item, pair)) in items.iter().zip(expect).enumerate() {
        assert_eq!(item.pattern, Some(pair.pattern));
        assert_eq!(item.type_name, pair.pattern.mmvp_type());
        assert_eq!(item.statements, pair.statements);
        assert!(item.images[0].ends_with(format!("{}.jpg", 2 * k + 1)));
        assert!(item.images[1].ends_with(format!("{}.jpg", 2 * k + 2)));
        let img = image::open(&item.images[0]).expect("jpeg").to_rgb8();
        assert_eq!(img.dimensions(), (SCENE_SIZE, SCENE_SIZE));
        // JPEG q95 stays close to the render.
        let src = pair.a.render();
        let err: f64 = img
            .as_raw()
            .iter()
            .zip(src.as_raw())
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
            .sum::<f64>()
            / src.as_raw().len() as f64;
        assert!(err < 6.0, "mean abs error {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn read_mmvp_handles_quoted_commas_and_reports_missing_images() {
    let dir = temp_dir("quoted");
    let ty = "Color and Appearance";
    let folder = dir.join("MLLM_VLM Images").join(ty);
    std::fs::create_dir_all(&folder).expect("dir");
    let img = image::RgbImage::new(4, 4);
    for id in [1, 2] {
        img.save(folder.join(format!("{id}.jpg"))).expect("save");
    }
    std::fs::write(
        dir.join("Questions.csv"),
        "Question ID,Type,Statement\r\n1,Color and Appearance,\"The flag is red, white and blue\"\r\n2,Color and Appearance,\"The flag says \"\"stop\"\"\"\r\n",
    )
    .expect("csv");
    let items = read_mmvp_dir(&dir).expect("read");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].pattern, Some(MmvpPattern::Colour));
    assert_eq!(items[0].statements[0], "The flag is red, white and blue");
    assert_eq!(items[0].statements[1], "The flag says \"stop\"");

    // A missing image names its path.
    std::fs::remove_file(folder.join("2.jpg")).expect("rm");
    let err = read_mmvp_dir(&dir).expect_err("missing image");
    assert!(matches!(err, ScenesError::MissingImage(_)));
    let msg = err.to_string();
    assert!(msg.contains("2.jpg") && msg.contains(ty), "{msg}");

    // An odd number of rows is an error naming Questions.csv.
    std::fs::write(
        dir.join("Questions.csv"),
        "Question ID,Type,Statement\n1,Color and Appearance,x\n",
    )
    .expect("csv");
    let msg = read_mmvp_dir(&dir).expect_err("odd").to_string();
    assert!(msg.contains("Questions.csv"), "{msg}");

    // No Questions.csv at all.
    let empty = temp_dir("empty");
    let msg = read_mmvp_dir(&empty).expect_err("no csv").to_string();
    assert!(msg.contains("Questions.csv"), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn labels_are_readable_from_pixels() {
    // The label's glyph is drawn as solid blocks of the contrast colour at the object centre.
    let mut rng = SceneRng::new(77);
    let pair = ScenePair::generate(MmvpPattern::Text, &mut rng);
    for scene in [&pair.a, &pair.b] {
        let o = scene
            .objects
            .iter()
            .find(|o| o.label.is_some())
            .expect("a labelled object");
        let img = scene.render();
        let c = agff_lens::scenes::render::contrast(o.colour.rgb());
        let (cx, cy) = ((o.bbox[0] + o.bbox[2]) / 2.0, (o.bbox[1] + o.bbox[3]) / 2.0);
        let ink = (0..SCENE_SIZE)
            .flat_map(|y| (0..SCENE_SIZE).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                (x as f32 - cx).abs() < 9.0
                    && (y as f32 - cy).abs() < 12.0
                    && img.get_pixel(x, y).0 == c
            })
            .count();
        assert!(ink >= 20, "{ink} ink pixels for {:?}", o.label);
    }
}

/// The scene stream the committed demo weights learned from, pinned: the training batches
/// of `train --recipe demo` (seed 0; random scenes with global captions or short object
/// queries, and minimal pairs) and the tower's labelled scenes hash to these values. A
/// change to the RNG, the scene grammar, the renderer or the captions changes them; then
/// the committed weights no longer see the scenes they were trained on (retrain, then
/// update the digests).
#[test]
fn the_training_scene_stream_is_pinned() {
    use agff_lens::train::DataSource;
    let digest = |source: &DataSource, steps: &[u64]| {
        let mut h = blake3::Hasher::new();
        for &step in steps {
            for e in source.batch(step, 8).unwrap() {
                h.update(e.image.as_raw());
                h.update(e.text.as_bytes());
            }
        }
        h.finalize().to_hex().to_string()
    };
    let captions_only = DataSource::Scenes {
        seed: 0,
        ramp_start: 10_000,
        ramp_steps: 0,
        query_share: agff_lens::train::DEFAULT_QUERY_SHARE,
    };
    let with_pairs = DataSource::scenes(0);
    let mut rng = SceneRng::new(0x5ee);
    let mut h = blake3::Hasher::new();
    for _ in 0..16 {
        let s = Scene::random_labelled(&mut rng);
        h.update(s.render().as_raw());
        h.update(s.caption().as_bytes());
    }
    let labelled = h.finalize().to_hex().to_string();
    let got = [
        digest(&captions_only, &[0, 1, 999]),
        digest(&with_pairs, &[0, 2500]),
        labelled,
    ];
    assert_eq!(got, PINNED, "the scene stream changed: {got:#?}");
}

const PINNED: [&str; 3] = [
    "509e4f6e8cbf18b187ad829bd77d85a7aa26704838abd347f7455d69dea540c8",
    "2e3b104652e9757701b52261b0ef34683a9997c71d0720b779e422441688ba25",
    "f37bf94573e291ccf3a48ea12b6e5cb79f25750d9f5c5e89b907400bfc720724",
];
