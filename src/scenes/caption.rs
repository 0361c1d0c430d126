//! Caption grammar. Captions are lowercase words separated by single spaces, no punctuation;
//! every word is in [`vocabulary`]. Characters on labels are written as single lowercase
//! words ("the letter a", "the digit 3").

use super::{Colour, Orientation, Scene, SceneObject, Setting, Shape, Size, Zoom, relation};
use serde::Serialize;

/// A caption about a single attribute dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FineCaption {
    /// One of the demo model's fine perspectives: "attributes", "count", "spatial", "text".
    pub perspective: &'static str,
    /// The caption.
    pub text: String,
}

const FUNCTION_WORDS: [&str; 26] = [
    "a", "an", "the", "of", "with", "and", "no", "view", "close", "up", "scene", "pointing",
    "left", "right", "above", "below", "letter", "digit", "sign", "object", "objects", "one",
    "two", "three", "four", "five",
];

/// Every word any caption or statement can contain: lowercase, sorted, unique
/// (including `a`–`z` and `0`–`9` as single-character words).
pub fn vocabulary() -> Vec<&'static str> {
    const CHARS: [&str; 36] = [
        "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r",
        "s", "t", "u", "v", "w", "x", "y", "z", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9",
    ];
    let mut words: Vec<&'static str> = FUNCTION_WORDS.to_vec();
    words.extend(CHARS);
    words.extend(Setting::ALL.map(Setting::name));
    words.extend(Shape::ALL.map(Shape::name));
    words.extend(Shape::ALL.map(Shape::plural));
    words.extend(Colour::ALL.map(Colour::name));
    words.extend(Size::ALL.map(Size::name));
    words.extend(Orientation::ALL.map(Orientation::name));
    words.extend(Zoom::ALL.map(Zoom::name));
    words.extend(["filled", "outlined"]);
    words.sort_unstable();
    words.dedup();
    words
}

/// "a" or "an" for the word that follows.
pub fn article(next: &str) -> &'static str {
    match next.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

/// Prefixes a phrase with its article: `with_article("orange star")` is "an orange star".
pub fn with_article(phrase: &str) -> String {
    format!("{} {phrase}", article(phrase))
}

/// Count word for 1–5 ("one" … "five"); larger counts say "five".
pub fn count_word(n: usize) -> &'static str {
    match n {
        0 | 1 => "one",
        2 => "two",
        3 => "three",
        4 => "four",
        _ => "five",
    }
}

/// "filled" or "outlined".
pub fn fill_word(filled: bool) -> &'static str {
    if filled { "filled" } else { "outlined" }
}

/// "the letter a" / "the digit 3" (characters as lowercase words).
pub fn label_phrase(c: char) -> String {
    let kind = if c.is_ascii_digit() {
        "digit"
    } else {
        "letter"
    };
    format!("the {kind} {}", c.to_ascii_lowercase())
}

/// "red circle", with the orientation for arrows and triangles ("red arrow pointing up").
pub fn colour_shape(o: &SceneObject) -> String {
    let mut s = format!("{} {}", o.colour.name(), o.shape.name());
    if o.shape.oriented() {
        s.push_str(" pointing ");
        s.push_str(o.orientation.name());
    }
    s
}

type Key = (Shape, Colour, Size, bool, Orientation, Option<char>);

/// Everything that makes two objects look identical.
pub(crate) fn key(o: &SceneObject) -> Key {
    (o.shape, o.colour, o.size, o.filled, o.orientation, o.label)
}

/// Groups of identical objects (indices), in order of first appearance.
fn groups(scene: &Scene) -> Vec<Vec<usize>> {
    let mut out: Vec<(Key, Vec<usize>)> = Vec::new();
    for (i, o) in scene.objects.iter().enumerate() {
        let k = key(o);
        match out.iter_mut().find(|(g, _)| *g == k) {
            Some((_, v)) => v.push(i),
            None => out.push((k, vec![i])),
        }
    }
    out.into_iter().map(|(_, v)| v).collect()
}

fn group_phrase(o: &SceneObject, n: usize) -> String {
    let noun = if n > 1 {
        o.shape.plural()
    } else {
        o.shape.name()
    };
    let mut s = format!(
        "{} {} {} {noun}",
        o.size.name(),
        fill_word(o.filled),
        o.colour.name()
    );
    if o.shape.oriented() {
        s.push_str(" pointing ");
        s.push_str(o.orientation.name());
    }
    if let Some(c) = o.label {
        s.push_str(" with ");
        s.push_str(&label_phrase(c));
    }
    if n > 1 {
        format!("{} {s}", count_word(n))
    } else {
        with_article(&s)
    }
}

/// The relation every object of group `a` has to every object of group `b`, if one.
fn group_relation(scene: &Scene, a: &[usize], b: &[usize]) -> Option<&'static str> {
    let mut rel = None;
    for &i in a {
        for &j in b {
            let r = relation(&scene.objects.get(i)?.bbox, &scene.objects.get(j)?.bbox)?;
            match rel {
                None => rel = Some(r),
                Some(prev) if prev != r => return None,
                Some(_) => {}
            }
        }
    }
    rel
}

/// "a far view of a beach scene with a large filled red circle left of two small outlined blue
/// arrows pointing up"
pub fn caption(scene: &Scene) -> String {
    let mut out = format!(
        "a {} view of {} scene",
        scene.zoom.phrase(),
        with_article(scene.setting.name())
    );
    let mut gs = groups(scene);
    if gs.is_empty() {
        return out;
    }
    // Put first a pair of groups that has a relation.
    let mut rel = None;
    'outer: for i in 0..gs.len() {
        for j in 0..gs.len() {
            if i != j
                && let Some(r) = group_relation(scene, &gs[i], &gs[j])
            {
                let (gi, gj) = (gs[i].clone(), gs[j].clone());
                gs.retain(|g| *g != gi && *g != gj);
                gs.insert(0, gj);
                gs.insert(0, gi);
                rel = Some(r);
                break 'outer;
            }
        }
    }
    if rel.is_none() {
        // No relation holds between whole groups: split one off, e.g. "a small square left of
        // a red diamond and two small squares". Objects in different cells always relate.
        'split: for i in 0..gs.len() {
            for j in 0..gs.len() {
                if i == j {
                    continue;
                }
                for &x in &gs[i] {
                    for &y in &gs[j] {
                        let (Some(ox), Some(oy)) = (scene.objects.get(x), scene.objects.get(y))
                        else {
                            continue;
                        };
                        let Some(r) = relation(&ox.bbox, &oy.bbox) else {
                            continue;
                        };
                        let near: Vec<usize> = gs[j]
                            .iter()
                            .copied()
                            .filter(|&z| {
                                scene
                                    .objects
                                    .get(z)
                                    .and_then(|oz| relation(&ox.bbox, &oz.bbox))
                                    == Some(r)
                            })
                            .collect();
                        let rest_i: Vec<usize> =
                            gs[i].iter().copied().filter(|&z| z != x).collect();
                        let rest_j: Vec<usize> = gs[j]
                            .iter()
                            .copied()
                            .filter(|z| !near.contains(z))
                            .collect();
                        let mut out_groups = vec![vec![x], near];
                        out_groups.extend([rest_i, rest_j].into_iter().filter(|g| !g.is_empty()));
                        out_groups.extend(
                            gs.iter()
                                .enumerate()
                                .filter(|&(k, _)| k != i && k != j)
                                .map(|(_, g)| g.clone()),
                        );
                        gs = out_groups;
                        rel = Some(r);
                        break 'split;
                    }
                }
            }
        }
    }
    out.push_str(" with ");
    for (k, g) in gs.iter().enumerate() {
        let Some(o) = g.first().and_then(|&i| scene.objects.get(i)) else {
            continue;
        };
        if k == 1 {
            out.push(' ');
            out.push_str(rel.unwrap_or("and"));
            out.push(' ');
        } else if k > 1 {
            out.push_str(" and ");
        }
        out.push_str(&group_phrase(o, g.len()));
    }
    out
}

fn fine(perspective: &'static str, text: String) -> FineCaption {
    FineCaption { perspective, text }
}

/// A few short captions per scene, each about one attribute dimension of one object.
pub fn fine_captions(scene: &Scene) -> Vec<FineCaption> {
    let mut out = Vec::new();
    let gs = groups(scene);
    // attributes: fill + colour + shape, and size + shape.
    for g in gs.iter().take(3) {
        if let Some(o) = g.first().and_then(|&i| scene.objects.get(i)) {
            let s = format!(
                "{} {} {}",
                fill_word(o.filled),
                o.colour.name(),
                o.shape.name()
            );
            out.push(fine("attributes", with_article(&s)));
        }
    }
    if let Some(o) = scene.objects.first() {
        let s = format!("{} {}", o.size.name(), o.shape.name());
        out.push(fine("attributes", with_article(&s)));
    }
    // count: objects in total, and per shape of the first object.
    let n = scene.objects.len();
    let noun = if n == 1 { "object" } else { "objects" };
    out.push(fine("count", format!("{} {noun}", count_word(n))));
    if let Some(o) = scene.objects.first() {
        let k = scene.objects.iter().filter(|p| p.shape == o.shape).count();
        let noun = if k == 1 {
            o.shape.name()
        } else {
            o.shape.plural()
        };
        out.push(fine("count", format!("{} {noun}", count_word(k))));
    }
    // spatial: viewpoint, one relation, orientations.
    out.push(fine("spatial", format!("a {} view", scene.zoom.phrase())));
    'rel: for (i, a) in scene.objects.iter().enumerate() {
        for b in scene.objects.iter().skip(i + 1) {
            if key(a) == key(b) {
                continue;
            }
            if let Some(r) = relation(&a.bbox, &b.bbox) {
                let s = format!(
                    "{} {r} {}",
                    with_article(&format!("{} {}", a.colour.name(), a.shape.name())),
                    with_article(&format!("{} {}", b.colour.name(), b.shape.name()))
                );
                out.push(fine("spatial", s));
                break 'rel;
            }
        }
    }
    for g in &gs {
        if let Some(o) = g.first().and_then(|&i| scene.objects.get(i))
            && o.shape.oriented()
        {
            let s = format!("{} pointing {}", o.shape.name(), o.orientation.name());
            out.push(fine("spatial", with_article(&s)));
        }
    }
    // text: each label.
    for g in &gs {
        if let Some(c) = g
            .first()
            .and_then(|&i| scene.objects.get(i))
            .and_then(|o| o.label)
        {
            out.push(fine("text", label_phrase(c)));
            out.push(fine("text", format!("a sign with {}", label_phrase(c))));
        }
    }
    out
}

/// A short query about one kind of object ("a small filled green cross", "a green cross",
/// "a red arrow pointing up", "two blue squares"), with the test of which scenes it fits:
/// the renderer's metadata decides, so a batch can hold a query only where it fits no
/// other scene of the batch. `None` fields are left unsaid and match anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectQuery {
    /// The shape (always said).
    pub shape: Shape,
    /// The colour (always said).
    pub colour: Colour,
    /// The size class, if said.
    pub size: Option<Size>,
    /// Filled (`true`) or outlined, if said.
    pub filled: Option<bool>,
    /// Where the object points, if said (arrows and triangles only).
    pub orientation: Option<Orientation>,
    /// How many such objects the scene holds, exactly, if said.
    pub count: Option<usize>,
}

impl ObjectQuery {
    /// Size, fill, colour and shape of `o`: the form of `eval`'s short object queries.
    pub fn full(o: &SceneObject) -> Self {
        Self {
            size: Some(o.size),
            filled: Some(o.filled),
            ..Self::colour_shape(o)
        }
    }

    /// Colour and shape of `o` only ("a green cross").
    pub fn colour_shape(o: &SceneObject) -> Self {
        Self {
            shape: o.shape,
            colour: o.colour,
            size: None,
            filled: None,
            orientation: None,
            count: None,
        }
    }

    /// Whether object `o` is of the kind the query names (its count aside).
    pub fn fits_object(&self, o: &SceneObject) -> bool {
        o.shape == self.shape
            && o.colour == self.colour
            && self.size.is_none_or(|s| s == o.size)
            && self.filled.is_none_or(|f| f == o.filled)
            && self.orientation.is_none_or(|r| r == o.orientation)
    }

    /// Whether `scene` fits the query: it holds such an object (exactly `count` of them
    /// when a count is said).
    pub fn fits(&self, scene: &Scene) -> bool {
        let n = scene.objects.iter().filter(|o| self.fits_object(o)).count();
        match self.count {
            Some(c) => n == c,
            None => n > 0,
        }
    }

    /// The query's words, in the caption grammar's order: count or article, size, fill,
    /// colour, shape, orientation.
    pub fn text(&self) -> String {
        let n = self.count.unwrap_or(1);
        let mut words: Vec<&str> = Vec::new();
        if let Some(s) = self.size {
            words.push(s.name());
        }
        if let Some(f) = self.filled {
            words.push(fill_word(f));
        }
        words.push(self.colour.name());
        words.push(if n > 1 {
            self.shape.plural()
        } else {
            self.shape.name()
        });
        if let Some(r) = self.orientation {
            words.push("pointing");
            words.push(r.name());
        }
        let phrase = words.join(" ");
        if n > 1 {
            format!("{} {phrase}", count_word(n))
        } else {
            with_article(&phrase)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn articles_and_counts() {
        assert_eq!(with_article("orange star"), "an orange star");
        assert_eq!(with_article("red star"), "a red star");
        assert_eq!(with_article("outlined red star"), "an outlined red star");
        assert_eq!(count_word(3), "three");
        assert_eq!(label_phrase('Q'), "the letter q");
        assert_eq!(label_phrase('7'), "the digit 7");
    }

    #[test]
    fn vocabulary_is_sorted_unique_lowercase() {
        let v = vocabulary();
        assert!(v.windows(2).all(|w| w[0] < w[1]));
        assert!(v.iter().all(|w| !w.is_empty() && *w == w.to_lowercase()));
        assert!(v.len() < 160);
    }

    fn object(shape: Shape, colour: Colour, size: Size, filled: bool) -> SceneObject {
        SceneObject {
            shape,
            colour,
            size,
            filled,
            orientation: Orientation::Up,
            label: None,
            bbox: [0.0; 4],
        }
    }

    #[test]
    fn object_queries_say_what_they_test() {
        let cross = object(Shape::Cross, Colour::Green, Size::Small, true);
        let full = ObjectQuery::full(&cross);
        assert_eq!(full.text(), "a small filled green cross");
        assert_eq!(ObjectQuery::colour_shape(&cross).text(), "a green cross");
        let two = ObjectQuery {
            count: Some(2),
            ..ObjectQuery::colour_shape(&cross)
        };
        assert_eq!(two.text(), "two green crosses");
        let big = object(Shape::Cross, Colour::Green, Size::Large, false);
        let other = object(Shape::Square, Colour::Green, Size::Small, true);
        let scene = |objects: Vec<SceneObject>| Scene {
            seed: 0,
            setting: Setting::ALL[0],
            zoom: Zoom::Near,
            objects,
        };
        assert!(full.fits(&scene(vec![other.clone(), cross.clone()])));
        assert!(!full.fits(&scene(vec![other.clone(), big.clone()])));
        assert!(ObjectQuery::colour_shape(&cross).fits(&scene(vec![big.clone()])));
        assert!(two.fits(&scene(vec![cross.clone(), big.clone(), other.clone()])));
        assert!(!two.fits(&scene(vec![cross.clone(), big.clone(), cross.clone()])));
        assert!(!two.fits(&scene(vec![cross.clone()])));
        for word in full.text().split(' ').chain(two.text().split(' ')) {
            assert!(vocabulary().contains(&word), "{word} not in the vocabulary");
        }
    }
}
