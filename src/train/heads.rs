//! Scene heads: an auxiliary loss of the demo recipe's contrastive stage that asks each
//! image embedding, through a linear classifier, for what the renderer knows of its scene.
//!
//! P-MMVP showed the demo model's image embedding ignoring what only a relation or a count
//! tells apart: the two images of a position pair kept a cosine of 0.996 after 4,000
//! contrastive steps, even with the tower's tokens and the language model's inputs
//! carrying each token's column (the probes of `eval probes --positions`). The contrastive
//! loss alone does not make the pooled embedding hold it. Here a linear head per
//! perspective reads, from the L2-normalised image embedding of that perspective, a set of
//! scene-level classifications built from the metadata ([`scene_tasks`]): per shape and
//! per colour, how many there are, the colour/shape and fill of the leftmost one, the
//! column and row it sits in, an arrow's or triangle's orientation, the characters
//! written on an object. Each fine perspective gets the tasks of its name (the `count`
//! perspective the counts, `spatial` the columns, rows and orientations, `attributes`
//! colours, shapes and fills, `text` the characters), so the perspectives become the
//! specialists their names promise; the global embedding gets all of them.
//!
//! Text heads ([`SceneHeads::for_text`], `train --text-heads`) do the same on the text
//! side. With the heads above, the two images of a position pair drew a little apart
//! (cosine 0.992) while their two statements ("a red circle left of a blue square" and
//! "… right of …") stayed at a cosine of 1.000: with identical statements, InfoNCE gives
//! the images no reason to differ, and with near-identical images the statements none. A
//! linear head on the global and the `spatial` text embedding asks which object the text
//! puts on the left and on the right, above and below ([`text_tasks`], read off the text
//! by [`text_targets`]), so that a statement's embedding has to hold the order its
//! relation states. They also ask which orientation ("pointing up") and which characters
//! ("the letter q") a text names: the one word an orientation or a text pair's two
//! statements differ in.
//!
//! Linear heads answered all this from differences of a hair: their loss fell while the
//! two statements of a position pair kept a cosine of 0.9996, because a linear classifier
//! can grow its weights until any consistent difference is enough. `train --head-scale S`
//! (scene heads) and `--text-head-scale S` (text heads) make each head a cosine classifier
//! at scale `S` ([`SceneHeads::cosine`]), whose logits are bounded by `S` and so ask for
//! embeddings whose directions differ. Cosine text heads
//! leave out what a text does not name (class 0), which would otherwise pull most texts
//! to one point. The committed recipe makes the text heads cosine and keeps the scene
//! heads linear (README: cosine scene heads cost the fine views what the linear ones gave
//! them).
//!
//! This is ordinary multi-task supervision of the demo recipe, not part of AGFF-Embed
//! (method.md fixes only the embedding, similarity, fusion and loss): the heads are thrown
//! away with the run (kept beside the checkpoint for resuming), and the model's embeddings
//! and scores are computed as before. The loss is the mean cross-entropy over each head's
//! tasks, averaged over the heads, times the recipe's weight (`train --scene-heads`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, DType, Device, Tensor, Var};

use super::TrainError;
use crate::agff::PerspectiveEmbeddings;
use crate::model::PerspectiveSet;
use crate::scenes::{Colour, Orientation, SCENE_SIZE, Scene, SceneObject, Shape, Size, Zoom, font};
use crate::util::rng::{SplitMix64, derive_seed};

/// Which perspective a task supervises (besides the global embedding, which gets all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskGroup {
    /// Colours, shapes and fills: the `attributes` perspective.
    Attributes,
    /// Counts: the `count` perspective.
    Count,
    /// Columns, rows and orientations: the `spatial` perspective.
    Spatial,
    /// Characters written on objects: the `text` perspective.
    Text,
}

impl TaskGroup {
    /// The name of the demo perspective this group trains
    /// ([`crate::model::demo::DemoConfig::default_perspectives`]).
    pub fn perspective(self) -> &'static str {
        match self {
            TaskGroup::Attributes => "attributes",
            TaskGroup::Count => "count",
            TaskGroup::Spatial => "spatial",
            TaskGroup::Text => "text",
        }
    }
}

/// One scene-level classification.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneTask {
    /// For reports, as "column of the leftmost circle".
    pub name: String,
    /// Number of classes; class 0 is "none in the scene" where the task can have none.
    pub classes: usize,
    /// The perspective it supervises.
    pub group: TaskGroup,
    /// Whether the global embedding's head answers it too (all tasks but the extra text
    /// tasks of [`text_tasks_with`], which stay off the global view).
    pub global: bool,
}

/// Columns of the scene a task tells apart (thirds of the width).
const COLUMNS: usize = 3;
/// Rows of the scene a task tells apart (halves of the height).
const ROWS: usize = 2;
/// Counts 0..=MAX_COUNT are the classes of a count task.
const MAX_COUNT: usize = crate::scenes::labels::MAX_COUNT;

/// Every task, in the order of [`scene_targets`]: per shape, then per colour, then the
/// characters and the number of objects.
pub fn scene_tasks() -> Vec<SceneTask> {
    let mut tasks = Vec::new();
    let mut push = |name: String, classes: usize, group: TaskGroup| {
        tasks.push(SceneTask {
            name,
            classes,
            group,
            global: true,
        });
    };
    for s in Shape::ALL {
        let s = s.name();
        push(format!("{s}s"), MAX_COUNT + 1, TaskGroup::Count);
        push(
            format!("colour of the leftmost {s}"),
            1 + Colour::ALL.len(),
            TaskGroup::Attributes,
        );
        push(
            format!("fill of the leftmost {s}"),
            3,
            TaskGroup::Attributes,
        );
        push(
            format!("column of the leftmost {s}"),
            1 + COLUMNS,
            TaskGroup::Spatial,
        );
        push(
            format!("row of the leftmost {s}"),
            1 + ROWS,
            TaskGroup::Spatial,
        );
    }
    for s in Shape::ALL.into_iter().filter(|s| s.oriented()) {
        push(
            format!("orientation of the leftmost {}", s.name()),
            1 + Orientation::ALL.len(),
            TaskGroup::Spatial,
        );
    }
    for c in Colour::ALL {
        let c = c.name();
        push(format!("{c} objects"), MAX_COUNT + 1, TaskGroup::Count);
        push(
            format!("shape of the leftmost {c} object"),
            1 + Shape::ALL.len(),
            TaskGroup::Attributes,
        );
        push(
            format!("column of the leftmost {c} object"),
            1 + COLUMNS,
            TaskGroup::Spatial,
        );
        push(
            format!("row of the leftmost {c} object"),
            1 + ROWS,
            TaskGroup::Spatial,
        );
    }
    push(
        "characters".into(),
        1 + font::LABEL_CHARS.len(),
        TaskGroup::Text,
    );
    push("objects".into(), MAX_COUNT + 1, TaskGroup::Count);
    tasks
}

fn centre(o: &SceneObject) -> (f32, f32) {
    (
        0.5 * (o.bbox[0] + o.bbox[2]) / SCENE_SIZE as f32,
        0.5 * (o.bbox[1] + o.bbox[3]) / SCENE_SIZE as f32,
    )
}

/// The leftmost of some objects (ties: the upper one), as a person would pick "the circle"
/// among several.
fn leftmost<'a>(objects: impl Iterator<Item = &'a SceneObject>) -> Option<&'a SceneObject> {
    objects.min_by(|a, b| {
        let (ax, ay) = centre(a);
        let (bx, by) = centre(b);
        ax.total_cmp(&bx).then(ay.total_cmp(&by))
    })
}

fn index_of<T: PartialEq>(all: &[T], v: &T) -> u32 {
    all.iter().position(|x| x == v).unwrap_or(0) as u32
}

/// Classes 1..=COLUMNS and 1..=ROWS of where an object's box centre lies (0: none).
fn cell(o: Option<&SceneObject>) -> (u32, u32) {
    o.map_or((0, 0), |o| {
        let (x, y) = centre(o);
        let col = ((x * COLUMNS as f32).floor() as i64).clamp(0, COLUMNS as i64 - 1) as u32;
        let row = ((y * ROWS as f32).floor() as i64).clamp(0, ROWS as i64 - 1) as u32;
        (1 + col, 1 + row)
    })
}

/// The class of every task of [`scene_tasks`] for one scene, read off its metadata.
pub fn scene_targets(scene: &Scene) -> Vec<u32> {
    let objects = &scene.objects;
    let count = |n: usize| n.min(MAX_COUNT) as u32;
    let mut t = Vec::new();
    for s in Shape::ALL {
        let of = || objects.iter().filter(move |o| o.shape == s);
        let first = leftmost(of());
        t.push(count(of().count()));
        t.push(first.map_or(0, |o| 1 + index_of(&Colour::ALL, &o.colour)));
        t.push(first.map_or(0, |o| if o.filled { 1 } else { 2 }));
        let (col, row) = cell(first);
        t.extend([col, row]);
    }
    for s in Shape::ALL.into_iter().filter(|s| s.oriented()) {
        let first = leftmost(objects.iter().filter(|o| o.shape == s));
        t.push(first.map_or(0, |o| 1 + index_of(&Orientation::ALL, &o.orientation)));
    }
    for c in Colour::ALL {
        let of = || objects.iter().filter(move |o| o.colour == c);
        let first = leftmost(of());
        t.push(count(of().count()));
        t.push(first.map_or(0, |o| 1 + index_of(&Shape::ALL, &o.shape)));
        let (col, row) = cell(first);
        t.extend([col, row]);
    }
    let written = leftmost(objects.iter().filter(|o| o.label.is_some()));
    t.push(
        written
            .and_then(|o| o.label)
            .map_or(0, |ch| 1 + index_of(&font::LABEL_CHARS, &ch)),
    );
    t.push(count(objects.len()));
    t
}

/// The tasks of the text heads, in the order of [`text_targets`]: for a text that relates
/// two objects ("a red circle left of a blue square"), the colour and the shape of the
/// object on the left and of the one on the right, or of the upper and the lower one (the
/// slots follow the scene, not the sentence: "X left of Y" and "Y right of X" have the same
/// targets, and the two statements of a position pair differ in all four of their axis);
/// then the first orientation the text names ("pointing up") and the first characters
/// ("the letter q"), the two things an orientation or a text pair's statements differ in.
/// Class 0 of each is "not named in the text".
pub fn text_tasks() -> Vec<SceneTask> {
    text_tasks_with(ExtraTextTasks::default())
}

/// The text tasks beyond [`text_tasks`] a run asks ([`text_tasks_with`]), off the global
/// embedding's head. Off by default, so a run without them has the tasks runs before had.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtraTextTasks {
    /// The fill and colour of the first object named ("filled red", on `attributes`) and
    /// the viewpoint named ("far", on `spatial`): `train --more-text-tasks`.
    pub fill_colour_viewpoint: bool,
    /// The first size named ("small", "large"; on `attributes`): `train --size-text-task`.
    pub size: bool,
    /// The global embedding's head answers the fill-and-colour task too, and the size
    /// task becomes "size and colour of the first object named" (`1 + sizes · colours`
    /// classes) on `attributes` and the global head: `train --text-tasks-on-global`. On
    /// the global head every class names a colour, as a class that texts of every colour
    /// share pulls their colour words together there (README, "Runs with more text tasks
    /// and a longer schedule"); the viewpoint task stays off it for that reason. Whichever
    /// of the fill and size words no global task asked for was all but lost from the
    /// global text embedding in two runs (README, "Runs with the text stage").
    pub on_global: bool,
    /// The number and colour of the first object named ("two … red", "no red", "a …
    /// red"; on `count`, and the global head with `on_global`): `train
    /// --number-text-task`. Quantity pairs' statements differ in the number word.
    pub number: bool,
}

/// [`text_tasks`], and those of `extra`, read off the first words that name them: with
/// `fill_colour_viewpoint` the fill and colour of the first object a text names ("filled
/// red", 18 classes, on the `attributes` text embedding) and the viewpoint ("close up",
/// "far", on `spatial`); with `size`, then, the first size named ("small", "large", on
/// `attributes`). None goes to the global embedding's head unless `on_global`: a cosine head there pulls
/// the texts of one class together whatever else they say, and classes that texts of
/// every colour share ("two", "filled") drew colour words together in earlier runs
/// (README, "Runs with cosine heads and grid positions"). A state pair's two statements
/// differ in the fill word, a viewpoint pair's in the viewpoint word, and the relation
/// tasks alone let both be forgotten; heavy text heads without a size task left the size
/// word all but unread (README, "P-MMVP, retrieval and pointing"), and with one, in one
/// run, the fill word (README, "Runs with the text stage").
pub fn text_tasks_with(extra: ExtraTextTasks) -> Vec<SceneTask> {
    let mut tasks = Vec::new();
    for side in ["left", "right", "upper", "lower"] {
        tasks.push(SceneTask {
            name: format!("colour of the {side} object"),
            classes: 1 + Colour::ALL.len(),
            group: TaskGroup::Spatial,
            global: true,
        });
        tasks.push(SceneTask {
            name: format!("shape of the {side} object"),
            classes: 1 + Shape::ALL.len(),
            group: TaskGroup::Spatial,
            global: true,
        });
    }
    tasks.push(SceneTask {
        name: "orientation named".into(),
        classes: 1 + Orientation::ALL.len(),
        group: TaskGroup::Spatial,
        global: true,
    });
    tasks.push(SceneTask {
        name: "characters named".into(),
        classes: 1 + font::LABEL_CHARS.len(),
        group: TaskGroup::Text,
        global: true,
    });
    if extra.fill_colour_viewpoint {
        tasks.push(SceneTask {
            name: "fill and colour of the first object named".into(),
            classes: 1 + 2 * Colour::ALL.len(),
            group: TaskGroup::Attributes,
            global: extra.on_global,
        });
        tasks.push(SceneTask {
            name: "viewpoint named".into(),
            classes: 1 + Zoom::ALL.len(),
            group: TaskGroup::Spatial,
            global: false,
        });
    }
    if extra.size && extra.on_global {
        tasks.push(SceneTask {
            name: "size and colour of the first object named".into(),
            classes: 1 + Size::ALL.len() * Colour::ALL.len(),
            group: TaskGroup::Attributes,
            global: true,
        });
    } else if extra.size {
        tasks.push(SceneTask {
            name: "size named".into(),
            classes: 1 + Size::ALL.len(),
            group: TaskGroup::Attributes,
            global: false,
        });
    }
    if extra.number {
        tasks.push(SceneTask {
            name: "number and colour of the first object named".into(),
            classes: 1 + (MAX_COUNT + 1) * Colour::ALL.len(),
            group: TaskGroup::Count,
            global: extra.on_global,
        });
    }
    tasks
}

/// The number the words just before a shape word give it: "no" 0, "a", "an" or "one" 1,
/// "two" … "five"; `None` where there is none.
fn number_word(w: &str) -> Option<usize> {
    match w {
        "no" => Some(0),
        "a" | "an" | "one" => Some(1),
        "two" => Some(2),
        "three" => Some(3),
        "four" => Some(4),
        "five" => Some(5),
        _ => None,
    }
}

/// The class of the number task of [`text_tasks_with`]: the first shape word, the colour
/// word right before it, and the nearest number word within the three words before the
/// colour (size and fill may stand between): `1 + number · colours + colour`, 0 where
/// any is missing.
fn number_target(words: &[&str]) -> u32 {
    let Some((at, _, Some(colour))) = shape_named(words, false) else {
        return 0;
    };
    words[at.saturating_sub(4)..at - 1]
        .iter()
        .rev()
        .find_map(|w| number_word(w))
        .map_or(0, |n| {
            1 + (n.min(MAX_COUNT) * Colour::ALL.len() + colour) as u32
        })
}

/// The index in [`Colour::ALL`] of a colour word.
fn colour_word(w: &str) -> Option<usize> {
    Colour::ALL.iter().position(|c| c.name() == w)
}

/// The first (or the `last`) shape word in `words`: its position, its index in
/// [`Shape::ALL`], and the index in [`Colour::ALL`] of the colour word just before it.
fn shape_named(words: &[&str], last: bool) -> Option<(usize, usize, Option<usize>)> {
    let shape_at = |(i, w): (usize, &&str)| {
        Shape::ALL
            .iter()
            .position(|s| s.name() == *w || s.plural() == *w)
            .map(|k| (i, k))
    };
    let (at, k) = if last {
        words.iter().enumerate().rev().find_map(shape_at)
    } else {
        words.iter().enumerate().find_map(shape_at)
    }?;
    let colour = at
        .checked_sub(1)
        .and_then(|i| words.get(i))
        .and_then(|w| colour_word(w));
    Some((at, k, colour))
}

/// (colour, shape) classes of the first (or the `last`) shape named in `words` and the
/// colour word just before it (0: not named).
fn named(words: &[&str], last: bool) -> (u32, u32) {
    shape_named(words, last).map_or((0, 0), |(_, k, colour)| {
        (colour.map_or(0, |c| 1 + c as u32), 1 + k as u32)
    })
}

/// The class of every task of [`text_tasks`] for one text of the scene grammar
/// ([`crate::scenes::caption`], the MMVP statements). The relation slots read its first
/// relation ("left of", "right of", "above", "below"; "pointing left" is an orientation,
/// not a relation), the last object named before it and the first one named after it; a
/// text without a relation, or whose objects name no shape, gets class 0 there. The
/// orientation slot reads the first word after "pointing", the characters slot the first
/// one after "letter" or "digit" (0 where there is none, or it names no orientation or
/// character).
pub fn text_targets(text: &str) -> Vec<u32> {
    text_targets_with(text, ExtraTextTasks::default())
}

/// The targets of [`text_tasks_with`]`(extra)`: those of [`text_targets`], then with
/// `fill_colour_viewpoint` the first fill word ("filled", "outlined") with the colour word
/// right after it (class `1 + 2·colour + fill`; 0 where either is missing) and the first
/// viewpoint word ("close up", "far"), then with `size` the first size word (class
/// `1 + size`; 0 where there is none), or with `size` and `on_global` that word with the
/// colour word one or two words after it ("small filled red": class
/// `1 + size · colours + colour`; 0 where either is missing), then with `number` the
/// number and colour of the first object named ([`number_target`]).
pub fn text_targets_with(text: &str, extra: ExtraTextTasks) -> Vec<u32> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut t = vec![0; 10];
    t[..8].copy_from_slice(&relation_targets(&words));
    let after = |keys: &[&str]| {
        words
            .windows(2)
            .find(|w| keys.contains(&w[0]))
            .map(|w| w[1])
    };
    t[8] = after(&["pointing"])
        .and_then(|w| Orientation::ALL.iter().position(|o| o.name() == w))
        .map_or(0, |i| 1 + i as u32);
    t[9] = after(&["letter", "digit"])
        .and_then(|w| {
            let mut chars = w.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => Some(c.to_ascii_uppercase()),
                _ => None,
            }
        })
        .and_then(|c| font::LABEL_CHARS.iter().position(|&x| x == c))
        .map_or(0, |i| 1 + i as u32);
    if extra.fill_colour_viewpoint {
        let fill_colour = words.windows(2).find_map(|w| {
            let fill = ["filled", "outlined"].iter().position(|f| *f == w[0])?;
            let colour = colour_word(w[1])?;
            Some(1 + (2 * colour + fill) as u32)
        });
        t.push(fill_colour.unwrap_or(0));
        // "close up" or "far": the phrase's first word.
        let zoom = words.iter().find_map(|w| {
            Zoom::ALL
                .iter()
                .position(|z| z.phrase().split(' ').next() == Some(*w))
        });
        t.push(zoom.map_or(0, |z| 1 + z as u32));
    }
    if extra.size {
        let at = words.iter().enumerate().find_map(|(i, w)| {
            Size::ALL
                .iter()
                .position(|z| z.name() == *w)
                .map(|z| (i, z))
        });
        let class = if extra.on_global {
            // The colour word one or two words on: "small red", "small filled red".
            at.and_then(|(i, size)| {
                let colour = words
                    .iter()
                    .skip(i + 1)
                    .take(2)
                    .find_map(|w| colour_word(w))?;
                Some(1 + (size * Colour::ALL.len() + colour) as u32)
            })
        } else {
            at.map(|(_, size)| 1 + size as u32)
        };
        t.push(class.unwrap_or(0));
    }
    if extra.number {
        t.push(number_target(&words));
    }
    t
}

/// The eight relation slots of [`text_targets`].
fn relation_targets(words: &[&str]) -> [u32; 8] {
    let mut t = [0; 8];
    let found = (0..words.len()).find_map(|i| match (words[i], words.get(i + 1)) {
        ("left", Some(&"of")) => Some((i, 2, 0, false)),
        ("right", Some(&"of")) => Some((i, 2, 0, true)),
        ("above", _) => Some((i, 1, 4, false)),
        ("below", _) => Some((i, 1, 4, true)),
        _ => None,
    });
    let Some((at, len, slot, swapped)) = found else {
        return t;
    };
    // The last shape named before the relation and the first one after it, each within
    // its phrase (phrases are joined by "and").
    let before = &words[..at];
    let from = before
        .iter()
        .rposition(|w| *w == "and")
        .map_or(0, |i| i + 1);
    let x = named(&before[from..], true);
    let after = &words[at + len..];
    let to = after
        .iter()
        .position(|w| *w == "and")
        .unwrap_or(after.len());
    let y = named(&after[..to], false);
    if x.1 == 0 || y.1 == 0 {
        return t;
    }
    let (first, second) = if swapped { (y, x) } else { (x, y) };
    t[slot..slot + 4].copy_from_slice(&[first.0, first.1, second.0, second.1]);
    t
}

/// The linear classifier on one perspective's embedding.
struct Head {
    /// Index of the perspective along the embedding's middle axis.
    perspective: usize,
    /// Its name, for variable names.
    name: String,
    /// The tasks it answers (indices into the task list), and each one's first logit.
    tasks: Vec<(usize, usize)>,
    /// `[logits, d]`.
    weight: Var,
    /// `[logits]`.
    bias: Var,
}

/// What one batch's heads scored.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeadsLoss {
    /// Mean cross-entropy, not yet weighted.
    pub loss: f64,
    /// Share of (image, task) answers of the global head that were right.
    pub accuracy: f64,
}

/// The linear heads of a run ([module docs](self)): one per perspective that has tasks,
/// on the image embeddings ([`SceneHeads::new`]) or on the text embeddings
/// ([`SceneHeads::for_text`]).
pub struct SceneHeads {
    tasks: Vec<SceneTask>,
    heads: Vec<Head>,
    /// First part of the variables' names: `heads` (images) or `text_heads`.
    prefix: &'static str,
    /// Their file beside a run's checkpoint: [`HEADS_FILE`] or [`TEXT_HEADS_FILE`].
    file: &'static str,
    /// `Some(s)`: cosine classifiers at scale `s` ([`SceneHeads::cosine`]); `None`: linear.
    scale: Option<f64>,
    /// Class 0 means "not named" (text heads), not "none there" (image heads).
    zero_is_unnamed: bool,
    /// Text heads only: the extra tasks of [`text_tasks_with`] that are on.
    extra: ExtraTextTasks,
}

/// The image heads' file beside a run's checkpoint.
pub const HEADS_FILE: &str = "heads.safetensors";
/// The text heads' file beside a run's checkpoint.
pub const TEXT_HEADS_FILE: &str = "text_heads.safetensors";

impl SceneHeads {
    /// Zero-initialised image heads (uniform answers) for `perspectives` on `dim`-wide
    /// embeddings, answering [`scene_tasks`]: the global one gets every task, a fine
    /// perspective the tasks of the group of its name, another name none.
    ///
    /// # Errors
    /// Allocating the weights.
    pub fn new(
        perspectives: &PerspectiveSet,
        dim: usize,
        device: &Device,
    ) -> Result<Self, TrainError> {
        Self::build(
            scene_tasks(),
            ("heads", HEADS_FILE, false),
            perspectives,
            dim,
            device,
        )
    }

    /// Zero-initialised text heads answering [`text_tasks`] from the text embeddings: the
    /// global one every task, the `spatial` and `text` perspectives those of their group.
    ///
    /// # Errors
    /// Allocating the weights.
    pub fn for_text(
        perspectives: &PerspectiveSet,
        dim: usize,
        device: &Device,
    ) -> Result<Self, TrainError> {
        Self::for_text_with(perspectives, dim, device, ExtraTextTasks::default())
    }

    /// [`SceneHeads::for_text`], answering [`text_tasks_with`]`(extra)`.
    ///
    /// # Errors
    /// Allocating the weights.
    pub fn for_text_with(
        perspectives: &PerspectiveSet,
        dim: usize,
        device: &Device,
        extra: ExtraTextTasks,
    ) -> Result<Self, TrainError> {
        let mut heads = Self::build(
            text_tasks_with(extra),
            ("text_heads", TEXT_HEADS_FILE, true),
            perspectives,
            dim,
            device,
        )?;
        heads.extra = extra;
        Ok(heads)
    }

    fn build(
        tasks: Vec<SceneTask>,
        (prefix, file, zero_is_unnamed): (&'static str, &'static str, bool),
        perspectives: &PerspectiveSet,
        dim: usize,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let mut heads = Vec::new();
        for (p, perspective) in perspectives.perspectives.iter().enumerate() {
            let mine: Vec<usize> = (0..tasks.len())
                .filter(|&i| {
                    (p == 0 && tasks[i].global) || tasks[i].group.perspective() == perspective.name
                })
                .collect();
            if mine.is_empty() {
                continue;
            }
            let mut offset = 0;
            let with_offsets: Vec<(usize, usize)> = mine
                .iter()
                .map(|&i| {
                    let at = offset;
                    offset += tasks[i].classes;
                    (i, at)
                })
                .collect();
            heads.push(Head {
                perspective: p,
                name: perspective.name.clone(),
                tasks: with_offsets,
                weight: Var::zeros((offset, dim), DType::F32, device)?,
                bias: Var::zeros(offset, DType::F32, device)?,
            });
        }
        Ok(Self {
            tasks,
            heads,
            prefix,
            file,
            scale: None,
            zero_is_unnamed,
            extra: ExtraTextTasks::default(),
        })
    }

    /// The same heads as cosine classifiers (NormFace, Wang et al. 2017): class `c`'s logit
    /// is `scale · cos(e, w_c) + b_c` instead of `e · w_c + b_c`. A linear head can answer
    /// from a difference of a hair between two embeddings by growing its weights (the text
    /// heads of the committed weights read the left and right object of a position pair's
    /// two statements, whose embeddings keep a cosine of 0.9996); a cosine head cannot, so
    /// telling two classes apart asks for embeddings whose directions differ by a margin on
    /// the order of `1 / scale`. The weights start as seeded random rows (a zero row has no
    /// direction); the biases at zero.
    ///
    /// Cosine text heads leave a text out of a task's loss where the text does not name
    /// what the task asks (class 0): asked to answer "not named" for most texts, a cosine
    /// head pulls them all towards one direction. A run that kept them lost colour words:
    /// "a red circle" and "a blue circle" reached a cosine of 1.0000 by step 2,100, and
    /// colour pairs fell to 0 % (the linear heads' run: 86.7 %).
    ///
    /// # Errors
    /// [`TrainError::Config`] for a scale that is not positive and finite; allocating the
    /// weights.
    pub fn cosine(mut self, scale: f64, seed: u64) -> Result<Self, TrainError> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(TrainError::Config(format!(
                "a cosine head's scale must be positive, got {scale}"
            )));
        }
        for (i, head) in self.heads.iter().enumerate() {
            let (rows, dim) = head.weight.dims2()?;
            let values = SplitMix64::new(derive_seed(seed, i as u64)).uniform_pm1(rows * dim);
            let device = head.weight.device();
            head.weight
                .set(&Tensor::from_vec(values, (rows, dim), device)?)?;
        }
        self.scale = Some(scale);
        Ok(self)
    }

    /// Whether a task's loss leaves out rows of class 0: cosine text heads only
    /// ([`SceneHeads::cosine`]).
    fn skips_unnamed(&self) -> bool {
        self.zero_is_unnamed && self.scale.is_some()
    }

    /// The trainable variables, named `heads.<perspective>.weight|bias` (image heads) or
    /// `text_heads.…`, for the optimiser (no weight decay).
    pub fn vars(&self) -> Vec<(String, Var, bool)> {
        self.heads
            .iter()
            .flat_map(|h| {
                [
                    (
                        format!("{}.{}.weight", self.prefix, h.name),
                        h.weight.clone(),
                        false,
                    ),
                    (
                        format!("{}.{}.bias", self.prefix, h.name),
                        h.bias.clone(),
                        false,
                    ),
                ]
            })
            .collect()
    }

    /// The file beside a run's checkpoint that holds these heads: [`HEADS_FILE`] or
    /// [`TEXT_HEADS_FILE`].
    pub fn file_name(&self) -> &'static str {
        self.file
    }

    /// The image heads' loss on raw image embeddings `[n, 1+K, d]` of `scenes` (same
    /// order), and what it scored. The loss is differentiable in the embeddings and the
    /// heads.
    ///
    /// # Errors
    /// A shape that does not fit the heads, or a tensor operation.
    pub fn loss(
        &self,
        image: &Tensor,
        scenes: &[&Scene],
    ) -> Result<(Tensor, HeadsLoss), TrainError> {
        let targets: Vec<Vec<u32>> = scenes.iter().map(|s| scene_targets(s)).collect();
        self.loss_on(image, &targets)
    }

    /// The text heads' loss on raw text embeddings `[n, 1+K, d]` of `texts` (same order),
    /// with the targets of [`text_targets`].
    ///
    /// # Errors
    /// As [`SceneHeads::loss`].
    pub fn text_loss(
        &self,
        text: &Tensor,
        texts: &[&str],
    ) -> Result<(Tensor, HeadsLoss), TrainError> {
        let targets: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| text_targets_with(t, self.extra))
            .collect();
        self.loss_on(text, &targets)
    }

    /// The mean cross-entropy of every head over its tasks, averaged over the heads, on
    /// raw embeddings `[n, 1+K, d]` with one target list per row (in the order of the
    /// heads' task list). Cosine text heads count a task's rows of class 1 and up only,
    /// and the tasks and heads that have such rows (0 when none has).
    fn loss_on(
        &self,
        raw: &Tensor,
        targets: &[Vec<u32>],
    ) -> Result<(Tensor, HeadsLoss), TrainError> {
        let unit = PerspectiveEmbeddings::from_raw(raw.clone())?;
        let unit = unit.tensor();
        let device = unit.device();
        let mut total: Option<Tensor> = None;
        let mut right = 0usize;
        let mut asked = 0usize;
        let mut heads_counted = 0usize;
        let skip_unnamed = self.skips_unnamed();
        for head in &self.heads {
            let e = unit.narrow(1, head.perspective, 1)?.squeeze(1)?;
            let w = head.weight.as_tensor();
            let w = match self.scale {
                Some(scale) => {
                    let norm = w.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-6, f64::MAX)?;
                    (w.broadcast_div(&norm)? * scale)?
                }
                None => w.clone(),
            };
            let logits = e.matmul(&w.t()?)?.broadcast_add(head.bias.as_tensor())?;
            let mut sum: Option<Tensor> = None;
            let mut counted = 0usize;
            for &(task, at) in &head.tasks {
                let classes = self.tasks[task].classes;
                let rows: Vec<u32> = (0..targets.len())
                    .filter(|&r| !skip_unnamed || targets[r][task] > 0)
                    .map(|r| r as u32)
                    .collect();
                if rows.is_empty() {
                    continue;
                }
                let labels: Vec<u32> = rows.iter().map(|&r| targets[r as usize][task]).collect();
                let mut slice = logits.narrow(1, at, classes)?;
                if rows.len() < targets.len() {
                    slice = slice
                        .contiguous()?
                        .index_select(&Tensor::new(rows.as_slice(), device)?, 0)?;
                }
                let labels_t = Tensor::new(labels.as_slice(), device)?;
                let ce = candle_nn::loss::cross_entropy(&slice, &labels_t)?;
                sum = Some(match sum {
                    Some(s) => (s + ce)?,
                    None => ce,
                });
                counted += 1;
                if head.perspective == 0 {
                    let guess = slice.argmax(D::Minus1)?.to_vec1::<u32>()?;
                    right += guess.iter().zip(&labels).filter(|(g, l)| g == l).count();
                    asked += labels.len();
                }
            }
            if let Some(s) = sum {
                let mean = (s / counted as f64)?;
                total = Some(match total {
                    Some(t) => (t + mean)?,
                    None => mean,
                });
                heads_counted += 1;
            }
        }
        let loss = match total {
            Some(t) => (t / heads_counted as f64)?,
            None => Tensor::zeros((), DType::F32, device)?,
        };
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        Ok((
            loss,
            HeadsLoss {
                loss: value,
                accuracy: right as f64 / asked.max(1) as f64,
            },
        ))
    }

    /// Writes the heads' weights to `path` (safetensors).
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] when they cannot be serialised, [`TrainError::Io`] when
    /// the file cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let map: HashMap<String, Tensor> = self
            .vars()
            .into_iter()
            .map(|(name, var, _)| (name, var.as_tensor().clone()))
            .collect();
        super::write_tensors(path, &map)
    }

    /// Restores what [`SceneHeads::save`] wrote.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] when the file cannot be read or lacks a head, or a
    /// head's shape differs.
    pub fn load(&mut self, path: &Path) -> Result<(), TrainError> {
        let bad = |what: String| TrainError::Checkpoint(format!("{}: {what}", path.display()));
        let device = self
            .heads
            .first()
            .map_or(Device::Cpu, |h| h.weight.device().clone());
        let map = candle_core::safetensors::load(path, &device)
            .map_err(|e| bad(format!("cannot read the scene heads: {e}")))?;
        for (name, var, _) in self.vars() {
            let t = map
                .get(&name)
                .ok_or_else(|| bad(format!("no tensor {name}")))?;
            if t.dims() != var.dims() {
                return Err(bad(format!(
                    "{name} has shape {:?}, the run expects {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(t)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenes::{MmvpPattern, ScenePair, SceneRng};

    /// The tasks (indices into the task list) the head on perspective `name` answers.
    fn tasks_of(heads: &SceneHeads, name: &str) -> Vec<usize> {
        heads
            .heads
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.tasks.iter().map(|t| t.0).collect())
            .unwrap_or_default()
    }

    /// The heads' loss on fixed embeddings before and after 30 AdamW steps.
    fn fit(heads: &SceneHeads, image: &Tensor, scenes: &[&Scene]) -> (HeadsLoss, HeadsLoss) {
        let (_, first) = heads.loss(image, scenes).unwrap();
        let mut optim = super::super::optim::AdamW::new(heads.vars(), 0.0);
        for _ in 0..30 {
            let (loss, _) = heads.loss(image, scenes).unwrap();
            optim.step(&loss.backward().unwrap(), 0.05, 1.0).unwrap();
        }
        let (_, last) = heads.loss(image, scenes).unwrap();
        (first, last)
    }

    fn differing(a: &Scene, b: &Scene) -> Vec<SceneTask> {
        let (ta, tb) = (scene_targets(a), scene_targets(b));
        scene_tasks()
            .into_iter()
            .zip(ta.iter().zip(&tb))
            .filter(|(_, (x, y))| x != y)
            .map(|(t, _)| t)
            .collect()
    }

    #[test]
    fn targets_fit_their_tasks_and_read_the_metadata() {
        let tasks = scene_tasks();
        let mut rng = SceneRng::new(7);
        for _ in 0..200 {
            let scene = Scene::random(&mut rng);
            let t = scene_targets(&scene);
            assert_eq!(t.len(), tasks.len());
            for (task, class) in tasks.iter().zip(&t) {
                assert!((*class as usize) < task.classes, "{}: {class}", task.name);
            }
            let objects = tasks.iter().position(|t| t.name == "objects").unwrap();
            assert_eq!(t[objects] as usize, scene.objects.len());
            for s in Shape::ALL {
                let i = tasks
                    .iter()
                    .position(|t| t.name == format!("{}s", s.name()))
                    .unwrap();
                let n = scene.objects.iter().filter(|o| o.shape == s).count();
                assert_eq!(t[i] as usize, n, "{}", s.name());
            }
        }
    }

    /// The targets see what a minimal pair changes: a position pair moves a column, a
    /// quantity pair a count, a colour pair a colour. A head can only learn to tell the
    /// two images apart where their targets differ.
    #[test]
    fn minimal_pairs_differ_in_the_targets_of_their_pattern() {
        let mut rng = SceneRng::new(11);
        let column = |t: &SceneTask| t.name.starts_with("column of");
        let count = |t: &SceneTask| t.group == TaskGroup::Count;
        // A recoloured object changes the counts of its old and new colour, and the
        // colour of its shape's leftmost when it is that one.
        let colour = |t: &SceneTask| {
            t.name.starts_with("colour of")
                || Colour::ALL
                    .iter()
                    .any(|c| t.name == format!("{} objects", c.name()))
        };
        let characters = |t: &SceneTask| t.name == "characters";
        type Changed<'a> = &'a dyn Fn(&SceneTask) -> bool;
        let checks: [(MmvpPattern, Changed); 4] = [
            (MmvpPattern::Position, &column),
            (MmvpPattern::Quantity, &count),
            (MmvpPattern::Colour, &colour),
            (MmvpPattern::Text, &characters),
        ];
        for (pattern, changed) in checks {
            let mut hits = 0;
            for _ in 0..20 {
                let pair = ScenePair::generate(pattern, &mut rng);
                if differing(&pair.a, &pair.b).iter().any(changed) {
                    hits += 1;
                }
            }
            assert_eq!(hits, 20, "{}: {hits} of 20 pairs", pattern.name());
        }
    }

    /// The text targets follow the scene: a relation and its converse agree, a position
    /// pair's two statements differ, orientations and labels are not relations, and the
    /// captions of random scenes are read (most name a relation, every target fits).
    #[test]
    fn text_targets_read_relations_in_scene_order() {
        let tasks = text_tasks();
        let class = |name: &str, what: &str| {
            let task = tasks.iter().find(|t| t.name == name).unwrap();
            let all: Vec<&str> = if name.starts_with("colour") {
                Colour::ALL.iter().map(|c| c.name()).collect()
            } else {
                Shape::ALL.iter().map(|s| s.name()).collect()
            };
            assert!(all.len() < task.classes);
            1 + all.iter().position(|w| *w == what).unwrap() as u32
        };
        let left = text_targets("a small red circle left of a large blue square");
        assert_eq!(
            left[..4],
            [
                class("colour of the left object", "red"),
                class("shape of the left object", "circle"),
                class("colour of the right object", "blue"),
                class("shape of the right object", "square"),
            ]
        );
        assert_eq!(left[4..8], [0, 0, 0, 0]);
        assert_eq!(
            text_targets("a blue square right of a red circle"),
            left,
            "a relation and its converse"
        );
        assert_ne!(
            text_targets("a small red circle right of a large blue square"),
            left
        );
        let below = text_targets(
            "a far view of a snow scene with two small outlined green arrows pointing left \
             with letter b below a black triangle pointing up and a red star",
        );
        assert_eq!(
            below[4..8],
            [
                class("colour of the upper object", "black"),
                class("shape of the upper object", "triangle"),
                class("colour of the lower object", "green"),
                class("shape of the lower object", "arrow"),
            ]
        );
        assert_eq!(below[..4], [0, 0, 0, 0]);
        assert_eq!(
            text_targets("a red arrow pointing left")[..8],
            [0; 8],
            "an orientation is not a relation"
        );
        for none in [
            "a scene with no red circle",
            "a small filled green cross",
            "",
        ] {
            assert_eq!(text_targets(none), vec![0; tasks.len()], "{none}");
        }

        let mut rng = SceneRng::new(5);
        let mut related = 0;
        for _ in 0..200 {
            let scene = Scene::random(&mut rng);
            let t = text_targets(&crate::scenes::caption::caption(&scene));
            for (task, c) in tasks.iter().zip(&t) {
                assert!((*c as usize) < task.classes, "{}: {c}", task.name);
            }
            related += usize::from(t.iter().any(|&c| c > 0));
        }
        assert!(related > 100, "{related} of 200 captions read as relations");
        let mut differ = 0;
        for _ in 0..20 {
            let pair = ScenePair::generate(MmvpPattern::Position, &mut rng);
            let [a, b] = &pair.statements;
            differ += usize::from(text_targets(a) != text_targets(b));
        }
        assert_eq!(differ, 20, "position pairs whose statements differ");
    }

    /// The orientation and characters slots read the word after "pointing" and after
    /// "letter"/"digit", and the two statements of every orientation and text pair differ
    /// there.
    #[test]
    fn text_targets_read_orientations_and_characters() {
        let tasks = text_tasks();
        let slot = |name: &str| tasks.iter().position(|t| t.name == name).unwrap();
        let (orientation, characters) = (slot("orientation named"), slot("characters named"));
        let oriented = |o: Orientation| 1 + index_of(&Orientation::ALL, &o);
        let written = |c: char| 1 + index_of(&font::LABEL_CHARS, &c);
        let t = text_targets("a red arrow pointing left");
        assert_eq!(t[orientation], oriented(Orientation::Left));
        assert_eq!(t[characters], 0);
        let t = text_targets(
            "a large filled blue square with the letter q and a triangle pointing down",
        );
        assert_eq!(t[orientation], oriented(Orientation::Down));
        assert_eq!(t[characters], written('Q'));
        assert_eq!(
            text_targets("a sign with the digit 7")[characters],
            written('7')
        );
        for unread in [
            "a red arrow pointing",
            "the letter qq",
            "a pointing star",
            "a sign with the letter",
        ] {
            let t = text_targets(unread);
            assert_eq!((t[orientation], t[characters]), (0, 0), "{unread}");
        }

        let mut rng = SceneRng::new(9);
        for (pattern, at) in [
            (MmvpPattern::Orientation, orientation),
            (MmvpPattern::Text, characters),
        ] {
            for _ in 0..20 {
                let pair = ScenePair::generate(pattern, &mut rng);
                let [a, b] = &pair.statements;
                let (ta, tb) = (text_targets(a), text_targets(b));
                assert!(ta[at] > 0 && tb[at] > 0 && ta[at] != tb[at], "{a} / {b}");
            }
        }
    }

    /// A cosine head's logits depend on its weights' directions only, so scaling the
    /// weights leaves its loss as it was (where a linear head's changes); its seeded start
    /// is the same for the same seed; it learns; a scale that is not positive is refused.
    #[test]
    fn cosine_heads_answer_from_directions_only() {
        let dev = Device::Cpu;
        let set = crate::model::demo::DemoConfig::default_perspectives(1);
        let mut rng = SceneRng::new(4);
        let scenes: Vec<Scene> = (0..6).map(|_| Scene::random(&mut rng)).collect();
        let refs: Vec<&Scene> = scenes.iter().collect();
        let image = Tensor::randn(0f32, 1.0, (6, 2, 16), &dev).unwrap();
        let scaled_loss = |heads: &SceneHeads| {
            let before = heads.loss(&image, &refs).unwrap().1.loss;
            for h in &heads.heads {
                let w = (h.weight.as_tensor() * 7.0).unwrap();
                h.weight.set(&w).unwrap();
            }
            (before, heads.loss(&image, &refs).unwrap().1.loss)
        };
        let cosine = SceneHeads::new(&set, 16, &dev)
            .unwrap()
            .cosine(10.0, 1)
            .unwrap();
        let (before, after) = scaled_loss(&cosine);
        assert!((before - after).abs() < 1e-5, "{before} → {after}");
        let linear = SceneHeads::new(&set, 16, &dev)
            .unwrap()
            .cosine(10.0, 1)
            .unwrap();
        let linear = SceneHeads {
            scale: None,
            ..linear
        };
        let (before, after) = scaled_loss(&linear);
        assert!((before - after).abs() > 1e-2, "{before} → {after}");

        let made = |seed: u64| {
            SceneHeads::new(&set, 16, &dev)
                .unwrap()
                .cosine(10.0, seed)
                .unwrap()
        };
        let weights = |h: &SceneHeads| h.heads[0].weight.as_tensor().to_vec2::<f32>().unwrap();
        assert_eq!(weights(&made(1)), weights(&made(1)));
        assert_ne!(weights(&made(1)), weights(&made(2)));

        // It learns: a few steps on fixed embeddings lower its loss.
        let heads = made(3);
        let (first, last) = fit(&heads, &image, &refs);
        assert!(
            last.loss < 0.7 * first.loss,
            "{} → {}",
            first.loss,
            last.loss
        );
        for bad in [0.0, -1.0, f64::NAN] {
            let err = SceneHeads::new(&set, 16, &dev).unwrap().cosine(bad, 1);
            assert!(matches!(err, Err(TrainError::Config(_))), "{bad}");
        }
    }

    /// The extra text tasks' targets (fill and colour, viewpoint, size), which pairs'
    /// statements they tell apart, and which heads answer them (not the global one).
    #[test]
    fn the_extra_text_tasks_read_fill_colour_viewpoint_and_size_off_the_global_head() {
        let red = Colour::ALL.iter().position(|c| *c == Colour::Red).unwrap() as u32;
        let at = |z: Zoom| 1 + Zoom::ALL.iter().position(|x| *x == z).unwrap() as u32;
        let more = ExtraTextTasks {
            fill_colour_viewpoint: true,
            size: false,
            on_global: false,
            number: false,
        };
        let all = ExtraTextTasks { size: true, ..more };
        let extra = |t: &str| text_targets_with(t, more)[10..].to_vec();
        assert_eq!(extra("a filled red circle"), [1 + 2 * red, 0]);
        assert_eq!(extra("an outlined red circle"), [2 + 2 * red, 0]);
        assert_eq!(extra("a far view"), [0, at(Zoom::Far)]);
        assert_eq!(extra("a close up view"), [0, at(Zoom::Near)]);
        assert_eq!(extra("a red circle"), [0, 0]);
        // Without them, the targets and tasks are the ones runs before had.
        let plain = "a far view of a beach scene with a small filled red circle";
        let none = ExtraTextTasks::default();
        assert_eq!(text_targets_with(plain, none), text_targets(plain));
        assert_eq!(text_tasks_with(none), text_tasks());
        assert_eq!(text_tasks_with(more).len(), text_tasks().len() + 2);
        // The size task comes after them, and alone reads only the size word.
        assert_eq!(text_tasks_with(all).len(), text_tasks().len() + 3);
        let small = 1 + Size::ALL.iter().position(|z| *z == Size::Small).unwrap() as u32;
        let large = 1 + Size::ALL.iter().position(|z| *z == Size::Large).unwrap() as u32;
        assert_ne!(small, large);
        assert_eq!(
            text_targets_with(plain, all)[10..],
            [1 + 2 * red, at(Zoom::Far), small]
        );
        let size_only = ExtraTextTasks { size: true, ..none };
        assert_eq!(
            text_targets_with("a large outlined red circle", size_only)[10..],
            [large]
        );
        assert_eq!(text_targets_with("a red circle", size_only)[10..], [0]);
        // A state pair's statements differ in the fill task, a viewpoint pair's in the
        // viewpoint task.
        let mut rng = SceneRng::new(11);
        for (pattern, task) in [(MmvpPattern::State, 10), (MmvpPattern::Viewpoint, 11)] {
            for _ in 0..10 {
                let [a, b] = ScenePair::generate(pattern, &mut rng).statements;
                let (ta, tb) = (text_targets_with(&a, more), text_targets_with(&b, more));
                assert!(
                    ta[task] > 0 && tb[task] > 0 && ta[task] != tb[task],
                    "{a} / {b}"
                );
            }
        }
        // The global head does not answer them; `attributes` and `spatial` do.
        let set = crate::model::demo::DemoConfig::default_perspectives(4);
        let heads = SceneHeads::for_text_with(&set, 8, &Device::Cpu, all).unwrap();
        let tasks_of = |name: &str| tasks_of(&heads, name);
        for task in [10, 11, 12] {
            assert!(!tasks_of("global").contains(&task), "{task}");
        }
        assert_eq!(tasks_of("attributes"), [10, 12]);
        assert!(tasks_of("spatial").contains(&11));
        let raw = Tensor::randn(0f32, 1.0, (3, 5, 8), &Device::Cpu).unwrap();
        let (_, scored) = heads
            .text_loss(
                &raw,
                &["a filled red circle", "a far view", "a small circle"],
            )
            .unwrap();
        assert!(scored.loss > 0.0 && scored.loss.is_finite());
    }

    /// With `on_global`, the global head answers fill-and-colour and a size-and-colour
    /// task (every class naming a colour), and still not the viewpoint.
    #[test]
    fn on_the_global_head_the_size_task_names_the_colour_too() {
        let colours = Colour::ALL.len() as u32;
        let colour = |c: Colour| Colour::ALL.iter().position(|x| *x == c).unwrap() as u32;
        let size = |z: Size| Size::ALL.iter().position(|x| *x == z).unwrap() as u32;
        let extra = ExtraTextTasks {
            fill_colour_viewpoint: true,
            size: true,
            on_global: true,
            number: false,
        };
        let tasks = text_tasks_with(extra);
        assert_eq!(tasks.len(), text_tasks().len() + 3);
        assert_eq!(tasks[12].classes, 1 + Size::ALL.len() * Colour::ALL.len());
        assert!(tasks[10].global && !tasks[11].global && tasks[12].global);
        let size_colour = |t: &str| text_targets_with(t, extra)[12];
        let small_green = 1 + size(Size::Small) * colours + colour(Colour::Green);
        assert_eq!(size_colour("a small filled green cross"), small_green);
        assert_eq!(size_colour("two small green crosses"), small_green);
        assert_ne!(size_colour("a large filled green cross"), small_green);
        assert_ne!(size_colour("a small filled red cross"), small_green);
        // No size, or no colour near it: not named.
        assert_eq!(size_colour("a filled green cross"), 0);
        assert_eq!(size_colour("a small thing left of a green cross"), 0);
        let set = crate::model::demo::DemoConfig::default_perspectives(4);
        let heads = SceneHeads::for_text_with(&set, 8, &Device::Cpu, extra).unwrap();
        let of = |name: &str| tasks_of(&heads, name);
        assert!(of("global").contains(&10) && of("global").contains(&12));
        assert!(!of("global").contains(&11));
        assert_eq!(of("attributes"), [10, 12]);
    }

    /// The number task reads the number and colour of the first object named, and tells a
    /// quantity pair's statements apart.
    #[test]
    fn the_number_task_reads_number_and_colour_of_the_first_object() {
        let colours = Colour::ALL.len() as u32;
        let red = Colour::ALL.iter().position(|c| *c == Colour::Red).unwrap() as u32;
        let extra = ExtraTextTasks {
            number: true,
            ..ExtraTextTasks::default()
        };
        let number = |t: &str| text_targets_with(t, extra)[10];
        assert_eq!(number("two red circles"), 1 + 2 * colours + red);
        assert_eq!(number("a scene with no red circle"), 1 + red);
        assert_eq!(number("a small filled red circle"), 1 + colours + red);
        assert_eq!(
            number(
                "a far view of a beach scene with three large outlined red stars left of a blue circle"
            ),
            1 + 3 * colours + red
        );
        // No colour right before the shape, or no number word near it.
        assert_eq!(number("two circles"), 0);
        assert_eq!(number("red circle"), 0);
        assert_eq!(number("a far view"), 0);
        let tasks = text_tasks_with(extra);
        assert_eq!(tasks.len(), text_tasks().len() + 1);
        assert_eq!(tasks[10].group, TaskGroup::Count);
        assert!(!tasks[10].global);
        assert!(
            text_tasks_with(ExtraTextTasks {
                on_global: true,
                ..extra
            })[10]
                .global
        );
        let mut rng = SceneRng::new(5);
        for _ in 0..10 {
            let [a, b] = ScenePair::generate(MmvpPattern::Quantity, &mut rng).statements;
            let (ta, tb) = (number(&a), number(&b));
            assert!(ta > 0 && tb > 0 && ta != tb, "{a} / {b}");
        }
    }

    /// Cosine text heads leave out texts that do not name a task's thing: a batch of such
    /// texts costs nothing (linear heads ask it for "none"), and adding one to a batch
    /// changes nothing.
    #[test]
    fn cosine_text_heads_skip_what_a_text_does_not_name() {
        let dev = Device::Cpu;
        let set = crate::model::demo::DemoConfig::default_perspectives(4);
        let cosine = SceneHeads::for_text(&set, 16, &dev)
            .unwrap()
            .cosine(10.0, 1)
            .unwrap();
        let raw = Tensor::randn(0f32, 1.0, (2, 5, 16), &dev).unwrap();
        let unnamed = ["a red circle", "two blue squares"];
        let (_, none) = cosine.text_loss(&raw, &unnamed).unwrap();
        assert_eq!(none.loss, 0.0);
        let linear = SceneHeads::for_text(&set, 16, &dev).unwrap();
        assert!(linear.text_loss(&raw, &unnamed).unwrap().1.loss > 0.1);

        let named = "a red arrow pointing up left of a blue square";
        let (_, mixed) = cosine.text_loss(&raw, &["a red circle", named]).unwrap();
        let alone = raw.narrow(0, 1, 1).unwrap();
        let (_, single) = cosine.text_loss(&alone, &[named]).unwrap();
        assert!(mixed.loss > 0.0);
        assert!(
            (mixed.loss - single.loss).abs() < 1e-6,
            "{mixed:?} {single:?}"
        );
        // Image heads keep class 0: "no circle" is a fact about a scene.
        let image = SceneHeads::new(&set, 16, &dev)
            .unwrap()
            .cosine(10.0, 1)
            .unwrap();
        assert!(!image.skips_unnamed());
    }

    #[test]
    fn each_fine_perspective_gets_its_group_and_the_global_one_all() {
        let set = crate::model::demo::DemoConfig::default_perspectives(4);
        let heads = SceneHeads::new(&set, 8, &Device::Cpu).unwrap();
        let all = scene_tasks();
        assert_eq!(heads.heads.len(), 5);
        assert_eq!(heads.heads[0].tasks.len(), all.len());
        for h in &heads.heads[1..] {
            assert!(!h.tasks.is_empty());
            assert!(
                h.tasks
                    .iter()
                    .all(|&(i, _)| all[i].group.perspective() == h.name)
            );
        }
        let global_only = crate::model::demo::DemoConfig::default_perspectives(0);
        let heads = SceneHeads::new(&global_only, 8, &Device::Cpu).unwrap();
        assert_eq!(heads.heads.len(), 1);

        let text = SceneHeads::for_text(&set, 8, &Device::Cpu).unwrap();
        let names: Vec<&str> = text.heads.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["global", "spatial", "text"]);
        assert!(
            text.vars()
                .iter()
                .all(|(n, _, _)| n.starts_with("text_heads."))
        );
    }

    /// A few steps on fixed embeddings lower the loss, and saving then loading gives the
    /// same heads.
    #[test]
    fn heads_learn_and_round_trip() {
        let dev = Device::Cpu;
        let set = crate::model::demo::DemoConfig::default_perspectives(1);
        let heads = SceneHeads::new(&set, 16, &dev).unwrap();
        let mut rng = SceneRng::new(3);
        let scenes: Vec<Scene> = (0..8).map(|_| Scene::random(&mut rng)).collect();
        let refs: Vec<&Scene> = scenes.iter().collect();
        let image = Tensor::randn(0f32, 1.0, (8, 2, 16), &dev).unwrap();
        let (first, last) = fit(&heads, &image, &refs);
        assert!(
            last.loss < 0.5 * first.loss,
            "{} → {}",
            first.loss,
            last.loss
        );
        assert!(last.accuracy > first.accuracy);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HEADS_FILE);
        heads.save(&path).unwrap();
        let mut again = SceneHeads::new(&set, 16, &dev).unwrap();
        again.load(&path).unwrap();
        let (_, reloaded) = again.loss(&image, &refs).unwrap();
        assert!((reloaded.loss - last.loss).abs() < 1e-6);
        let wrong = SceneHeads::new(&set, 8, &dev).unwrap().save(&path);
        assert!(wrong.is_ok());
        let err = again.load(&path).unwrap_err().to_string();
        assert!(err.contains("shape"), "{err}");
    }
}
