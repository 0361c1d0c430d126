//! P-MMVP: pairs of scenes that differ only in one MMVP-VLM visual pattern, with one statement
//! true of each image, and MMVP's pair scoring.

use super::caption::{colour_shape, count_word, key, label_phrase, with_article};
use super::{
    Colour, Orientation, Placed, Scene, SceneRng, SceneSpec, Setting, Shape, Size, Zoom, font,
    layout, random_jitter, random_object, relation, shuffled_cells,
};
use crate::util::rng::derive_seed;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The nine visual patterns of MMVP-VLM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MmvpPattern {
    /// Orientation and direction.
    Orientation,
    /// Presence of specific features.
    Presence,
    /// State and condition (here: filled vs outlined).
    State,
    /// Quantity and count.
    Quantity,
    /// Positional and relational context.
    Position,
    /// Color and appearance.
    Colour,
    /// Structural characteristics (here: shape).
    Structure,
    /// Texts.
    Text,
    /// Viewpoint and perspective (here: close up vs far).
    Viewpoint,
}

impl MmvpPattern {
    /// All patterns in MMVP-VLM's category order.
    pub const ALL: [Self; 9] = [
        Self::Orientation,
        Self::Presence,
        Self::State,
        Self::Quantity,
        Self::Position,
        Self::Colour,
        Self::Structure,
        Self::Text,
        Self::Viewpoint,
    ];

    /// Short name: "orientation", "presence", "state", "quantity", "position", "color",
    /// "structure", "text", "viewpoint".
    pub fn name(self) -> &'static str {
        match self {
            Self::Orientation => "orientation",
            Self::Presence => "presence",
            Self::State => "state",
            Self::Quantity => "quantity",
            Self::Position => "position",
            Self::Colour => "color",
            Self::Structure => "structure",
            Self::Text => "text",
            Self::Viewpoint => "viewpoint",
        }
    }

    /// MMVP-VLM's `Type` column value and image folder name for this pattern.
    pub fn mmvp_type(self) -> &'static str {
        match self {
            Self::Orientation => "Orientation and Direction",
            Self::Presence => "Presence of Specific Features",
            Self::State => "State and Condition",
            Self::Quantity => "Quantity and Count",
            Self::Position => "Positional and Relational Context",
            Self::Colour => "Color and Appearance",
            Self::Structure => "Structural Characteristics",
            Self::Text => "Texts",
            Self::Viewpoint => "Viewpoint and Perspective",
        }
    }

    /// Pattern from its [`name`](Self::name) (also accepts "colour" and the MMVP type string,
    /// case-insensitively).
    pub fn from_name(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("colour") {
            return Some(Self::Colour);
        }
        Self::ALL
            .into_iter()
            .find(|p| s.eq_ignore_ascii_case(p.name()) || s.eq_ignore_ascii_case(p.mmvp_type()))
    }
}

/// Two scenes differing only in `pattern`, and one statement true of each.
#[derive(Debug, Clone)]
pub struct ScenePair {
    /// The attribute that differs.
    pub pattern: MmvpPattern,
    /// First image.
    pub a: Scene,
    /// Second image.
    pub b: Scene,
    /// `statements[0]` is true of `a` and false of `b`; `statements[1]` the reverse.
    pub statements: [String; 2],
}

/// Builds a spec with `count` objects whose (colour, shape) combinations are all distinct.
fn distinct_spec(
    rng: &mut SceneRng,
    zoom: Zoom,
    count: usize,
    cells: &[(usize, usize)],
) -> SceneSpec {
    let seed = rng.next_u64();
    let setting = rng.of(&Setting::ALL);
    let mut items: Vec<Placed> = Vec::with_capacity(count);
    for &(col, row) in cells.iter().take(count) {
        let mut obj = random_object(rng, 0.4);
        for _ in 0..64 {
            if !items
                .iter()
                .any(|p| p.obj.colour == obj.colour && p.obj.shape == obj.shape)
            {
                break;
            }
            obj = random_object(rng, 0.4);
        }
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
}

/// Whether some item other than `skip` has this colour and shape.
fn taken(items: &[Placed], skip: usize, colour: Colour, shape: Shape) -> bool {
    items
        .iter()
        .enumerate()
        .any(|(i, p)| i != skip && p.obj.colour == colour && p.obj.shape == shape)
}

fn short(o: &super::SceneObject) -> String {
    with_article(&format!("{} {}", o.colour.name(), o.shape.name()))
}

impl ScenePair {
    /// A random pair for `pattern`.
    pub fn generate(pattern: MmvpPattern, rng: &mut SceneRng) -> ScenePair {
        let zoom = rng.of(&Zoom::ALL);
        let cells = shuffled_cells(rng, zoom);
        let n_cells = cells.len();
        let max = layout::max_objects(zoom);
        match pattern {
            MmvpPattern::Orientation => {
                let mut a = {
                    let n = 1 + rng.below(max);
                    distinct_spec(rng, zoom, n, &cells)
                };
                let shape = rng.of(&[Shape::Arrow, Shape::Triangle]);
                let t = 0;
                let colour = pick_free_colour(rng, &a.items, t, shape);
                if let Some(p) = a.items.get_mut(t) {
                    p.obj.shape = shape;
                    p.obj.colour = colour;
                    p.obj.label = None;
                    p.obj.orientation = rng.of(&Orientation::ALL);
                    p.obj.filled |= !shape.can_outline(p.obj.size);
                }
                let mut b = a.clone();
                if let Some(p) = b.items.get_mut(t) {
                    let old = p.obj.orientation;
                    let others: Vec<Orientation> =
                        Orientation::ALL.into_iter().filter(|o| *o != old).collect();
                    p.obj.orientation = rng.pick(&others).unwrap_or(Orientation::Up);
                }
                let st = |s: &SceneSpec| {
                    s.items
                        .get(t)
                        .map(|p| with_article(&colour_shape(&p.obj)))
                        .unwrap_or_default()
                };
                finish(pattern, &a, &b, [st(&a), st(&b)])
            }
            MmvpPattern::Presence => {
                let n = 2 + rng.below(max - 1);
                let a = distinct_spec(rng, zoom, n, &cells);
                let t = rng.below(n);
                let mut b = a.clone();
                let gone = b.items.remove(t.min(b.items.len().saturating_sub(1)));
                let what = short(&gone.obj);
                let without = format!("{} {}", gone.obj.colour.name(), gone.obj.shape.name());
                let statements = [
                    format!("a scene with {what}"),
                    format!("a scene with no {without}"),
                ];
                swap_maybe(rng, pattern, &a, &b, statements)
            }
            MmvpPattern::State => {
                let a0 = {
                    let n = 1 + rng.below(max);
                    distinct_spec(rng, zoom, n, &cells)
                };
                let t = rng.below(a0.items.len());
                let mut a = a0;
                if let Some(p) = a.items.get_mut(t) {
                    p.obj.label = None;
                    if !p.obj.shape.can_outline(p.obj.size) {
                        p.obj.size = Size::Large;
                    }
                }
                let mut b = a.clone();
                if let Some(p) = b.items.get_mut(t) {
                    p.obj.filled = !p.obj.filled;
                }
                let st = |s: &SceneSpec| {
                    s.items
                        .get(t)
                        .map(|p| {
                            with_article(&format!(
                                "{} {} {}",
                                super::caption::fill_word(p.obj.filled),
                                p.obj.colour.name(),
                                p.obj.shape.name()
                            ))
                        })
                        .unwrap_or_default()
                };
                finish(pattern, &a, &b, [st(&a), st(&b)])
            }
            MmvpPattern::Quantity => {
                // k copies of one object in a, k + d in b; other objects distinct.
                let k = 1 + rng.below(n_cells.saturating_sub(2).clamp(1, 3));
                let d = 1 + rng.below((n_cells - k).clamp(1, 2));
                let others = rng.below(n_cells - k - d + 1).min(2);
                let spec = distinct_spec(rng, zoom, 1 + others, &cells);
                let mut a = spec.clone();
                let target = a.items.first().map(|p| p.obj.clone());
                let mut b = spec;
                if let Some(obj) = target {
                    for (copies, &(col, row)) in (1..k + d).zip(cells.iter().skip(1 + others)) {
                        let placed = Placed {
                            obj: obj.clone(),
                            col,
                            row,
                            jitter: random_jitter(rng),
                        };
                        if copies < k {
                            a.items.push(placed.clone());
                        }
                        b.items.push(placed);
                    }
                }
                let st = |s: &SceneSpec| {
                    let Some(o) = s.items.first().map(|p| &p.obj) else {
                        return String::new();
                    };
                    let n = s.items.iter().filter(|p| key(&p.obj) == key(o)).count();
                    let noun = if n == 1 {
                        o.shape.name()
                    } else {
                        o.shape.plural()
                    };
                    format!("{} {} {noun}", count_word(n), o.colour.name())
                };
                let statements = [st(&a), st(&b)];
                swap_maybe(rng, pattern, &a, &b, statements)
            }
            MmvpPattern::Position => {
                // Two objects in one row swap columns.
                let (cols, rows) = layout::grid(zoom);
                let row = rng.below(rows);
                let mut in_row: Vec<usize> = (0..cols).collect();
                rng.shuffle(&mut in_row);
                let (c0, c1) = (in_row[0], in_row[1]);
                let mut rest: Vec<(usize, usize)> = cells
                    .iter()
                    .copied()
                    .filter(|&(c, r)| !(r == row && (c == c0 || c == c1)))
                    .collect();
                rng.shuffle(&mut rest);
                let mut order = vec![(c0, row), (c1, row)];
                order.extend(rest);
                let n = 2 + rng.below(max - 1);
                let a = distinct_spec(rng, zoom, n, &order);
                let mut b = a.clone();
                b.items[0].col = c1;
                b.items[1].col = c0;
                let (sa, sb) = (a.build(), b.build());
                let st = |s: &Scene| {
                    let (Some(x), Some(y)) = (s.objects.first(), s.objects.get(1)) else {
                        return String::new();
                    };
                    let r = relation(&x.bbox, &y.bbox).unwrap_or("and");
                    format!("{} {r} {}", short(x), short(y))
                };
                let statements = [st(&sa), st(&sb)];
                ScenePair {
                    pattern,
                    a: sa,
                    b: sb,
                    statements,
                }
            }
            MmvpPattern::Colour => {
                let a = {
                    let n = 1 + rng.below(max);
                    distinct_spec(rng, zoom, n, &cells)
                };
                let t = rng.below(a.items.len());
                let mut b = a.clone();
                if let Some(shape) = a.items.get(t).map(|p| p.obj.shape) {
                    let old = a.items[t].obj.colour;
                    let free: Vec<Colour> = Colour::ALL
                        .into_iter()
                        .filter(|&c| c != old && !taken(&a.items, t, c, shape))
                        .collect();
                    b.items[t].obj.colour = rng.pick(&free).unwrap_or(old);
                }
                let st = |s: &SceneSpec| s.items.get(t).map(|p| short(&p.obj)).unwrap_or_default();
                finish(pattern, &a, &b, [st(&a), st(&b)])
            }
            MmvpPattern::Structure => {
                let mut a = {
                    let n = 1 + rng.below(max);
                    distinct_spec(rng, zoom, n, &cells)
                };
                let t = rng.below(a.items.len());
                if let Some(p) = a.items.get_mut(t) {
                    p.obj.orientation = Orientation::Up;
                    p.obj.label = None;
                }
                let mut b = a.clone();
                if let Some(o) = a.items.get(t).map(|p| p.obj.clone()) {
                    let old = o.shape;
                    let free: Vec<Shape> = Shape::ALL
                        .into_iter()
                        .filter(|&s| {
                            s != old
                                && !taken(&a.items, t, o.colour, s)
                                && (o.filled || s.can_outline(o.size))
                        })
                        .collect();
                    b.items[t].obj.shape = rng.pick(&free).unwrap_or(old);
                }
                let st = |s: &SceneSpec| s.items.get(t).map(|p| short(&p.obj)).unwrap_or_default();
                finish(pattern, &a, &b, [st(&a), st(&b)])
            }
            MmvpPattern::Text => {
                let mut a = {
                    let n = 1 + rng.below(max);
                    distinct_spec(rng, zoom, n, &cells)
                };
                for p in &mut a.items {
                    p.obj.label = None;
                }
                let t = rng.below(a.items.len());
                let shape = rng.of(&[Shape::Square, Shape::Circle]);
                let colour = pick_free_colour(rng, &a.items, t, shape);
                let c0 = rng.of(&font::LABEL_CHARS);
                let others: Vec<char> =
                    font::LABEL_CHARS.into_iter().filter(|&c| c != c0).collect();
                let c1 = rng.pick(&others).unwrap_or('A');
                if let Some(p) = a.items.get_mut(t) {
                    p.obj.shape = shape;
                    p.obj.colour = colour;
                    p.obj.size = Size::Large;
                    p.obj.filled = true;
                    p.obj.orientation = Orientation::Up;
                    p.obj.label = Some(c0);
                }
                let mut b = a.clone();
                if let Some(p) = b.items.get_mut(t) {
                    p.obj.label = Some(c1);
                }
                let statements = [
                    format!("a sign with {}", label_phrase(c0)),
                    format!("a sign with {}", label_phrase(c1)),
                ];
                finish(pattern, &a, &b, statements)
            }
            MmvpPattern::Viewpoint => {
                // Cells of the close-up 2×2 grid exist in the far 3×2 grid with the same order.
                let mut near_cells = shuffled_cells(rng, Zoom::Near);
                near_cells.truncate(1 + rng.below(layout::max_objects(Zoom::Near)));
                let mut a = distinct_spec(rng, Zoom::Near, near_cells.len(), &near_cells);
                let mut b = a.clone();
                if rng.chance(0.5) {
                    a.zoom = Zoom::Far;
                } else {
                    b.zoom = Zoom::Far;
                }
                let st = |s: &SceneSpec| format!("a {} view", s.zoom.phrase());
                finish(pattern, &a, &b, [st(&a), st(&b)])
            }
        }
    }
}

/// A colour such that (colour, shape) is not used by any item but `skip`.
fn pick_free_colour(rng: &mut SceneRng, items: &[Placed], skip: usize, shape: Shape) -> Colour {
    let free: Vec<Colour> = Colour::ALL
        .into_iter()
        .filter(|&c| !taken(items, skip, c, shape))
        .collect();
    rng.pick(&free).unwrap_or(Colour::Red)
}

fn finish(pattern: MmvpPattern, a: &SceneSpec, b: &SceneSpec, s: [String; 2]) -> ScenePair {
    ScenePair {
        pattern,
        a: a.build(),
        b: b.build(),
        statements: s,
    }
}

/// Like [`finish`], but with probability ½ swaps which image is first.
fn swap_maybe(
    rng: &mut SceneRng,
    pattern: MmvpPattern,
    a: &SceneSpec,
    b: &SceneSpec,
    [s0, s1]: [String; 2],
) -> ScenePair {
    if rng.chance(0.5) {
        finish(pattern, b, a, [s1, s0])
    } else {
        finish(pattern, a, b, [s0, s1])
    }
}

/// `n` pairs of one pattern; deterministic per `(pattern, n, seed)`.
pub fn pmmvp_pairs(pattern: MmvpPattern, n: usize, seed: u64) -> Vec<ScenePair> {
    let stream = MmvpPattern::ALL
        .iter()
        .position(|p| *p == pattern)
        .unwrap_or(0) as u64;
    let mut rng = SceneRng::new(derive_seed(seed, 0x4D4D_5650 + stream));
    (0..n)
        .map(|_| ScenePair::generate(pattern, &mut rng))
        .collect()
}

/// Relations between every ordered pair of objects.
fn relations(s: &Scene) -> Vec<Option<&'static str>> {
    s.objects
        .iter()
        .flat_map(|x| s.objects.iter().map(|y| relation(&x.bbox, &y.bbox)))
        .collect()
}

/// Which patterns differ between two scenes, from metadata only. Settings and sizes are not
/// patterns and are ignored.
pub fn differing_patterns(a: &Scene, b: &Scene) -> Vec<MmvpPattern> {
    let mut out = BTreeSet::new();
    if a.zoom != b.zoom {
        out.insert(MmvpPattern::Viewpoint);
    }
    if a.objects.len() != b.objects.len() {
        let ka: BTreeSet<_> = a.objects.iter().map(key).collect();
        let kb: BTreeSet<_> = b.objects.iter().map(key).collect();
        out.insert(if ka == kb {
            MmvpPattern::Quantity
        } else {
            MmvpPattern::Presence
        });
    } else {
        for (x, y) in a.objects.iter().zip(&b.objects) {
            if x.shape != y.shape {
                out.insert(MmvpPattern::Structure);
            }
            if x.colour != y.colour {
                out.insert(MmvpPattern::Colour);
            }
            if x.filled != y.filled {
                out.insert(MmvpPattern::State);
            }
            if x.orientation != y.orientation && x.shape == y.shape {
                out.insert(MmvpPattern::Orientation);
            }
            if x.label != y.label {
                out.insert(MmvpPattern::Text);
            }
        }
        if a.zoom == b.zoom && relations(a) != relations(b) {
            out.insert(MmvpPattern::Position);
        }
    }
    out.into_iter().collect()
}

/// MMVP pair scoring: `sim[s][i]` is the similarity of statement `s` with image `i`; the pair
/// is correct iff each statement prefers its own image strictly (ties are wrong).
pub fn mmvp_pair_correct(sim: [[f32; 2]; 2]) -> bool {
    sim[0][0] > sim[0][1] && sim[1][1] > sim[1][0]
}

/// Pairs and correct pairs per pattern.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MmvpTally {
    pairs: [usize; 9],
    correct: [usize; 9],
}

impl MmvpTally {
    /// An empty tally.
    pub fn new() -> Self {
        Self::default()
    }

    fn index(p: MmvpPattern) -> usize {
        MmvpPattern::ALL.iter().position(|q| *q == p).unwrap_or(0)
    }

    /// Counts one pair.
    pub fn add(&mut self, p: MmvpPattern, correct: bool) {
        let i = Self::index(p);
        self.pairs[i] += 1;
        if correct {
            self.correct[i] += 1;
        }
    }

    /// Pairs counted for a pattern.
    pub fn pairs(&self, p: MmvpPattern) -> usize {
        self.pairs[Self::index(p)]
    }

    /// Correct pairs of a pattern.
    pub fn correct(&self, p: MmvpPattern) -> usize {
        self.correct[Self::index(p)]
    }

    /// Percentage of correct pairs of a pattern; `None` without pairs.
    pub fn percent(&self, p: MmvpPattern) -> Option<f64> {
        let i = Self::index(p);
        (self.pairs[i] > 0).then(|| 100.0 * self.correct[i] as f64 / self.pairs[i] as f64)
    }

    /// Mean of the per-pattern percentages over patterns that have pairs.
    pub fn average(&self) -> Option<f64> {
        let ps: Vec<f64> = MmvpPattern::ALL
            .iter()
            .filter_map(|&p| self.percent(p))
            .collect();
        (!ps.is_empty()).then(|| ps.iter().sum::<f64>() / ps.len() as f64)
    }

    /// Standard error (percentage points) of [`MmvpTally::average`] from the pairs'
    /// sampling alone: each pattern's accuracy as a binomial proportion q over its n
    /// pairs, variance q(1 − q)/n, the average's variance the sum over the P patterns
    /// divided by P². With 15 pairs per pattern it is about 3 points; two models (or two
    /// runs) differ by more than chance only when their averages are several of these
    /// apart. `None` without pairs.
    pub fn average_standard_error(&self) -> Option<f64> {
        let variances: Vec<f64> = (0..self.pairs.len())
            .filter(|&i| self.pairs[i] > 0)
            .map(|i| {
                let n = self.pairs[i] as f64;
                let q = self.correct[i] as f64 / n;
                q * (1.0 - q) / n
            })
            .collect();
        (!variances.is_empty())
            .then(|| 100.0 * variances.iter().sum::<f64>().sqrt() / variances.len() as f64)
    }
}
