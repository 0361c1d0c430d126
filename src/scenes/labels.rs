//! Dense labels of a scene for a grid of visual tokens, from its metadata: which object
//! covers each token and that object's attributes, plus the scene's object count. They
//! supervise the demo model's vision tower before contrastive training and score the
//! linear probes that check it (`train::vision`).

use super::{Scene, SceneObject, font};

/// The attributes a token or an image is labelled with, in the order of
/// [`TokenLabels::labels`]. Every attribute is a classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attribute {
    /// Shape of the object under the token, or background (class 0): 9 classes.
    Shape,
    /// Colour of the object under the token (object tokens only): 9 classes.
    Colour,
    /// Small or large (object tokens only).
    Size,
    /// Filled or outlined (object tokens only).
    Fill,
    /// Where an arrow or triangle points (tokens of those shapes only): 4 classes.
    Orientation,
    /// The character written on a labelled object (tokens of labelled objects only):
    /// 36 classes.
    Characters,
    /// Whether the token's cell holds the centre of the object's box (object tokens only):
    /// an instance cue that makes counting a sum over tokens.
    Centre,
    /// Number of objects in the image (1–5, class = count − 1); one label per image.
    Count,
    /// The scene's setting (background); one label per image.
    Setting,
    /// Close up or far; one label per image.
    Zoom,
}

impl Attribute {
    /// Every attribute, token attributes first.
    pub const ALL: [Attribute; 10] = [
        Attribute::Shape,
        Attribute::Colour,
        Attribute::Size,
        Attribute::Fill,
        Attribute::Orientation,
        Attribute::Characters,
        Attribute::Centre,
        Attribute::Count,
        Attribute::Setting,
        Attribute::Zoom,
    ];

    /// Number of classes.
    pub fn classes(self) -> usize {
        match self {
            Attribute::Shape => 1 + super::Shape::ALL.len(),
            Attribute::Colour => super::Colour::ALL.len(),
            Attribute::Size | Attribute::Fill | Attribute::Centre => 2,
            Attribute::Orientation => super::Orientation::ALL.len(),
            Attribute::Characters => font::LABEL_CHARS.len(),
            Attribute::Count => MAX_COUNT,
            Attribute::Setting => super::Setting::ALL.len(),
            Attribute::Zoom => super::Zoom::ALL.len(),
        }
    }

    /// Whether the label is per image (else per token).
    pub fn per_image(self) -> bool {
        matches!(
            self,
            Attribute::Count | Attribute::Setting | Attribute::Zoom
        )
    }

    /// Lower-case name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Attribute::Shape => "shape",
            Attribute::Colour => "colour",
            Attribute::Size => "size",
            Attribute::Fill => "fill",
            Attribute::Orientation => "orientation",
            Attribute::Characters => "characters",
            Attribute::Centre => "centre",
            Attribute::Count => "count",
            Attribute::Setting => "setting",
            Attribute::Zoom => "zoom",
        }
    }
}

/// Most objects a scene holds (the count classes are 1..=MAX_COUNT).
pub const MAX_COUNT: usize = 5;

/// The labels of one scene on a `grid × grid` token layout (row-major, like the model's
/// visual tokens).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLabels {
    /// Tokens per side.
    pub grid: usize,
    /// Per token: the index into `scene.objects` of the object covering it.
    pub object: Vec<Option<usize>>,
    /// Per attribute: (token, class) for every token that has a label for it (for
    /// [`Attribute::Count`], one entry with token 0).
    pub labels: Vec<(Attribute, Vec<(usize, u32)>)>,
}

impl TokenLabels {
    /// The (token, class) labels of one attribute.
    pub fn of(&self, attribute: Attribute) -> &[(usize, u32)] {
        self.labels
            .iter()
            .find(|(a, _)| *a == attribute)
            .map_or(&[], |(_, l)| l.as_slice())
    }
}

/// Whether a point lies in a box `[x0, y0, x1, y1]`.
fn inside(b: &[f32; 4], x: f32, y: f32) -> bool {
    x >= b[0] && x < b[2] && y >= b[1] && y < b[3]
}

/// The object that covers a token: the one whose box holds the token's centre (boxes
/// never overlap, see `layout`), else the one whose box overlaps the token's cell most,
/// if it covers at least a third of the cell. Small far objects (15 px) always cover the
/// centre of some 8-px cell.
fn covering(objects: &[SceneObject], cell: [f32; 4]) -> Option<usize> {
    let (cx, cy) = ((cell[0] + cell[2]) / 2.0, (cell[1] + cell[3]) / 2.0);
    if let Some(i) = objects.iter().position(|o| inside(&o.bbox, cx, cy)) {
        return Some(i);
    }
    let area = (cell[2] - cell[0]) * (cell[3] - cell[1]);
    objects
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let w = (o.bbox[2].min(cell[2]) - o.bbox[0].max(cell[0])).max(0.0);
            let h = (o.bbox[3].min(cell[3]) - o.bbox[1].max(cell[1])).max(0.0);
            (i, w * h)
        })
        .filter(|&(_, a)| a >= area / 3.0)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i)
}

/// The position of `v` in `all` (0 if absent, which the enums' `ALL` lists rule out).
fn index<T: PartialEq>(all: &[T], v: T) -> usize {
    all.iter().position(|x| *x == v).unwrap_or(0)
}

/// Dense labels of `scene` (rendered at `image_size` pixels) on a `grid × grid` layout.
pub fn token_labels(scene: &Scene, image_size: usize, grid: usize) -> TokenLabels {
    let cell = image_size as f32 / grid.max(1) as f32;
    // Scenes are drawn at SCENE_SIZE; boxes scale with the image.
    let scale = image_size as f32 / super::SCENE_SIZE as f32;
    let objects: Vec<SceneObject> = scene
        .objects
        .iter()
        .map(|o| {
            let mut o = o.clone();
            for v in &mut o.bbox {
                *v *= scale;
            }
            o
        })
        .collect();
    let n = grid * grid;
    let mut object = vec![None; n];
    let mut by_attr: Vec<(Attribute, Vec<(usize, u32)>)> =
        Attribute::ALL.iter().map(|&a| (a, Vec::new())).collect();
    let mut push = |a: Attribute, token: usize, class: usize| {
        if let Some((_, l)) = by_attr.iter_mut().find(|(x, _)| *x == a) {
            l.push((token, class as u32));
        }
    };
    for gy in 0..grid {
        for gx in 0..grid {
            let t = gy * grid + gx;
            let rect = [
                gx as f32 * cell,
                gy as f32 * cell,
                (gx + 1) as f32 * cell,
                (gy + 1) as f32 * cell,
            ];
            let Some(i) = covering(&objects, rect) else {
                push(Attribute::Shape, t, 0);
                continue;
            };
            object[t] = Some(i);
            let o = &objects[i];
            push(Attribute::Shape, t, 1 + index(&super::Shape::ALL, o.shape));
            push(Attribute::Colour, t, index(&super::Colour::ALL, o.colour));
            push(Attribute::Size, t, index(&super::Size::ALL, o.size));
            push(Attribute::Fill, t, usize::from(o.filled));
            if o.shape.oriented() {
                push(
                    Attribute::Orientation,
                    t,
                    index(&super::Orientation::ALL, o.orientation),
                );
            }
            if let Some(ch) = o.label {
                push(
                    Attribute::Characters,
                    t,
                    font::LABEL_CHARS.iter().position(|&c| c == ch).unwrap_or(0),
                );
            }
            let (bx, by) = ((o.bbox[0] + o.bbox[2]) / 2.0, (o.bbox[1] + o.bbox[3]) / 2.0);
            push(Attribute::Centre, t, usize::from(inside(&rect, bx, by)));
        }
    }
    let count = scene.objects.len().clamp(1, MAX_COUNT);
    push(Attribute::Count, 0, count - 1);
    push(
        Attribute::Setting,
        0,
        index(&super::Setting::ALL, scene.setting),
    );
    push(Attribute::Zoom, 0, index(&super::Zoom::ALL, scene.zoom));
    TokenLabels {
        grid,
        object,
        labels: by_attr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenes::SceneRng;

    #[test]
    fn every_object_covers_a_token_and_labels_match_the_metadata() {
        let mut rng = SceneRng::new(11);
        for _ in 0..200 {
            let scene = Scene::random(&mut rng);
            let l = token_labels(&scene, 96, 12);
            for (i, o) in scene.objects.iter().enumerate() {
                let tokens: Vec<usize> = (0..144).filter(|&t| l.object[t] == Some(i)).collect();
                assert!(
                    !tokens.is_empty(),
                    "object {i} ({:?}) covers no token",
                    o.shape
                );
                // Exactly one token holds the object's centre.
                let centres = l
                    .of(Attribute::Centre)
                    .iter()
                    .filter(|(t, c)| *c == 1 && tokens.contains(t))
                    .count();
                assert_eq!(centres, 1);
                for &t in &tokens {
                    let shape = l.of(Attribute::Shape).iter().find(|(x, _)| *x == t);
                    let expect = 1 + crate::scenes::Shape::ALL
                        .iter()
                        .position(|s| *s == o.shape)
                        .unwrap() as u32;
                    assert_eq!(shape.map(|s| s.1), Some(expect));
                }
            }
            assert_eq!(
                l.of(Attribute::Count),
                &[(0, scene.objects.len() as u32 - 1)]
            );
            // Background tokens have a shape label (0) and nothing else.
            let bg = l.object.iter().filter(|o| o.is_none()).count();
            let shape_bg = l.of(Attribute::Shape).iter().filter(|x| x.1 == 0).count();
            assert_eq!(bg, shape_bg);
            assert_eq!(l.of(Attribute::Colour).len(), 144 - bg);
        }
    }

    #[test]
    fn orientation_and_characters_only_where_they_are_visible() {
        let mut rng = SceneRng::new(5);
        let mut seen = (0, 0);
        for _ in 0..300 {
            let scene = Scene::random(&mut rng);
            let l = token_labels(&scene, 96, 12);
            for &(t, _) in l.of(Attribute::Orientation) {
                let o = &scene.objects[l.object[t].unwrap()];
                assert!(o.shape.oriented());
                seen.0 += 1;
            }
            for &(t, c) in l.of(Attribute::Characters) {
                let o = &scene.objects[l.object[t].unwrap()];
                assert_eq!(o.label, Some(font::LABEL_CHARS[c as usize]));
                seen.1 += 1;
            }
        }
        assert!(seen.0 > 0 && seen.1 > 0, "{seen:?}");
    }
}
