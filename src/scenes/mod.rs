//! Procedural scenes for teaching and training a small multimodal embedding model, and
//! P-MMVP, a pair benchmark modelled on MMVP-VLM (Tong et al. 2024, "Eyes Wide Shut").
//!
//! Everything is seeded through [`SceneRng`]: the same seed gives the same scene metadata,
//! byte-identical PNGs and the same captions. A scene is 96×96 RGB: a setting drawn as a
//! background texture, seen close up ([`Zoom::Near`]) or from afar ([`Zoom::Far`], horizon
//! visible), with 1–5 non-overlapping objects placed on a jittered grid.
//!
//! - [`font`]: a 5×7 bitmap font for labels (randomness: [`crate::util::rng`]);
//! - [`render`]: supersampled signed-distance rendering;
//! - [`caption`]: the caption grammar and [`vocabulary`];
//! - [`mmvp`]: P-MMVP pairs, [`differing_patterns`] and MMVP scoring;
//! - [`io`]: data-set files and the MMVP-VLM folder layout.

pub mod caption;
pub mod eval;
pub mod font;
pub mod io;
pub mod labels;
pub mod mmvp;
pub mod render;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The scenes' generator: the crate's one seeded RNG.
pub use crate::util::rng::SplitMix64 as SceneRng;
pub use caption::{FineCaption, vocabulary};
pub use io::{MmvpItem, export_mmvp, read_mmvp_dir, write_scenes};
pub use mmvp::{
    MmvpPattern, MmvpTally, ScenePair, differing_patterns, mmvp_pair_correct, pmmvp_pairs,
};

/// Side of a rendered scene in pixels (images are `SCENE_SIZE`×`SCENE_SIZE` RGB).
pub const SCENE_SIZE: u32 = 96;

/// Errors of scene files and the MMVP-VLM layout.
#[derive(Debug, thiserror::Error)]
pub enum ScenesError {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An image could not be encoded.
    #[error("{path}: image: {source}")]
    Image {
        /// The image path.
        path: PathBuf,
        /// The underlying error.
        source: image::ImageError,
    },
    /// Scene metadata could not be serialised.
    #[error("{path}: json: {source}")]
    Json {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// `Questions.csv` is malformed.
    #[error("{path}:{line}: {message}")]
    Csv {
        /// The CSV path.
        path: PathBuf,
        /// 1-based line of the offending record.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// An image named by `Questions.csv` does not exist.
    #[error("missing image file {0}")]
    MissingImage(PathBuf),
    /// Embedding or scoring failed while evaluating a model.
    #[error("{0}")]
    Eval(String),
}

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident => $word:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($(#[$vm])* $var),+ }
        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [Self; named_enum!(@count $($var)+)] = [$(Self::$var),+];
            /// The lowercase single word used in captions.
            pub fn name(self) -> &'static str {
                match self { $(Self::$var => $word),+ }
            }
        }
    };
    (@count $($x:ident)+) => { <[()]>::len(&[$(named_enum!(@unit $x)),+]) };
    (@unit $x:ident) => { () };
}

named_enum! {
    /// The background of a scene.
    Setting {
        /// Sand with a band of sea.
        Beach => "beach",
        /// Dark blue sky with stars.
        Night => "night",
        /// A lawn.
        Grass => "grass",
        /// Snowy ground.
        Snow => "snow",
        /// Wall and wooden floor.
        Indoor => "indoor",
        /// Blue sky with clouds.
        Sky => "sky",
    }
}

named_enum! {
    /// Object shape.
    Shape {
        /// Disc.
        Circle => "circle",
        /// Axis-aligned square.
        Square => "square",
        /// Isosceles triangle; its apex gives the orientation.
        Triangle => "triangle",
        /// Five-pointed star.
        Star => "star",
        /// Regular hexagon.
        Hexagon => "hexagon",
        /// Rhombus standing on a tip.
        Diamond => "diamond",
        /// Block arrow; its head gives the orientation.
        Arrow => "arrow",
        /// Plus sign.
        Cross => "cross",
    }
}

named_enum! {
    /// Object colour.
    Colour {
        /// Red.
        Red => "red",
        /// Orange.
        Orange => "orange",
        /// Yellow.
        Yellow => "yellow",
        /// Green.
        Green => "green",
        /// Blue.
        Blue => "blue",
        /// Purple.
        Purple => "purple",
        /// Pink.
        Pink => "pink",
        /// White.
        White => "white",
        /// Black.
        Black => "black",
    }
}

named_enum! {
    /// Object size class.
    Size {
        /// Small.
        Small => "small",
        /// Large.
        Large => "large",
    }
}

named_enum! {
    /// Where an arrow's head or a triangle's apex points (other shapes keep `Up`).
    Orientation {
        /// Towards the top of the image.
        Up => "up",
        /// Towards the right.
        Right => "right",
        /// Towards the bottom.
        Down => "down",
        /// Towards the left.
        Left => "left",
    }
}

named_enum! {
    /// Viewpoint: close-up or distant.
    Zoom {
        /// Close-up: larger objects, coarse texture, no horizon ("close up").
        Near => "close",
        /// Distant: smaller objects, horizon visible.
        Far => "far",
    }
}

impl Shape {
    /// Plural caption word.
    pub fn plural(self) -> &'static str {
        match self {
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
            Shape::Star => "stars",
            Shape::Hexagon => "hexagons",
            Shape::Diamond => "diamonds",
            Shape::Arrow => "arrows",
            Shape::Cross => "crosses",
        }
    }

    /// Whether the orientation of this shape is visible (arrows and triangles).
    pub fn oriented(self) -> bool {
        matches!(self, Shape::Arrow | Shape::Triangle)
    }

    /// Whether this shape can carry a label (a "sign": squares and circles).
    pub fn can_carry_label(self) -> bool {
        matches!(self, Shape::Square | Shape::Circle)
    }

    /// Whether an outlined object of this shape and size still shows its hollow interior
    /// (thin shapes — stars, arrows, crosses — are outlined only when large).
    pub fn can_outline(self, size: Size) -> bool {
        size == Size::Large || !matches!(self, Shape::Star | Shape::Arrow | Shape::Cross)
    }
}

impl Colour {
    /// sRGB value used for drawing.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 38, 38],
            Colour::Orange => [245, 130, 20],
            Colour::Yellow => [250, 222, 30],
            Colour::Green => [30, 190, 70],
            Colour::Blue => [35, 85, 225],
            Colour::Purple => [135, 55, 200],
            Colour::Pink => [250, 120, 190],
            Colour::White => [250, 250, 250],
            Colour::Black => [15, 15, 15],
        }
    }
}

impl Zoom {
    /// Words for captions: "close up" or "far".
    pub fn phrase(self) -> &'static str {
        match self {
            Zoom::Near => "close up",
            Zoom::Far => "far",
        }
    }
}

/// One drawn object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneObject {
    /// Shape.
    pub shape: Shape,
    /// Colour.
    pub colour: Colour,
    /// Size class (pixel size also depends on the scene's zoom).
    pub size: Size,
    /// Filled, or outlined (only a thick contour).
    pub filled: bool,
    /// Orientation; `Up` for shapes without a visible orientation.
    pub orientation: Orientation,
    /// An uppercase letter or digit written on the object (large filled squares and circles only).
    pub label: Option<char>,
    /// `x0, y0, x1, y1` in pixels of the rendered image, tight around the drawn object.
    pub bbox: [f32; 4],
}

/// A scene: metadata from which image and captions are derived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    /// Seed of the background texture.
    pub seed: u64,
    /// Background.
    pub setting: Setting,
    /// Viewpoint.
    pub zoom: Zoom,
    /// The objects, in caption order.
    pub objects: Vec<SceneObject>,
}

/// Jittered-grid layout: objects sit in cells, so they never overlap.
pub(crate) mod layout {
    use super::{Size, Zoom};

    /// Columns and rows of the grid for a zoom.
    pub fn grid(zoom: Zoom) -> (usize, usize) {
        match zoom {
            Zoom::Near => (2, 2),
            Zoom::Far => (3, 2),
        }
    }

    /// Most objects a random scene of this zoom holds.
    pub fn max_objects(zoom: Zoom) -> usize {
        match zoom {
            Zoom::Near => 3,
            Zoom::Far => 5,
        }
    }

    /// Centre of a grid cell in pixels.
    pub fn cell_centre(zoom: Zoom, col: usize, row: usize) -> [f32; 2] {
        match zoom {
            Zoom::Near => [24.0 + 48.0 * col as f32, 24.0 + 48.0 * row as f32],
            Zoom::Far => [16.0 + 32.0 * col as f32, 46.0 + 33.0 * row as f32],
        }
    }

    /// Nominal object diameter in pixels (near is 1.6× far).
    pub fn object_px(size: Size, zoom: Zoom) -> f32 {
        let far = match size {
            Size::Small => 15.0,
            Size::Large => 24.0,
        };
        match zoom {
            Zoom::Near => far * 1.6,
            Zoom::Far => far,
        }
    }

    /// Largest jitter (x, y) of an object around its cell centre.
    pub const JITTER: [f32; 2] = [2.0, 3.0];
}

/// An object before layout: appearance plus grid cell and jitter (used by pair generation).
#[derive(Debug, Clone)]
pub(crate) struct Placed {
    pub obj: SceneObject,
    pub col: usize,
    pub row: usize,
    pub jitter: [f32; 2],
}

/// A scene before layout.
#[derive(Debug, Clone)]
pub(crate) struct SceneSpec {
    pub seed: u64,
    pub setting: Setting,
    pub zoom: Zoom,
    pub items: Vec<Placed>,
}

impl SceneSpec {
    /// Lays the objects out: computes every bbox from cell, jitter, shape and zoom.
    pub fn build(&self) -> Scene {
        let objects = self
            .items
            .iter()
            .map(|p| {
                let mut obj = p.obj.clone();
                let [cx, cy] = layout::cell_centre(self.zoom, p.col, p.row);
                let d = layout::object_px(obj.size, self.zoom);
                let e = render::unit_extent(obj.shape, obj.orientation);
                let (x, y) = (cx + p.jitter[0], cy + p.jitter[1]);
                obj.bbox = [x + e[0] * d, y + e[1] * d, x + e[2] * d, y + e[3] * d];
                obj
            })
            .collect();
        Scene {
            seed: self.seed,
            setting: self.setting,
            zoom: self.zoom,
            objects,
        }
    }
}

/// A random appearance (bbox left zero); `label_p` is the chance a sign gets a label.
pub(crate) fn random_object(rng: &mut SceneRng, label_p: f32) -> SceneObject {
    let shape = rng.of(&Shape::ALL);
    let colour = rng.of(&Colour::ALL);
    let size = rng.of(&Size::ALL);
    let filled = rng.chance(0.6) || !shape.can_outline(size);
    let orientation = if shape.oriented() {
        rng.of(&Orientation::ALL)
    } else {
        Orientation::Up
    };
    let label = if shape.can_carry_label() && size == Size::Large && filled && rng.chance(label_p) {
        Some(rng.of(&font::LABEL_CHARS))
    } else {
        None
    };
    SceneObject {
        shape,
        colour,
        size,
        filled,
        orientation,
        label,
        bbox: [0.0; 4],
    }
}

/// A random jitter within [`layout::JITTER`].
pub(crate) fn random_jitter(rng: &mut SceneRng) -> [f32; 2] {
    let [jx, jy] = layout::JITTER;
    [rng.range(-jx, jx), rng.range(-jy, jy)]
}

/// All cells of a zoom's grid, shuffled.
pub(crate) fn shuffled_cells(rng: &mut SceneRng, zoom: Zoom) -> Vec<(usize, usize)> {
    let (cols, rows) = layout::grid(zoom);
    let mut cells: Vec<(usize, usize)> = (0..rows)
        .flat_map(|r| (0..cols).map(move |c| (c, r)))
        .collect();
    rng.shuffle(&mut cells);
    cells
}

impl Scene {
    /// A random scene: 1–5 objects (1–3 close up), no overlaps, every attribute varied;
    /// sometimes several identical objects (captioned with a count word).
    pub fn random(rng: &mut SceneRng) -> Scene {
        Self::random_with_labels(rng, 0.5)
    }

    /// A random scene as [`Scene::random`] draws it, except that every large filled
    /// square or circle carries a character: the vision tower's dense pre-training and
    /// its probes see characters twice as often.
    pub fn random_labelled(rng: &mut SceneRng) -> Scene {
        Self::random_with_labels(rng, 1.0)
    }

    /// `label_p`: the chance a large filled square or circle carries a character.
    fn random_with_labels(rng: &mut SceneRng, label_p: f32) -> Scene {
        let seed = rng.next_u64();
        let setting = rng.of(&Setting::ALL);
        let zoom = rng.of(&Zoom::ALL);
        let count = 1 + rng.below(layout::max_objects(zoom));
        let cells = shuffled_cells(rng, zoom);
        let mut items: Vec<Placed> = Vec::with_capacity(count);
        for &(col, row) in cells.iter().take(count) {
            let obj = match items.last() {
                Some(prev) if rng.chance(0.25) => prev.obj.clone(),
                _ => random_object(rng, label_p),
            };
            let jitter = random_jitter(rng);
            items.push(Placed {
                obj,
                col,
                row,
                jitter,
            });
        }
        SceneSpec {
            seed,
            setting,
            zoom,
            items,
        }
        .build()
    }

    /// The scene drawn: `SCENE_SIZE`×`SCENE_SIZE`, anti-aliased, deterministic.
    pub fn render(&self) -> image::RgbImage {
        render::render(self)
    }

    /// The global caption (see [`caption`]).
    pub fn caption(&self) -> String {
        caption::caption(self)
    }

    /// Short captions each about one attribute dimension.
    pub fn fine_captions(&self) -> Vec<FineCaption> {
        caption::fine_captions(self)
    }
}

/// Relation of two boxes, from geometry only: "left of", "right of", "above", "below".
pub fn relation(a: &[f32; 4], b: &[f32; 4]) -> Option<&'static str> {
    if a[2] <= b[0] {
        Some("left of")
    } else if b[2] <= a[0] {
        Some("right of")
    } else if a[3] <= b[1] {
        Some("above")
    } else if b[3] <= a[1] {
        Some("below")
    } else {
        None
    }
}
