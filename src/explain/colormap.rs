//! Colour maps for heatmaps, defined once: the PNG export uses them here and the app's
//! overlay shader samples the same tables (uploaded as a 256×1 texture).

use serde::{Deserialize, Serialize};

/// A perceptual colour map.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
pub enum ColorMap {
    /// Matplotlib's inferno: black through purple and orange to pale yellow (the default).
    #[default]
    Inferno,
    /// Matplotlib's viridis: dark blue through green to yellow.
    Viridis,
    /// Google's Turbo rainbow: dark blue through green and yellow to dark red.
    Turbo,
    /// Black to white.
    Gray,
}

impl ColorMap {
    /// All four maps, the default first.
    pub const ALL: [ColorMap; 4] = [
        ColorMap::Inferno,
        ColorMap::Viridis,
        ColorMap::Turbo,
        ColorMap::Gray,
    ];

    /// The lower-case name used on the command line and in the UI.
    pub fn name(self) -> &'static str {
        match self {
            ColorMap::Inferno => "inferno",
            ColorMap::Viridis => "viridis",
            ColorMap::Turbo => "turbo",
            ColorMap::Gray => "gray",
        }
    }

    /// Anchor colours at evenly spaced positions 0..1 (sampled from the published maps).
    fn anchors(self) -> &'static [[u8; 3]] {
        match self {
            ColorMap::Inferno => &[
                [0, 0, 4],
                [40, 11, 84],
                [101, 21, 110],
                [159, 42, 99],
                [212, 72, 66],
                [245, 125, 21],
                [250, 193, 39],
                [252, 255, 164],
            ],
            ColorMap::Viridis => &[
                [68, 1, 84],
                [70, 50, 127],
                [54, 92, 141],
                [39, 127, 142],
                [31, 161, 135],
                [74, 194, 109],
                [159, 218, 58],
                [253, 231, 37],
            ],
            ColorMap::Turbo => &[
                [48, 18, 59],
                [70, 107, 227],
                [41, 187, 236],
                [49, 242, 153],
                [163, 253, 61],
                [237, 208, 58],
                [251, 128, 34],
                [210, 49, 5],
                [122, 4, 3],
            ],
            ColorMap::Gray => &[[0, 0, 0], [255, 255, 255]],
        }
    }

    /// The colour at `t` ∈ [0, 1] (clamped; NaN is 0).
    pub fn color(self, t: f32) -> [u8; 3] {
        let a = self.anchors();
        let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
        let x = t * (a.len() - 1) as f32;
        let i = (x.floor() as usize).min(a.len() - 2);
        let f = x - i as f32;
        std::array::from_fn(|c| {
            (a[i][c] as f32 + (a[i + 1][c] as f32 - a[i][c] as f32) * f).round() as u8
        })
    }

    /// 256 RGBA entries, for a lookup texture.
    pub fn table(self) -> Vec<[u8; 4]> {
        (0..256)
            .map(|i| {
                let [r, g, b] = self.color(i as f32 / 255.0);
                [r, g, b, 255]
            })
            .collect()
    }
}
