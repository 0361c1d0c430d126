//! The gallery engine on a folder a real user might have: bad files skipped with reasons,
//! an incremental cache that survives damage, and search by the fused score.

use std::io::Write;
use std::path::{Path, PathBuf};

use agff_lens::agff::{FusedScorer, Fusion, FusionInit, SimilarityConfig};
use agff_lens::index::{
    EmbeddingCache, FirstStageOn, SearchOptions, embed_gallery, embed_unit, first_stage_recall,
    scan_gallery, search,
};
use agff_lens::model::demo::DemoModel;
use agff_lens::model::{Backbone, EmbedInput, ModelIdentity};
use agff_lens::scenes::{Scene, SceneRng};
use candle_core::{DType, Device};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("agff-index-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn never() -> bool {
    false
}

fn scene_png(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let path = dir.join(name);
    Scene::random(&mut SceneRng::new(seed))
        .render()
        .save(&path)
        .unwrap();
    path
}

/// A PNG header that claims 50,000 × 50,000 pixels.
fn huge_header_png() -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(b"IHDR");
    ihdr.extend_from_slice(&50_000u32.to_be_bytes());
    ihdr.extend_from_slice(&50_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let crc = crc32(&ihdr);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc.to_be_bytes());
    png
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn bad_folder() -> (PathBuf, Vec<PathBuf>) {
    let dir = temp("bad");
    let mut good = Vec::new();
    good.push(scene_png(&dir, "a.png", 1));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    good.push(scene_png(&dir.join("sub"), "b.png", 2));
    // A JPEG cut in half.
    let mut jpeg = Vec::new();
    Scene::random(&mut SceneRng::new(3))
        .render()
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    std::fs::write(dir.join("truncated.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    std::fs::write(dir.join("empty.png"), b"").unwrap();
    std::fs::write(dir.join("notes.jpg"), b"this is a text file, not a photo\n").unwrap();
    std::fs::write(dir.join("huge.png"), huge_header_png()).unwrap();
    std::os::unix::fs::symlink(&dir, dir.join("sub").join("loop")).unwrap();
    // A file without read permission (root can still read it: then it is indexed).
    let locked = scene_png(&dir, "locked.png", 4);
    let mut perms = std::fs::metadata(&locked).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o000);
    std::fs::set_permissions(&locked, perms).unwrap();
    // A file name that is not UTF-8.
    let name = std::ffi::OsStr::from_bytes_compat(b"caf\xe9.png");
    good.push(scene_png(&dir, &name.to_string_lossy(), 5));
    let raw = dir.join(name);
    std::fs::rename(good.pop().unwrap(), &raw).unwrap();
    good.push(raw);
    (dir, good)
}

trait FromBytesCompat {
    fn from_bytes_compat(b: &[u8]) -> &std::ffi::OsStr;
}

impl FromBytesCompat for std::ffi::OsStr {
    fn from_bytes_compat(b: &[u8]) -> &std::ffi::OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(b)
    }
}

/// Why the scan skipped the file called `name` (panics when it did not).
fn skip_reason(gallery: &agff_lens::index::Gallery, name: &str) -> String {
    gallery
        .skipped
        .iter()
        .find(|s| s.path.file_name().unwrap() == name)
        .map(|s| s.reason.clone())
        .unwrap_or_else(|| panic!("{name} not skipped: {:?}", gallery.skipped))
}

#[test]
fn a_folder_of_bad_files_is_indexed_around_them_with_reasons() {
    let (dir, good) = bad_folder();
    let gallery = scan_gallery(&dir, &never, &mut |_| {}).unwrap();
    let reason = |name: &str| skip_reason(&gallery, name);
    assert!(reason("empty.png").contains("empty"));
    assert!(reason("notes.jpg").contains("not an image"));
    let huge = reason("huge.png");
    assert!(
        huge.contains("limit") || huge.contains("large") || huge.contains("dimension"),
        "{huge}"
    );
    let indexed: Vec<&PathBuf> = gallery.items.iter().map(|i| &i.path).collect();
    for g in &good {
        assert!(indexed.contains(&g), "{g:?} missing from {indexed:?}");
    }
    // The symlink loop is walked once: no duplicates.
    assert_eq!(
        indexed.len(),
        indexed
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
    );
    let locked = dir.join("locked.png");
    let readable = std::fs::File::open(&locked).is_ok();
    assert_eq!(indexed.contains(&&locked), readable);
    if !readable {
        assert!(reason("locked.png").contains("cannot read"));
    }

    assert!(reason("truncated.jpg").contains("truncated"));
    let model = DemoModel::embedded(&Device::Cpu).unwrap();
    let cache_dir = temp("bad-cache");
    let (emb, report) = embed_gallery(
        &model,
        &model.default_perspectives(),
        &gallery,
        &cache_dir,
        &never,
        &mut |_, _| {},
    )
    .unwrap();
    let all_skipped: Vec<_> = gallery.skipped.iter().chain(&report.failed).collect();
    assert!(
        all_skipped
            .iter()
            .any(|s| s.path.ends_with("truncated.jpg")),
        "{all_skipped:?}"
    );
    assert_eq!(emb.len(), gallery.items.len() - report.failed.len());
    assert!(emb.data.iter().all(|x| x.is_finite()));
    // And the cache written meanwhile is valid.
    let (_, problem) = EmbeddingCache::open(
        &cache_dir,
        model.identity(),
        &agff_lens::index::perspectives_fingerprint(&model.default_perspectives(), &[]),
        5,
        model.hidden_size(),
    );
    assert!(problem.is_none());
    let _ = (
        std::fs::remove_dir_all(&dir),
        std::fs::remove_dir_all(&cache_dir),
    );
}

#[test]
fn the_cache_is_incremental_and_a_damaged_file_is_rebuilt() {
    let dir = temp("cache-gallery");
    let cache_dir = temp("cache");
    for i in 0..4 {
        scene_png(&dir, &format!("s{i}.png"), 10 + i);
    }
    let model = DemoModel::embedded(&Device::Cpu).unwrap();
    let p = model.default_perspectives();
    let run = || {
        let g = scan_gallery(&dir, &never, &mut |_| {}).unwrap();
        embed_gallery(&model, &p, &g, &cache_dir, &never, &mut |_, _| {}).unwrap()
    };
    let (first, r1) = run();
    assert_eq!((r1.embedded, r1.from_cache), (4, 0));
    let (second, r2) = run();
    assert_eq!((r2.embedded, r2.from_cache), (0, 4));
    assert_eq!(first.data, second.data);

    // A changed image is embedded again; the others come from the cache.
    scene_png(&dir, "s0.png", 99);
    let (_, r3) = run();
    assert_eq!((r3.embedded, r3.from_cache), (1, 3));

    // Cut the cache file short: reported, not used, rebuilt.
    let file = std::fs::read_dir(&cache_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "bin"))
        .unwrap();
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let (_, r4) = run();
    let problem = r4.cache_problem.expect("damage reported");
    assert!(
        problem.reason.contains("checksum") || problem.reason.contains("cut short"),
        "{}",
        problem.reason
    );
    assert_eq!(r4.embedded, 4);
    let (_, r5) = run();
    assert!(r5.cache_problem.is_none());
    assert_eq!(r5.from_cache, 4);

    // Garbage of the right length is caught by the checksum too.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&file, &bytes).unwrap();
    assert!(run().1.cache_problem.is_some());
    let _ = (
        std::fs::remove_dir_all(&dir),
        std::fs::remove_dir_all(&cache_dir),
    );
}

#[test]
fn two_writers_never_corrupt_the_cache() {
    let cache_dir = temp("race");
    let id = ModelIdentity {
        name: "m".into(),
        weights_digest: "d".into(),
        preprocess: String::new(),
    };
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let (cache_dir, id) = (&cache_dir, &id);
            s.spawn(move || {
                for round in 0..5u32 {
                    let (mut c, problem) = EmbeddingCache::open(cache_dir, id, "p", 2, 3);
                    assert!(problem.is_none(), "{problem:?}");
                    c.insert(format!("{t}-{round}"), vec![t as f32; 6]).unwrap();
                    c.save().unwrap();
                    assert!(c.unwritable().is_none(), "{:?}", c.unwritable());
                }
            });
        }
    });
    let (c, problem) = EmbeddingCache::open(&cache_dir, &id, "p", 2, 3);
    assert!(problem.is_none());
    assert_eq!(c.len(), 20, "every writer's entries survive");
    assert_eq!(c.get("3-4"), Some(&[3.0f32; 6][..]));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(c.path())
        .unwrap();
    f.write_all(b"x").unwrap();
    let (_, problem) = EmbeddingCache::open(&cache_dir, &id, "p", 2, 3);
    assert!(problem.is_some());
    let _ = std::fs::remove_dir_all(&cache_dir);
}

#[test]
fn search_ranks_by_the_fused_score_and_the_first_stage_keeps_the_top() {
    let dir = temp("search");
    let cache_dir = temp("search-cache");
    for i in 0..12 {
        scene_png(&dir, &format!("s{i:02}.png"), 200 + i);
    }
    let model = DemoModel::embedded(&Device::Cpu).unwrap();
    let p = model.default_perspectives();
    let g = scan_gallery(&dir, &never, &mut |_| {}).unwrap();
    let (emb, _) = embed_gallery(&model, &p, &g, &cache_dir, &never, &mut |_, _| {}).unwrap();
    let f = model.trained_fusion().unwrap();
    let fusion = Fusion::new(
        FusionInit {
            theta: f.theta,
            beta: f.beta,
        },
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let scorer = FusedScorer::new(SimilarityConfig::default(), &fusion).unwrap();
    let q = embed_unit(&model, &EmbedInput::text("a red circle"), &p).unwrap();
    let all = search(
        &q,
        &emb,
        &scorer,
        &SearchOptions {
            top_k: 12,
            first_stage: None,
            first_stage_on: FirstStageOn::Global,
        },
    )
    .unwrap();
    assert_eq!(all.len(), 12);
    assert!(all.windows(2).all(|w| w[0].score >= w[1].score));
    for h in &all {
        let (fused, weights) = scorer.fuse_similarities(h.similarities);
        assert!((fused - h.score).abs() < 1e-5);
        assert!((weights.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert_eq!(h.perspective_sims.len(), 25);
        // GG is the (global, global) similarity.
        assert!((h.perspective_sims[0] - h.similarities[0]).abs() < 1e-5);
    }
    // A first stage as large as the gallery changes nothing; a smaller one keeps a subset.
    let same = search(
        &q,
        &emb,
        &scorer,
        &SearchOptions {
            top_k: 12,
            first_stage: Some(12),
            first_stage_on: FirstStageOn::Global,
        },
    )
    .unwrap();
    assert_eq!(same, all);
    let staged = search(
        &q,
        &emb,
        &scorer,
        &SearchOptions {
            top_k: 3,
            first_stage: Some(6),
            first_stage_on: FirstStageOn::Global,
        },
    )
    .unwrap();
    assert_eq!(staged.len(), 3);
    let recall = first_stage_recall(&q, &emb, &scorer, 12, FirstStageOn::Global, 3).unwrap();
    assert_eq!(recall, 1.0);
    let _ = (
        std::fs::remove_dir_all(&dir),
        std::fs::remove_dir_all(&cache_dir),
    );
}

#[test]
fn the_fused_only_explanation_gives_the_same_fused_map() {
    use agff_lens::explain::{Explainer, Method};
    let model = DemoModel::embedded(&Device::Cpu).unwrap();
    let ex = Explainer::new(
        &model,
        model.default_perspectives(),
        Fusion::for_backbone(&model).unwrap(),
    );
    let image = Scene::random(&mut SceneRng::new(8)).render();
    let q = EmbedInput::text("a blue star");
    for method in Method::ALL {
        let full = ex.explain(&q, &image, method).unwrap();
        let fused = ex.explain_fused(&q, &image, method).unwrap();
        assert_eq!(full.fused_map, fused.fused_map, "{method:?}");
        assert_eq!(full.scores, fused.scores);
        assert_eq!(full.perspective_maps.len(), 5);
    }
}

#[test]
fn phone_and_camera_formats_are_listed_as_skipped_with_their_format() {
    let dir = temp("formats");
    // A HEIC photo, an AVIF, a JPEG XL and a camera RAW file: named by extension.
    let heif_box = |brand: &[u8]| {
        let mut b = vec![0, 0, 0, 24];
        b.extend_from_slice(b"ftyp");
        b.extend_from_slice(brand);
        b.extend_from_slice(&[0; 12]);
        b
    };
    std::fs::write(dir.join("IMG_0001.HEIC"), heif_box(b"heic")).unwrap();
    std::fs::write(dir.join("pic.avif"), heif_box(b"avif")).unwrap();
    std::fs::write(dir.join("pic.jxl"), [0xFF, 0x0A, 0, 0]).unwrap();
    std::fs::write(dir.join("raw.CR2"), b"II*\0 raw").unwrap();
    // A HEIC photo saved under a .jpg name: recognised from its bytes.
    std::fs::write(dir.join("renamed.jpg"), heif_box(b"heic")).unwrap();
    // A format this build decodes beyond the usual ones: indexed.
    let tga = dir.join("scene.tga");
    Scene::random(&mut SceneRng::new(5))
        .render()
        .save(&tga)
        .unwrap();
    let gallery = scan_gallery(&dir, &never, &mut |_| {}).unwrap();
    let reason = |name: &str| skip_reason(&gallery, name);
    for (name, format) in [
        ("IMG_0001.HEIC", "HEIC"),
        ("pic.avif", "AVIF"),
        ("pic.jxl", "JPEG XL"),
        ("raw.CR2", "camera RAW (Canon CR2)"),
        ("renamed.jpg", "HEIC"),
    ] {
        let r = reason(name);
        assert!(
            r.contains(format) && r.contains("cannot decode"),
            "{name}: {r}"
        );
    }
    assert_eq!(gallery.skipped.len(), 5, "{:?}", gallery.skipped);
    let indexed: Vec<&PathBuf> = gallery.items.iter().map(|i| &i.path).collect();
    assert_eq!(indexed, [&tga]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cache_that_cannot_be_written_never_fails_the_job() {
    let dir = temp("unwritable");
    for i in 0..3 {
        scene_png(&dir, &format!("s{i}.png"), 300 + i);
    }
    // A file stands where the cache folder should be.
    let blocker = temp("unwritable-cache").join("cache");
    std::fs::write(&blocker, b"not a folder").unwrap();
    let model = DemoModel::embedded(&Device::Cpu).unwrap();
    let gallery = scan_gallery(&dir, &never, &mut |_| {}).unwrap();
    let (emb, report) = embed_gallery(
        &model,
        &model.default_perspectives(),
        &gallery,
        &blocker.join("sub"),
        &never,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(emb.len(), 3, "the gallery is embedded from memory");
    let problem = report
        .cache_unwritable
        .expect("the cache problem is reported");
    let text = problem.to_string();
    assert!(
        text.contains("is a file where the cache folder should be")
            && text.contains(blocker.to_str().unwrap())
            && text.contains("going on without it"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(&blocker).unwrap(),
        b"not a folder",
        "nothing touched"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
