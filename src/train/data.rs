//! Training data: procedural scenes (with minimal pairs as in-batch hard negatives), or a
//! folder of captioned images (sidecar `.txt` files or a JSONL of `image`, `text`).

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::TrainError;
use crate::model::image_io;
use crate::model::image_io::IMAGE_EXTENSIONS;
use crate::scenes::caption::ObjectQuery;
use crate::scenes::{MmvpPattern, Scene, ScenePair, SceneRng};

/// One captioned image on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionPair {
    /// The image file (a JSONL's relative paths resolved against its folder).
    pub image: PathBuf,
    /// Its caption.
    pub text: String,
}

/// An image with its caption, ready for a batch.
#[derive(Debug, Clone)]
pub struct Example {
    /// The decoded (or rendered) image.
    pub image: RgbImage,
    /// Its caption: the query of the pair.
    pub text: String,
    /// The procedural scene it was rendered from (`None` for images read from disk): the
    /// targets of the recipe's scene heads.
    pub scene: Option<Scene>,
}

/// Where batches come from.
#[derive(Debug, Clone)]
pub enum DataSource {
    /// Procedural scenes; the stream is a pure function of (seed, step), so a resumed run
    /// sees the batches it would have seen. Batches hold random scenes with their global
    /// captions or short object queries only until step `ramp_start`; then minimal pairs
    /// (the hardest negatives) ramp up from none to half of each batch over `ramp_steps`
    /// steps (both 0: half from the start), so the model first grounds words in easy
    /// contrasts.
    Scenes {
        /// Seed of the scene stream.
        seed: u64,
        /// First step whose batches hold minimal pairs.
        ramp_start: u64,
        /// Steps over which the share of minimal pairs grows from none to half a batch.
        ramp_steps: u64,
        /// Share (0–1) of the random scenes that get a short object query instead of
        /// their global caption ([`DEFAULT_QUERY_SHARE`] in the recipe; 0: captions only).
        query_share: f32,
    },
    /// Captioned images read from disk.
    Pairs(Vec<CaptionPair>),
}

/// Reads a captioned data set: a JSONL file of `{"image": path, "text": caption}` (paths
/// relative to the file; `file` and `caption` are accepted too, so the output of
/// `agff-lens scenes` is a data set), a folder holding such a file, or a folder of images
/// each with a sidecar `.txt` caption of the same stem.
///
/// Every image is decoded once before this returns, so a set with an unreadable image is
/// refused up front ([`TrainError::Data`], naming the files). That takes time on a folder
/// of large photos: [`load_caption_dataset_with`] reports progress and can be cancelled.
pub fn load_caption_dataset(path: &Path) -> Result<Vec<CaptionPair>, TrainError> {
    load_caption_dataset_with(path, &|| false, &mut |_, _| {})
}

/// [`load_caption_dataset`] with progress and cancellation for its image check:
/// `progress(done, total)` counts images decoded (called on this thread, between chunks
/// of a few images per core), and `cancel` is polled between those chunks; when it
/// returns true the load stops with [`TrainError::Cancelled`].
pub fn load_caption_dataset_with(
    path: &Path,
    cancel: &dyn Fn() -> bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<CaptionPair>, TrainError> {
    if path.is_file() {
        return read_jsonl(path, cancel, progress);
    }
    if !path.is_dir() {
        return Err(TrainError::Data(format!(
            "{}: no such file or folder",
            path.display()
        )));
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| TrainError::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    if let Some(jsonl) = entries
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
    {
        return read_jsonl(jsonl, cancel, progress);
    }
    let mut pairs = Vec::new();
    for p in &entries {
        let is_image = p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if !is_image {
            continue;
        }
        let sidecar = p.with_extension("txt");
        if let Ok(text) = std::fs::read_to_string(&sidecar) {
            let text = text.trim().to_string();
            if !text.is_empty() {
                pairs.push(CaptionPair {
                    image: p.clone(),
                    text,
                });
            }
        }
    }
    check_readable(path, &pairs, cancel, progress)?;
    if pairs.len() < 2 {
        return Err(TrainError::Data(format!(
            "{}: found {} captioned images; need at least 2 (images with a sidecar .txt of the same name, or a .jsonl of {{\"image\",\"text\"}})",
            path.display(),
            pairs.len()
        )));
    }
    Ok(pairs)
}

fn read_jsonl(
    path: &Path,
    cancel: &dyn Fn() -> bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<CaptionPair>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut pairs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            TrainError::Data(format!("{} line {}: not JSON: {e}", path.display(), n + 1))
        })?;
        let image = v
            .get("image")
            .or_else(|| v.get("file"))
            .and_then(|x| x.as_str());
        let caption = v
            .get("text")
            .or_else(|| v.get("caption"))
            .and_then(|x| x.as_str());
        let (Some(image), Some(caption)) = (image, caption) else {
            return Err(TrainError::Data(format!(
                "{} line {}: needs string fields \"image\" and \"text\"",
                path.display(),
                n + 1
            )));
        };
        pairs.push(CaptionPair {
            image: base.join(image),
            text: caption.to_string(),
        });
    }
    check_readable(path, &pairs, cancel, progress)?;
    if pairs.len() < 2 {
        return Err(TrainError::Data(format!(
            "{}: needs at least 2 image-text lines, found {}",
            path.display(),
            pairs.len()
        )));
    }
    Ok(pairs)
}

/// Decodes every image of a data set once (on rayon's pool) and refuses the set if any
/// cannot be read, naming each such file and why (up to [`NAMED_UNREADABLE`] of them), so
/// that a fine-tune neither stops at the first batch that draws a corrupt file nor trains
/// on fewer images than the user pointed it at. `source` is the folder or JSONL file, for
/// the message. The images go in chunks of [`CHECK_CHUNK_PER_THREAD`] per thread, with
/// `progress` and `cancel` between chunks.
fn check_readable(
    source: &Path,
    pairs: &[CaptionPair],
    cancel: &dyn Fn() -> bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), TrainError> {
    use rayon::prelude::*;
    let chunk = CHECK_CHUNK_PER_THREAD * rayon::current_num_threads().max(1);
    let mut failed: Vec<String> = Vec::new();
    let mut done = 0;
    progress(done, pairs.len());
    for part in pairs.chunks(chunk) {
        if cancel() {
            return Err(TrainError::Cancelled);
        }
        failed.extend(
            part.par_iter()
                .filter_map(|p| image_io::open_image(&p.image).err().map(|e| e.to_string()))
                .collect::<Vec<_>>(),
        );
        done += part.len();
        progress(done, pairs.len());
    }
    if failed.is_empty() {
        return Ok(());
    }
    let mut named = failed[..failed.len().min(NAMED_UNREADABLE)].join("; ");
    if failed.len() > NAMED_UNREADABLE {
        named.push_str(&format!("; and {} more", failed.len() - NAMED_UNREADABLE));
    }
    Err(TrainError::Data(format!(
        "{}: {} of {} captioned images cannot be read (fix or remove them): {named}",
        source.display(),
        failed.len(),
        pairs.len()
    )))
}

/// Images per thread between two progress reports (and cancellation checks) of
/// [`check_readable`].
const CHECK_CHUNK_PER_THREAD: usize = 4;

/// How many unreadable images [`check_readable`]'s message names.
const NAMED_UNREADABLE: usize = 5;

impl DataSource {
    /// The scene stream a fine-tune on procedural scenes (`train --data scenes`, the app's
    /// fine-tune view) learns from: minimal pairs at half of each batch from the first
    /// step, and the recipe's share of short object queries.
    pub fn scenes(seed: u64) -> Self {
        DataSource::Scenes {
            seed,
            ramp_start: 0,
            ramp_steps: 0,
            query_share: DEFAULT_QUERY_SHARE,
        }
    }

    /// The examples of batch `step` (a pure function of the source and the step).
    pub fn batch(&self, step: u64, n: usize) -> Result<Vec<Example>, TrainError> {
        match self {
            DataSource::Scenes {
                seed,
                ramp_start,
                ramp_steps,
                query_share,
            } => {
                let share = if step < *ramp_start {
                    0.0
                } else if *ramp_steps == 0 {
                    0.5
                } else {
                    0.5 * ((step - ramp_start) as f64 / *ramp_steps as f64).min(1.0)
                };
                Ok(scene_batch(*seed, step, n, share, *query_share))
            }
            DataSource::Pairs(pairs) => {
                if pairs.is_empty() {
                    return Err(TrainError::Data("the data set is empty".into()));
                }
                let mut rng = SceneRng::new(seed_for(0x5eed, step));
                let mut order: Vec<usize> = (0..pairs.len()).collect();
                rng.shuffle(&mut order);
                order
                    .iter()
                    .cycle()
                    .take(n.min(pairs.len()))
                    .map(|&i| {
                        let p = &pairs[i];
                        let image = image_io::open_image(&p.image)
                            .map(|i| image_io::to_rgb8(&i))
                            .map_err(|e| TrainError::Data(e.to_string()))?;
                        Ok(Example {
                            image,
                            text: p.text.clone(),
                            scene: None,
                        })
                    })
                    .collect()
            }
        }
    }
}

fn seed_for(seed: u64, step: u64) -> u64 {
    crate::util::rng::derive_seed(seed, step.wrapping_add(1))
}

/// How often each pattern's minimal pairs are drawn, relative to the others. Colour and
/// position get twice the share: after the previous recipe, their pairs' two statements
/// still had cosines of 1.000 to three places (the language model did not read a colour or
/// relation word against an otherwise equal statement), while the other patterns had
/// begun to separate.
const PAIR_WEIGHTS: [(MmvpPattern, usize); 9] = [
    (MmvpPattern::Orientation, 1),
    (MmvpPattern::Presence, 1),
    (MmvpPattern::State, 1),
    (MmvpPattern::Quantity, 1),
    (MmvpPattern::Position, 2),
    (MmvpPattern::Colour, 2),
    (MmvpPattern::Structure, 1),
    (MmvpPattern::Text, 1),
    (MmvpPattern::Viewpoint, 1),
];

pub(crate) fn pick_pattern(rng: &mut SceneRng) -> MmvpPattern {
    let total: usize = PAIR_WEIGHTS.iter().map(|(_, w)| w).sum();
    let mut r = rng.below(total);
    for (pattern, w) in PAIR_WEIGHTS {
        if r < w {
            return pattern;
        }
        r -= w;
    }
    MmvpPattern::Viewpoint
}

/// Share of a batch's random scenes that get a short object query instead of their global
/// caption, in the demo recipe and a fine-tune on scenes.
pub const DEFAULT_QUERY_SHARE: f32 = 0.5;

/// A short query about one object of `scene` in one of four forms (size, fill, colour and
/// shape, as `eval`'s object queries; colour and shape; colour, shape and orientation; a
/// count with colour and shape), or `None` when every form drawn also fits another scene
/// of the batch (a false negative for InfoNCE).
fn unique_query(
    scene: &Scene,
    index: usize,
    batch: &[Scene],
    rng: &mut SceneRng,
) -> Option<ObjectQuery> {
    let o = scene.objects.get(rng.below(scene.objects.len().max(1)))?;
    let base = ObjectQuery::colour_shape(o);
    let mut forms = vec![ObjectQuery::full(o), base];
    if o.shape.oriented() {
        forms.push(ObjectQuery {
            orientation: Some(o.orientation),
            ..base
        });
    }
    let n = scene.objects.iter().filter(|p| base.fits_object(p)).count();
    forms.push(ObjectQuery {
        count: Some(n),
        ..base
    });
    // Try the drawn form first, then the others, most specific last.
    let first = rng.below(forms.len());
    forms.rotate_left(first);
    forms.into_iter().find(|q| {
        batch
            .iter()
            .enumerate()
            .all(|(j, other)| j == index || !q.fits(other))
    })
}

/// A batch of scenes: a share of minimal pairs (two scenes that differ in one MMVP
/// pattern, each with the statement true of it, so each is the other's hard negative); the
/// rest are random scenes, each with its global caption or (a `query_share` of them) a
/// short object query that fits no other scene of the batch ([`ObjectQuery`]).
fn scene_batch(seed: u64, step: u64, n: usize, pair_share: f64, query_share: f32) -> Vec<Example> {
    let mut rng = SceneRng::new(seed_for(seed, step));
    let pairs = ((n as f64 * pair_share) / 2.0).round() as usize;
    let mut scenes: Vec<Scene> = Vec::with_capacity(n);
    let mut texts: Vec<String> = Vec::with_capacity(n);
    for _ in 0..pairs.min(n / 2) {
        let pair = ScenePair::generate(pick_pattern(&mut rng), &mut rng);
        let [sa, sb] = pair.statements;
        scenes.extend([pair.a, pair.b]);
        texts.extend([sa, sb]);
    }
    let first_random = scenes.len();
    while scenes.len() < n {
        scenes.push(Scene::random(&mut rng));
    }
    // The global caption names every object and so (nearly always) fits no other scene of
    // the batch. A short query is kept only where it fits no other scene either; where
    // every form does, the scene keeps its caption.
    for i in first_random..n {
        let query = if rng.chance(query_share) {
            unique_query(&scenes[i], i, &scenes, &mut rng)
        } else {
            None
        };
        texts.push(match query {
            Some(q) => q.text(),
            None => scenes[i].caption(),
        });
    }
    scenes
        .into_iter()
        .zip(texts)
        .map(|(scene, text)| Example {
            image: scene.render(),
            text,
            scene: Some(scene),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_set_with_unreadable_images_is_refused_naming_each() {
        let dir = tempfile::tempdir().unwrap();
        let good = RgbImage::from_pixel(8, 8, image::Rgb([200, 10, 10]));
        for name in ["a", "b"] {
            good.save(dir.path().join(format!("{name}.png"))).unwrap();
            std::fs::write(dir.path().join(format!("{name}.txt")), "a red square").unwrap();
        }
        let pairs = load_caption_dataset(dir.path()).unwrap();
        assert_eq!(pairs.len(), 2);

        // A text file under an image's name and a PNG cut short, each with a caption.
        std::fs::write(dir.path().join("c.png"), "not an image").unwrap();
        let mut png = std::fs::read(dir.path().join("a.png")).unwrap();
        png.truncate(png.len() / 2);
        std::fs::write(dir.path().join("d.png"), png).unwrap();
        for name in ["c", "d"] {
            std::fs::write(dir.path().join(format!("{name}.txt")), "a blue circle").unwrap();
        }
        let err = load_caption_dataset(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("2 of 4 captioned images cannot be read"),
            "{err}"
        );
        assert!(err.contains("c.png") && err.contains("d.png"), "{err}");
        assert!(!err.contains("a.png") && !err.contains("b.png"), "{err}");

        // The same through a JSONL file, whose message names the file.
        let jsonl = dir.path().join("set.jsonl");
        std::fs::write(
            &jsonl,
            "{\"image\":\"a.png\",\"text\":\"x\"}\n{\"image\":\"missing.png\",\"text\":\"y\"}\n",
        )
        .unwrap();
        let err = load_caption_dataset(&jsonl).unwrap_err().to_string();
        assert!(
            err.contains("set.jsonl") && err.contains("1 of 2") && err.contains("missing.png"),
            "{err}"
        );
    }

    #[test]
    fn the_image_check_reports_progress_and_stops_when_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let img = RgbImage::from_pixel(8, 8, image::Rgb([10, 200, 10]));
        // More images than one chunk holds, so there is more than one report.
        let n = CHECK_CHUNK_PER_THREAD * rayon::current_num_threads().max(1) + 3;
        for i in 0..n {
            img.save(dir.path().join(format!("{i:03}.png"))).unwrap();
            std::fs::write(dir.path().join(format!("{i:03}.txt")), "a green square").unwrap();
        }
        let mut seen = Vec::new();
        let pairs = load_caption_dataset_with(dir.path(), &|| false, &mut |d, t| seen.push((d, t)))
            .unwrap();
        assert_eq!(pairs.len(), n);
        assert_eq!(seen.first(), Some(&(0, n)), "{seen:?}");
        assert_eq!(seen.last(), Some(&(n, n)), "{seen:?}");
        assert!(seen.len() >= 3, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");

        // A cancel after the first chunk stops the check before the rest is decoded.
        let mut reports = 0;
        let calls = std::cell::Cell::new(0);
        let err = load_caption_dataset_with(
            dir.path(),
            &|| {
                calls.set(calls.get() + 1);
                calls.get() > 1
            },
            &mut |_, _| reports += 1,
        )
        .unwrap_err();
        assert!(matches!(err, TrainError::Cancelled), "{err}");
        assert_eq!(reports, 2, "the start and one chunk");
    }

    #[test]
    fn a_short_query_fits_its_own_scene_and_no_other_of_the_batch() {
        let mut rng = SceneRng::new(7);
        let mut kept = 0;
        for _ in 0..20 {
            let batch: Vec<Scene> = (0..32).map(|_| Scene::random(&mut rng)).collect();
            for (i, scene) in batch.iter().enumerate() {
                if let Some(q) = unique_query(scene, i, &batch, &mut rng) {
                    kept += 1;
                    assert!(q.fits(scene), "{} does not fit its scene", q.text());
                    for (j, other) in batch.iter().enumerate() {
                        assert!(j == i || !q.fits(other), "{} fits scene {j} too", q.text());
                    }
                }
            }
        }
        // Most scenes find a query of their own in a batch of 32.
        assert!(kept > 20 * 32 / 2, "only {kept} of 640 scenes got a query");
    }

    #[test]
    fn batches_mix_captions_short_queries_and_weighted_pairs() {
        let source = DataSource::scenes(3);
        let (mut short, mut long) = (0, 0);
        for step in 0..10 {
            let batch = source.batch(step, 32).unwrap();
            assert_eq!(batch.len(), 32);
            // The second half is random scenes: captions start with the view.
            for e in &batch[16..] {
                if e.text.starts_with("a close up view") || e.text.starts_with("a far view") {
                    long += 1;
                } else {
                    short += 1;
                }
            }
        }
        assert!(
            short > 40 && long > 40,
            "{short} short queries, {long} captions"
        );
        let mut rng = SceneRng::new(1);
        let mut colour = 0;
        let mut structure = 0;
        for _ in 0..2000 {
            match pick_pattern(&mut rng) {
                MmvpPattern::Colour => colour += 1,
                MmvpPattern::Structure => structure += 1,
                _ => {}
            }
        }
        assert!(
            colour > structure * 3 / 2,
            "colour {colour}, structure {structure}"
        );
    }
}
