//! Training data: procedural scenes (with minimal pairs as in-batch hard negatives), or a
//! folder of captioned images (sidecar `.txt` files or a JSONL of `image`, `text`).

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::TrainError;
use crate::model::image_io;
use crate::model::image_io::IMAGE_EXTENSIONS;
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
}

/// Where batches come from.
#[derive(Debug, Clone)]
pub enum DataSource {
    /// Procedural scenes; the stream is a pure function of (seed, step), so a resumed run
    /// sees the batches it would have seen. Batches hold random scenes with their global
    /// captions only until step `ramp_start`; then minimal pairs (the hardest negatives)
    /// ramp up from none to half of each batch over `ramp_steps` steps (both 0: half from
    /// the start), so the model first grounds words in easy contrasts.
    Scenes {
        /// Seed of the scene stream.
        seed: u64,
        /// First step whose batches hold minimal pairs.
        ramp_start: u64,
        /// Steps over which the share of minimal pairs grows from none to half a batch.
        ramp_steps: u64,
    },
    /// Captioned images read from disk.
    Pairs(Vec<CaptionPair>),
}

/// Reads a captioned data set: a JSONL file of `{"image": path, "text": caption}` (paths
/// relative to the file; `file` and `caption` are accepted too, so the output of
/// `agff-lens scenes` is a data set), a folder holding such a file, or a folder of images
/// each with a sidecar `.txt` caption of the same stem.
pub fn load_caption_dataset(path: &Path) -> Result<Vec<CaptionPair>, TrainError> {
    if path.is_file() {
        return read_jsonl(path);
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
        return read_jsonl(jsonl);
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
    if pairs.len() < 2 {
        return Err(TrainError::Data(format!(
            "{}: found {} captioned images; need at least 2 (images with a sidecar .txt of the same name, or a .jsonl of {{\"image\",\"text\"}})",
            path.display(),
            pairs.len()
        )));
    }
    Ok(pairs)
}

fn read_jsonl(path: &Path) -> Result<Vec<CaptionPair>, TrainError> {
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
    if pairs.len() < 2 {
        return Err(TrainError::Data(format!(
            "{}: needs at least 2 image-text lines, found {}",
            path.display(),
            pairs.len()
        )));
    }
    Ok(pairs)
}

impl DataSource {
    /// The examples of batch `step` (a pure function of the source and the step).
    pub fn batch(&self, step: u64, n: usize) -> Result<Vec<Example>, TrainError> {
        match self {
            DataSource::Scenes {
                seed,
                ramp_start,
                ramp_steps,
            } => {
                let share = if step < *ramp_start {
                    0.0
                } else if *ramp_steps == 0 {
                    0.5
                } else {
                    0.5 * ((step - ramp_start) as f64 / *ramp_steps as f64).min(1.0)
                };
                Ok(scene_batch(*seed, step, n, share))
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

/// A batch of scenes: a share of minimal pairs (two scenes that differ in one MMVP
/// pattern, each with the statement true of it, so each is the other's hard negative); the
/// rest are random scenes with their global caption.
fn scene_batch(seed: u64, step: u64, n: usize, pair_share: f64) -> Vec<Example> {
    let mut rng = SceneRng::new(seed_for(seed, step));
    let mut out = Vec::with_capacity(n);
    let pairs = ((n as f64 * pair_share) / 2.0).round() as usize;
    for _ in 0..pairs {
        let pattern = MmvpPattern::ALL[rng.below(MmvpPattern::ALL.len())];
        let pair = ScenePair::generate(pattern, &mut rng);
        let [sa, sb] = pair.statements.clone();
        out.push(Example {
            image: pair.a.render(),
            text: sa,
        });
        out.push(Example {
            image: pair.b.render(),
            text: sb,
        });
    }
    // The rest: random scenes with their global caption, which names every object and
    // so (nearly always) fits no other scene of the batch. Single-attribute captions
    // ("one object", "a small arrow") fit many scenes and would be false negatives here;
    // fine-grained supervision comes from the minimal pairs' statements instead.
    while out.len() < n {
        let scene = Scene::random(&mut rng);
        out.push(Example {
            text: scene.caption(),
            image: scene.render(),
        });
    }
    out
}
