//! The Qwen3-VL image processor, computing exactly what transformers' default
//! (torchvision-backed) `Qwen2VLImageProcessor` computes on the CPU:
//!
//! 1. `smart_resize`: a size divisible by `patch_size·merge_size` with about the same area
//!    and aspect, within `[min_pixels, max_pixels]` (Python rounding: ties to even);
//! 2. bicubic resampling with antialiasing on 8-bit pixels, separable, horizontal pass first,
//!    with int16 fixed-point weights (torch's uint8 kernel, derived from Pillow-SIMD);
//! 3. `(x − 255·mean)/(255·std)` in f32;
//! 4. flattening into `[patches, C·T·P·P]` rows in merge-window order, the single frame
//!    repeated `temporal_patch_size` times, and `grid_thw = [1, H/P, W/P]`.
//!
//! Where transformers' own behaviour depends on how an image is passed (alpha, EXIF, 16-bit),
//! [`crate::model::image_io`] does what a user expects: EXIF applied, alpha over white,
//! 16-bit scaled.

use std::path::Path;

use image::RgbImage;
use serde::Deserialize;
use serde_json::Value;

use crate::model::error::{ModelError, Result};

/// Settings read from `preprocessor_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessorConfig {
    /// `patch_size`: side of a square patch in pixels (default 16).
    pub patch_size: usize,
    /// `temporal_patch_size`: frames per patch; an image is repeated this often (default 2).
    pub temporal_patch_size: usize,
    /// `merge_size`: side of the window of patches merged into one token (default 2).
    pub merge_size: usize,
    /// Smallest resized area in pixels: `size.shortest_edge`, else `min_pixels` (default
    /// 65 536 = 256²).
    pub min_pixels: usize,
    /// Largest resized area in pixels: `size.longest_edge`, else `max_pixels` (default
    /// 16 777 216 = 4096²).
    pub max_pixels: usize,
    /// `image_mean`: per-channel RGB mean on the 0–1 scale (default 0.5).
    pub image_mean: [f32; 3],
    /// `image_std`: per-channel RGB standard deviation on the 0–1 scale (default 0.5;
    /// never 0).
    pub image_std: [f32; 3],
    /// `rescale_factor`: scale from 8-bit values to the 0–1 scale (default 1/255).
    pub rescale_factor: f64,
}

impl Default for ImageProcessorConfig {
    /// Qwen3-VL's released settings.
    fn default() -> Self {
        Self {
            patch_size: 16,
            temporal_patch_size: 2,
            merge_size: 2,
            min_pixels: 65_536,
            max_pixels: 16_777_216,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            rescale_factor: 1.0 / 255.0,
        }
    }
}

#[derive(Deserialize)]
struct RawSize {
    shortest_edge: Option<usize>,
    longest_edge: Option<usize>,
}

#[derive(Deserialize)]
struct RawProcessor {
    patch_size: Option<usize>,
    temporal_patch_size: Option<usize>,
    merge_size: Option<usize>,
    min_pixels: Option<usize>,
    max_pixels: Option<usize>,
    size: Option<RawSize>,
    image_mean: Option<Vec<f32>>,
    image_std: Option<Vec<f32>>,
    rescale_factor: Option<f64>,
}

impl ImageProcessorConfig {
    /// Reads `preprocessor_config.json`; absent keys keep Qwen3-VL's values.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let json = |source| ModelError::Json {
            path: path.to_path_buf(),
            what: "an image processor config",
            source,
        };
        let value: Value = serde_json::from_str(&text).map_err(json)?;
        let raw: RawProcessor = serde_json::from_value(value).map_err(json)?;
        let d = Self::default();
        let three = |v: Option<Vec<f32>>, default: [f32; 3], what: &str| -> Result<[f32; 3]> {
            match v {
                None => Ok(default),
                Some(v) => v.as_slice().try_into().map_err(|_| ModelError::BadConfig {
                    path: path.to_path_buf(),
                    reason: format!("{what} needs 3 values, got {}", v.len()),
                }),
            }
        };
        let size = raw.size.as_ref();
        let config = Self {
            patch_size: raw.patch_size.unwrap_or(d.patch_size),
            temporal_patch_size: raw.temporal_patch_size.unwrap_or(d.temporal_patch_size),
            merge_size: raw.merge_size.unwrap_or(d.merge_size),
            min_pixels: size
                .and_then(|s| s.shortest_edge)
                .or(raw.min_pixels)
                .unwrap_or(d.min_pixels),
            max_pixels: size
                .and_then(|s| s.longest_edge)
                .or(raw.max_pixels)
                .unwrap_or(d.max_pixels),
            image_mean: three(raw.image_mean, d.image_mean, "image_mean")?,
            image_std: three(raw.image_std, d.image_std, "image_std")?,
            rescale_factor: raw.rescale_factor.unwrap_or(d.rescale_factor),
        };
        if config.patch_size == 0 || config.merge_size == 0 || config.temporal_patch_size == 0 {
            return Err(ModelError::BadConfig {
                path: path.to_path_buf(),
                reason: "patch_size, merge_size and temporal_patch_size must be positive".into(),
            });
        }
        if config.image_std.contains(&0.0) {
            return Err(ModelError::BadConfig {
                path: path.to_path_buf(),
                reason: "image_std has a zero".into(),
            });
        }
        Ok(config)
    }

    /// `patch_size · merge_size`: resized sides are multiples of it.
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }
}

/// A preprocessed image.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// `[patches, C·T·P·P]` row-major.
    pub pixel_values: Vec<f32>,
    /// Patch grid `(t, h, w)`.
    pub grid_thw: [usize; 3],
    /// Size after resizing, `(height, width)`.
    pub resized: (usize, usize),
}

impl PreparedImage {
    /// Number of patch rows.
    pub fn patches(&self) -> usize {
        self.grid_thw.iter().product()
    }

    /// Length of one patch row.
    pub fn row_len(&self) -> usize {
        self.pixel_values.len() / self.patches().max(1)
    }
}

/// transformers' `smart_resize`: `(height, width)` → the resized `(height, width)`.
pub fn smart_resize(
    height: usize,
    width: usize,
    config: &ImageProcessorConfig,
) -> Result<(usize, usize)> {
    let factor = config.factor() as f64;
    let (h, w) = (height as f64, width as f64);
    if height == 0 || width == 0 {
        return Err(ModelError::Input("the image has no pixels".into()));
    }
    if h.max(w) / h.min(w) > 200.0 {
        return Err(ModelError::Input(format!(
            "the image is {width}×{height}: an aspect ratio over 200 is not supported"
        )));
    }
    let mut h_bar = (h / factor).round_ties_even() * factor;
    let mut w_bar = (w / factor).round_ties_even() * factor;
    if h_bar * w_bar > config.max_pixels as f64 {
        let beta = (h * w / config.max_pixels as f64).sqrt();
        h_bar = factor.max((h / beta / factor).floor() * factor);
        w_bar = factor.max((w / beta / factor).floor() * factor);
    } else if h_bar * w_bar < config.min_pixels as f64 {
        let beta = (config.min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / factor).ceil() * factor;
        w_bar = (w * beta / factor).ceil() * factor;
    }
    Ok((h_bar as usize, w_bar as usize))
}

fn cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// Which fixed-point bicubic resampler: both are Pillow's algorithm (separable, horizontal
/// pass first, antialiased support, weights normalised then rounded half away from zero,
/// sums rounded and clipped to 8 bits) and differ only in the weights' precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resampler {
    /// torch's uint8 antialiased kernel (from Pillow-SIMD), what transformers'
    /// `Qwen2VLImageProcessor` runs: int16 weights with the most fractional bits that fit
    /// the largest weight.
    Torch,
    /// Pillow's `Image.resize(size)` (its default BICUBIC filter; `ImagingResample` in
    /// `Resample.c`): 22 fractional bits in 32-bit weights. What `qwen_vl_utils.fetch_image`
    /// runs, so what the released Qwen3-VL-Embedding embedder sees.
    Pillow,
}

/// Fixed-point resampling taps of one axis.
struct AxisTaps {
    /// `(first input index, weights)` of each output index.
    taps: Vec<(usize, Vec<i32>)>,
    precision: u32,
}

#[cfg(test)]
fn axis_taps(input: usize, output: usize, resampler: Resampler) -> AxisTaps {
    filtered_taps(input, output, resampler, false)
}

/// [`axis_taps`] with the bicubic (`bilinear` false) or the triangle filter: torch's and
/// Pillow's antialiased kernels differ between the two only in the filter and its support
/// (2 and 1 input pixels at scale 1).
fn filtered_taps(input: usize, output: usize, resampler: Resampler, bilinear: bool) -> AxisTaps {
    let scale = input as f64 / output as f64;
    let base = if bilinear { 1.0 } else { 2.0 };
    let filter = |x: f64| {
        if bilinear {
            (1.0 - x.abs()).max(0.0)
        } else {
            cubic(x)
        }
    };
    let (support, inv) = if scale >= 1.0 {
        (base * scale, 1.0 / scale)
    } else {
        (base, 1.0)
    };
    let kmax = support.ceil() as usize * 2 + 1;
    let mut rows = Vec::with_capacity(output);
    let mut wt_max = 0f64;
    for i in 0..output {
        let center = scale * (i as f64 + 0.5);
        let xmin = ((center - support + 0.5).trunc() as i64).max(0) as usize;
        let xmax = ((center + support + 0.5).trunc() as i64)
            .min(input as i64)
            .max(0) as usize;
        let size = xmax.saturating_sub(xmin).min(kmax);
        let mut w: Vec<f64> = (0..size)
            .map(|j| filter((j as f64 + xmin as f64 - center + 0.5) * inv))
            .collect();
        let total: f64 = w.iter().sum();
        if total != 0.0 {
            w.iter_mut().for_each(|v| *v /= total);
        }
        wt_max = w.iter().copied().fold(wt_max, f64::max);
        rows.push((xmin, w));
    }
    let precision = match resampler {
        // `PRECISION_BITS = 32 - 8 - 2` in Pillow's Resample.c.
        Resampler::Pillow => 22,
        Resampler::Torch => {
            let mut precision = 0u32;
            while precision < 22
                && ((0.5 + wt_max * f64::from(1u32 << (precision + 1))) as i64) < (1 << 15)
            {
                precision += 1;
            }
            precision
        }
    };
    let one = f64::from(1u32 << precision);
    let taps = rows
        .into_iter()
        .map(|(xmin, w)| {
            let q = w
                .iter()
                .map(|&v| {
                    if v >= 0.0 {
                        (v * one + 0.5).trunc() as i32
                    } else {
                        (v * one - 0.5).trunc() as i32
                    }
                })
                .collect();
            (xmin, q)
        })
        .collect();
    AxisTaps { taps, precision }
}

/// One resampling pass over planar `[C][rows][cols]` u8 data along the columns (`horizontal`)
/// or the rows.
fn resample_pass(
    src: &[u8],
    channels: usize,
    rows: usize,
    cols: usize,
    out_len: usize,
    horizontal: bool,
    (resampler, bilinear): (Resampler, bool),
) -> Vec<u8> {
    let axis = if horizontal {
        filtered_taps(cols, out_len, resampler, bilinear)
    } else {
        filtered_taps(rows, out_len, resampler, bilinear)
    };
    let (out_rows, out_cols) = if horizontal {
        (rows, out_len)
    } else {
        (out_len, cols)
    };
    let round = 1i32 << (axis.precision - 1).min(31);
    let mut out = vec![0u8; channels * out_rows * out_cols];
    for c in 0..channels {
        let plane = &src[c * rows * cols..(c + 1) * rows * cols];
        let dst = &mut out[c * out_rows * out_cols..(c + 1) * out_rows * out_cols];
        for r in 0..out_rows {
            for k in 0..out_cols {
                let (first, weights) = if horizontal {
                    &axis.taps[k]
                } else {
                    &axis.taps[r]
                };
                let mut acc = round;
                for (j, &w) in weights.iter().enumerate() {
                    let px = if horizontal {
                        plane[r * cols + first + j]
                    } else {
                        plane[(first + j) * cols + k]
                    };
                    acc += w * i32::from(px);
                }
                dst[r * out_cols + k] = (acc >> axis.precision).clamp(0, 255) as u8;
            }
        }
    }
    out
}

/// Resizes planar `[3][h][w]` u8 pixels to `(out_h, out_w)` with antialiased bicubic
/// (horizontal pass first; a pass whose size does not change is skipped), torch's weights.
pub fn resize_bicubic_aa(planar: &[u8], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<u8> {
    resize_bicubic(planar, h, w, out_h, out_w, Resampler::Torch)
}

/// [`resize_bicubic_aa`] with the chosen resampler's weights.
pub fn resize_bicubic(
    planar: &[u8],
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
    resampler: Resampler,
) -> Vec<u8> {
    resize_planar_filtered(planar, h, w, out_h, out_w, resampler, false)
}

/// Resizes planar `[C][h][w]` u8 pixels to `(out_h, out_w)`, antialiased, with the
/// bicubic (`bilinear` false) or the bilinear filter: horizontal pass first, a pass whose
/// size does not change skipped, as torch's uint8 kernel and Pillow do.
pub fn resize_planar_filtered(
    planar: &[u8],
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
    resampler: Resampler,
    bilinear: bool,
) -> Vec<u8> {
    let channels = planar.len() / (h * w).max(1);
    let mut data = planar.to_vec();
    let mut cur_w = w;
    if out_w != w {
        data = resample_pass(&data, channels, h, w, out_w, true, (resampler, bilinear));
        cur_w = out_w;
    }
    if out_h != h {
        data = resample_pass(
            &data,
            channels,
            h,
            cur_w,
            out_h,
            false,
            (resampler, bilinear),
        );
    }
    data
}

/// Fewest pixels the released embedder resizes to: `Qwen3VLEmbedder`'s `min_pixels`
/// (`4·32·32`).
pub const EMBEDDER_MIN_PIXELS: usize = 4 * 32 * 32;
/// Most pixels the released embedder resizes to: `Qwen3VLEmbedder`'s `max_pixels`
/// (`1800·32·32`, about 1,800 visual tokens).
pub const EMBEDDER_MAX_PIXELS: usize = 1800 * 32 * 32;

/// How an image is resized before the processor normalises and patches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PreprocessProfile {
    /// The released Qwen3-VL-Embedding path (its `Qwen3VLEmbedder`): `qwen_vl_utils`'
    /// `fetch_image`, i.e. `smart_resize` with factor `patch·merge` (32) between
    /// `min_pixels` and `max_pixels` (the embedder's own 4,096 and 1,843,200 unless
    /// overridden, not `preprocessor_config.json`'s), Pillow's bicubic
    /// [`Resampler::Pillow`], then the processor with `do_resize=False`.
    Embedder {
        /// Fewest pixels after resizing.
        min_pixels: usize,
        /// Most pixels after resizing.
        max_pixels: usize,
    },
    /// transformers' `Qwen2VLImageProcessor` resizing itself: `preprocessor_config.json`'s
    /// pixel budget (or `min_pixels`/`max_pixels` overrides), torch's kernel.
    Processor {
        /// Fewest pixels after resizing (`None`: the config's).
        min_pixels: Option<usize>,
        /// Most pixels after resizing (`None`: the config's).
        max_pixels: Option<usize>,
    },
}

impl PreprocessProfile {
    /// The released embedder's path with its own pixel budget.
    pub const EMBEDDER: Self = Self::Embedder {
        min_pixels: EMBEDDER_MIN_PIXELS,
        max_pixels: EMBEDDER_MAX_PIXELS,
    };

    /// The processor's own path and budget.
    pub const PROCESSOR: Self = Self::Processor {
        min_pixels: None,
        max_pixels: None,
    };

    /// This profile with the pixel budget overridden where given.
    pub fn with_budget(self, min: Option<usize>, max: Option<usize>) -> Self {
        match self {
            Self::Embedder {
                min_pixels,
                max_pixels,
            } => Self::Embedder {
                min_pixels: min.unwrap_or(min_pixels),
                max_pixels: max.unwrap_or(max_pixels),
            },
            Self::Processor {
                min_pixels,
                max_pixels,
            } => Self::Processor {
                min_pixels: min.or(min_pixels),
                max_pixels: max.or(max_pixels),
            },
        }
    }

    /// The processor settings this profile resizes with, and the resampler.
    fn resize_settings(self, config: &ImageProcessorConfig) -> (ImageProcessorConfig, Resampler) {
        let mut c = config.clone();
        match self {
            Self::Embedder {
                min_pixels,
                max_pixels,
            } => {
                c.min_pixels = min_pixels;
                c.max_pixels = max_pixels;
                (c, Resampler::Pillow)
            }
            Self::Processor {
                min_pixels,
                max_pixels,
            } => {
                c.min_pixels = min_pixels.unwrap_or(c.min_pixels);
                c.max_pixels = max_pixels.unwrap_or(c.max_pixels);
                (c, Resampler::Torch)
            }
        }
    }

    /// A short description for messages and the cache key: `embedder 4096..1843200`,
    /// `processor 65536..16777216` (the effective budget under `config`).
    pub fn describe(self, config: &ImageProcessorConfig) -> String {
        let (c, _) = self.resize_settings(config);
        let name = match self {
            Self::Embedder { .. } => "embedder",
            Self::Processor { .. } => "processor",
        };
        format!("{name} {}..{}", c.min_pixels, c.max_pixels)
    }
}

/// The image's pixels as channel planes, `[3][h][w]` u8, what the resamplers read.
pub fn planar_rgb(image: &RgbImage) -> Vec<u8> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut planar = vec![0u8; 3 * h * w];
    for (i, px) in image.pixels().enumerate() {
        for c in 0..3 {
            planar[c * h * w + i] = px[c];
        }
    }
    planar
}

/// The image resized under `profile`, planar `[3][rh][rw]`, and `(rh, rw)`.
fn resize_planar(
    image: &RgbImage,
    config: &ImageProcessorConfig,
    profile: PreprocessProfile,
) -> Result<(Vec<u8>, usize, usize)> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let (resize_config, resampler) = profile.resize_settings(config);
    let (rh, rw) = smart_resize(h, w, &resize_config)?;
    let planar = planar_rgb(image);
    if (rh, rw) == (h, w) {
        return Ok((planar, rh, rw));
    }
    Ok((resize_bicubic(&planar, h, w, rh, rw, resampler), rh, rw))
}

/// The 8-bit image as `profile` resizes it, before normalisation: for
/// [`PreprocessProfile::Embedder`], what `qwen_vl_utils.fetch_image` returns.
///
/// # Errors
/// As [`preprocess_with`].
pub fn resized_image(
    image: &RgbImage,
    config: &ImageProcessorConfig,
    profile: PreprocessProfile,
) -> Result<RgbImage> {
    let (planar, rh, rw) = resize_planar(image, config, profile)?;
    let n = rh * rw;
    let mut out = RgbImage::new(rw as u32, rh as u32);
    for (i, px) in out.pixels_mut().enumerate() {
        for c in 0..3 {
            px[c] = planar[c * n + i];
        }
    }
    Ok(out)
}

/// Preprocesses an 8-bit RGB image as transformers' processor does
/// ([`PreprocessProfile::PROCESSOR`]).
pub fn preprocess(image: &RgbImage, config: &ImageProcessorConfig) -> Result<PreparedImage> {
    preprocess_with(image, config, PreprocessProfile::PROCESSOR)
}

/// Preprocesses an 8-bit RGB image under `profile`: resize (see [`PreprocessProfile`]),
/// then `(x − 255·mean)/(255·std)` and patching as the processor does.
///
/// # Errors
/// [`ModelError::Input`] for an image without pixels or with an aspect ratio over 200.
pub fn preprocess_with(
    image: &RgbImage,
    config: &ImageProcessorConfig,
    profile: PreprocessProfile,
) -> Result<PreparedImage> {
    let (resized, rh, rw) = resize_planar(image, config, profile)?;

    // (x − mean·255)/(std·255) in f32, exactly as transformers fuses rescale and normalise.
    let inv_rescale = (1.0 / config.rescale_factor) as f32;
    let mean: [f32; 3] = config.image_mean.map(|m| m * inv_rescale);
    let std: [f32; 3] = config.image_std.map(|s| s * inv_rescale);

    let (p, m, t) = (
        config.patch_size,
        config.merge_size,
        config.temporal_patch_size,
    );
    let (gh, gw) = (rh / p, rw / p);
    let row_len = 3 * t * p * p;
    let mut pixel_values = vec![0f32; gh * gw * row_len];
    let mut n = 0;
    for bh in 0..gh / m {
        for bw in 0..gw / m {
            for ih in 0..m {
                for iw in 0..m {
                    let row = &mut pixel_values[n * row_len..(n + 1) * row_len];
                    let (y0, x0) = ((bh * m + ih) * p, (bw * m + iw) * p);
                    for c in 0..3 {
                        let plane = &resized[c * rh * rw..(c + 1) * rh * rw];
                        for tt in 0..t {
                            for py in 0..p {
                                for px in 0..p {
                                    let v = f32::from(plane[(y0 + py) * rw + x0 + px]);
                                    row[((c * t + tt) * p + py) * p + px] = (v - mean[c]) / std[c];
                                }
                            }
                        }
                    }
                    n += 1;
                }
            }
        }
    }
    Ok(PreparedImage {
        pixel_values,
        grid_thw: [1, gh, gw],
        resized: (rh, rw),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qwen(min: usize, max: usize) -> ImageProcessorConfig {
        ImageProcessorConfig {
            min_pixels: min,
            max_pixels: max,
            ..Default::default()
        }
    }

    #[test]
    fn a_12_megapixel_photo_costs_7_times_fewer_tokens_under_the_embedder_profile() {
        let config = ImageProcessorConfig::default();
        let side = |profile: PreprocessProfile| {
            let (c, _) = profile.resize_settings(&config);
            smart_resize(3000, 4000, &c).unwrap()
        };
        // Visual tokens: (h/16)·(w/16)/4 after the 2×2 merge.
        assert_eq!(side(PreprocessProfile::EMBEDDER), (1152, 1536)); // 1,728 tokens
        assert_eq!(side(PreprocessProfile::PROCESSOR), (3008, 4000)); // 11,750 tokens
    }

    #[test]
    fn smart_resize_matches_transformers_examples() {
        let c = qwen(65_536, 16_777_216);
        assert_eq!(smart_resize(300, 451, &c).unwrap(), (288, 448));
        assert_eq!(smart_resize(60, 90, &c).unwrap(), (224, 320));
        assert_eq!(smart_resize(96, 160, &c).unwrap(), (224, 352));
        assert_eq!(smart_resize(4000, 6000, &c).unwrap(), (3328, 4992));
        assert_eq!(smart_resize(5000, 5000, &c).unwrap(), (4096, 4096));
        // Python's round: ties to even.
        let c = qwen(1024, 16_777_216);
        assert_eq!(smart_resize(80, 1000, &c).unwrap(), (64, 992));
        assert_eq!(smart_resize(112, 1000, &c).unwrap(), (128, 992));
        assert!(smart_resize(1, 300, &c).is_err());
    }

    #[test]
    fn bicubic_weights_match_torch() {
        // 300 → 96: precision 16, first output's int16 taps.
        let a = axis_taps(300, 96, Resampler::Torch);
        assert_eq!(a.precision, 16);
        assert_eq!(
            a.taps[0],
            (0, vec![17454, 22647, 18487, 8988, 836, -1614, -1160, -102])
        );
        assert_eq!(a.taps[95].0, 292);
        let a = axis_taps(451, 448, Resampler::Torch);
        assert_eq!(a.precision, 15);
        assert_eq!(a.taps[0], (0, vec![32603, 169, -4]));
        assert_eq!(a.taps[1].1, vec![-54, 32542, 288, -9]);
        let a = axis_taps(60, 224, Resampler::Torch);
        assert_eq!(a.precision, 14);
        assert_eq!(a.taps[0].1, vec![18196, -1812]);
        assert_eq!(a.taps[100], (25, vec![-1158, 10987, 7392, -837]));
    }

    #[test]
    fn a_flat_image_stays_flat_and_normalises_to_its_value() {
        let img = RgbImage::from_pixel(100, 50, image::Rgb([255, 0, 128]));
        let c = qwen(32 * 32, 64 * 96);
        let out = preprocess(&img, &c).unwrap();
        assert_eq!(out.resized, (64, 96));
        assert_eq!(out.grid_thw, [1, 4, 6]);
        assert_eq!(out.row_len(), 3 * 2 * 16 * 16);
        let row = &out.pixel_values[..out.row_len()];
        let plane = 2 * 16 * 16;
        assert!(row[..plane].iter().all(|&v| v == 1.0));
        assert!(row[plane..2 * plane].iter().all(|&v| v == -1.0));
        assert!(
            row[2 * plane..]
                .iter()
                .all(|&v| (v - 0.5 / 127.5).abs() < 1e-7)
        );
    }
}
