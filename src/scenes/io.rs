//! Files: scene data sets (`scene_00000.png` … + `scenes.jsonl`) and the MMVP-VLM layout.
//!
//! MMVP-VLM (HF dataset `MMVP/MMVP_VLM`, read by `scripts/evaluate_vlm.py` of
//! github.com/tsb0601/MMVP) is a folder with `Questions.csv` (header
//! `Question ID,Type,Statement`; rows come in consecutive pairs, ids from 1, the odd id's
//! statement belongs to the first image) and `MLLM_VLM Images/<Type>/<Question ID>.jpg`.
//! That script assigns categories by row order, 15 pairs each, in [`MmvpPattern::ALL`] order;
//! [`export_mmvp`] therefore writes pairs grouped by pattern in that order.

use super::{FineCaption, MmvpPattern, Scene, ScenePair, SceneRng, ScenesError};
use crate::util::rng::derive_seed;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Name of the images folder of MMVP-VLM.
pub const MMVP_IMAGES_DIR: &str = "MLLM_VLM Images";
/// Name of the questions file of MMVP-VLM.
pub const MMVP_QUESTIONS: &str = "Questions.csv";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ScenesError + '_ {
    move |source| ScenesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Serialize)]
struct Record<'a> {
    file: &'a str,
    caption: String,
    fine_captions: Vec<FineCaption>,
    scene: &'a Scene,
}

/// Scene `i` of the data set with seed `seed` (what [`write_scenes`] writes).
pub fn dataset_scene(seed: u64, i: usize) -> Scene {
    Scene::random(&mut SceneRng::new(derive_seed(seed, i as u64)))
}

/// Writes `count` scenes as `scene_00000.png` … and `scenes.jsonl` (one JSON object a line:
/// `file`, `caption`, `fine_captions` [{`perspective`, `text`}], `scene`). Returns `count`.
pub fn write_scenes(dir: &Path, count: usize, seed: u64) -> Result<usize, ScenesError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut jsonl = String::new();
    for i in 0..count {
        let scene = dataset_scene(seed, i);
        let file = format!("scene_{i:05}.png");
        let path = dir.join(&file);
        scene
            .render()
            .save_with_format(&path, image::ImageFormat::Png)
            .map_err(|source| ScenesError::Image {
                path: path.clone(),
                source,
            })?;
        let rec = Record {
            file: &file,
            caption: scene.caption(),
            fine_captions: scene.fine_captions(),
            scene: &scene,
        };
        let line = serde_json::to_string(&rec).map_err(|source| ScenesError::Json {
            path: dir.join("scenes.jsonl"),
            source,
        })?;
        jsonl.push_str(&line);
        jsonl.push('\n');
    }
    let path = dir.join("scenes.jsonl");
    crate::util::write_atomic(&path, jsonl.as_bytes()).map_err(io_err(&path))?;
    Ok(count)
}

/// Quotes a CSV field when it needs it.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn save_jpeg(img: &image::RgbImage, path: &Path) -> Result<(), ScenesError> {
    let file = std::fs::File::create(path).map_err(io_err(path))?;
    let mut w = std::io::BufWriter::new(file);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut w, 95)
        .encode_image(img)
        .map_err(|source| ScenesError::Image {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes pairs in the MMVP-VLM layout (`Questions.csv` + `MLLM_VLM Images/<Type>/<id>.jpg`,
/// JPEG quality 95). Pairs are grouped by pattern in [`MmvpPattern::ALL`] order (stable within a
/// pattern); ids run from 1, pair `k` having ids `2k+1` (image `a`) and `2k+2` (image `b`).
pub fn export_mmvp(dir: &Path, pairs: &[ScenePair]) -> Result<(), ScenesError> {
    let mut ordered: Vec<&ScenePair> = pairs.iter().collect();
    ordered.sort_by_key(|p| p.pattern);
    let images = dir.join(MMVP_IMAGES_DIR);
    let mut csv = String::from("Question ID,Type,Statement\n");
    for (k, pair) in ordered.iter().enumerate() {
        let ty = pair.pattern.mmvp_type();
        let folder = images.join(ty);
        std::fs::create_dir_all(&folder).map_err(io_err(&folder))?;
        for (j, (scene, statement)) in [
            (&pair.a, &pair.statements[0]),
            (&pair.b, &pair.statements[1]),
        ]
        .into_iter()
        .enumerate()
        {
            let id = 2 * k + j + 1;
            save_jpeg(&scene.render(), &folder.join(format!("{id}.jpg")))?;
            csv.push_str(&format!(
                "{id},{},{}\n",
                csv_field(ty),
                csv_field(statement)
            ));
        }
    }
    let path = dir.join(MMVP_QUESTIONS);
    std::fs::write(&path, csv).map_err(io_err(&path))
}

/// One MMVP pair read from disk.
#[derive(Debug, Clone, PartialEq)]
pub struct MmvpItem {
    /// The pattern, when `type_name` is one of MMVP-VLM's nine types.
    pub pattern: Option<MmvpPattern>,
    /// The `Type` column (also the image folder).
    pub type_name: String,
    /// The two images, in question-id order.
    pub images: [PathBuf; 2],
    /// The statement of each image.
    pub statements: [String; 2],
}

/// A CSV record: the 1-based line it starts on and its fields.
pub type CsvRecord = (usize, Vec<String>);

/// Parses CSV text (RFC 4180: quoted fields, `""` escapes, CRLF) into records. Empty lines
/// are skipped; an error is the line and what is wrong.
pub fn parse_csv(text: &str) -> Result<Vec<CsvRecord>, (usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows = Vec::new();
    let mut row: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut line = 1;
    let mut start = 1;
    let mut quoted = false;
    let mut field_started = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() && !field_started => {
                quoted = true;
                field_started = true;
            }
            '"' => return Err((line, "quote inside an unquoted field".into())),
            ',' => {
                row.push(std::mem::take(&mut field));
                field_started = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' => {
                if field_started || !field.is_empty() || !row.is_empty() {
                    row.push(std::mem::take(&mut field));
                    rows.push((start, std::mem::take(&mut row)));
                }
                field_started = false;
                line += 1;
                start = line;
            }
            _ => {
                field.push(c);
                field_started = true;
            }
        }
    }
    if quoted {
        return Err((start, "unterminated quoted field".into()));
    }
    if field_started || !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push((start, row));
    }
    Ok(rows)
}

/// Reads an MMVP-VLM folder (ours or the real one): pairs of consecutive `Questions.csv` rows,
/// images at `MLLM_VLM Images/<Type>/<Question ID>.jpg` (a `.png` is accepted when no `.jpg`
/// exists). Errors name the offending file.
pub fn read_mmvp_dir(dir: &Path) -> Result<Vec<MmvpItem>, ScenesError> {
    let path = dir.join(MMVP_QUESTIONS);
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let csv_err = |line: usize, message: String| ScenesError::Csv {
        path: path.clone(),
        line,
        message,
    };
    let mut rows = parse_csv(&text).map_err(|(l, m)| csv_err(l, m))?;
    // Columns by header name when there is a header, else positions 0, 1, 2.
    let mut cols = [0usize, 1, 2];
    if let Some((_, head)) = rows.first()
        && head
            .first()
            .is_none_or(|f| f.trim().parse::<u64>().is_err())
    {
        for (k, name) in ["Question ID", "Type", "Statement"].iter().enumerate() {
            if let Some(i) = head
                .iter()
                .position(|h| h.trim().eq_ignore_ascii_case(name))
            {
                cols[k] = i;
            }
        }
        rows.remove(0);
    }
    if !rows.len().is_multiple_of(2) {
        let line = rows.last().map_or(1, |r| r.0);
        return Err(csv_err(
            line,
            format!(
                "{} question rows: an odd number, rows must pair up",
                rows.len()
            ),
        ));
    }
    let images_root = dir.join(MMVP_IMAGES_DIR);
    let field = |line: usize, row: &[String], k: usize| -> Result<String, ScenesError> {
        row.get(cols[k])
            .map(|s| s.trim().to_string())
            .ok_or_else(|| {
                csv_err(
                    line,
                    format!("{} fields, expected at least {}", row.len(), cols[k] + 1),
                )
            })
    };
    let mut items = Vec::with_capacity(rows.len() / 2);
    for pair in rows.chunks_exact(2) {
        let mut images: [PathBuf; 2] = Default::default();
        let mut statements: [String; 2] = Default::default();
        let mut type_name = String::new();
        for (j, (line, row)) in pair.iter().enumerate() {
            let id = field(*line, row, 0)?;
            let id: u64 = id
                .parse()
                .map_err(|_| csv_err(*line, format!("question id {id:?} is not a number")))?;
            let ty = field(*line, row, 1)?;
            statements[j] = field(*line, row, 2)?;
            let folder = images_root.join(&ty);
            let jpg = folder.join(format!("{id}.jpg"));
            let png = folder.join(format!("{id}.png"));
            images[j] = if jpg.is_file() {
                jpg
            } else if png.is_file() {
                png
            } else {
                return Err(ScenesError::MissingImage(jpg));
            };
            if j == 0 {
                type_name = ty;
            }
        }
        items.push(MmvpItem {
            pattern: MmvpPattern::from_name(&type_name),
            type_name,
            images,
            statements,
        });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_commas_escapes_and_crlf() {
        let rows =
            parse_csv("a,b\r\n1,\"x, \"\"y\"\"\"\r\n\r\n2,\"multi\nline\"\n").unwrap_or_default();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].1, vec!["1".to_string(), "x, \"y\"".to_string()]);
        assert_eq!(
            rows[2],
            (4, vec!["2".to_string(), "multi\nline".to_string()])
        );
        assert!(parse_csv("1,\"open").is_err());
        assert_eq!(csv_field("a, b"), "\"a, b\"");
    }
}
