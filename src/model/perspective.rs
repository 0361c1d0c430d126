//! Perspectives (method.md §1): a name, an instruction text and m learnable soft-prompt
//! vectors. The first perspective of a set is the global one; the others are the K
//! fine-grained ones.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{ModelError, Result};

/// The additive attention mask of one packed sequence
/// `[pad | prefix | suffix_0 | … | suffix_K]` (method.md §1): the prefix is causal; each
/// perspective's suffix sees the whole prefix and its own earlier tokens, never another
/// suffix; left-padding positions see only themselves and are seen by nobody.
///
/// Returns the row-major `[T, T]` mask, `T = pad + prefix + Σ lengths`, with 0 where a
/// query position may attend to a key and `masked` (−∞, or a large negative number where
/// a finite value is needed) where it may not. The one mask builder of both backbones.
pub fn branch_mask(pad: usize, prefix: usize, lengths: &[usize], masked: f32) -> Vec<f32> {
    let total = pad + prefix + lengths.iter().sum::<usize>();
    let mut mask = vec![masked; total * total];
    for (q, row) in mask.chunks_mut(total.max(1)).enumerate().take(total) {
        branch_mask_row(pad, prefix, lengths, q, row);
    }
    mask
}

/// Row `q` of [`branch_mask`], written into `row` (`T` long, already filled with the
/// masked value): zeros where query `q` may attend. Attention kernels build the mask one
/// block of rows at a time with it, so no `[T, T]` buffer is needed.
pub fn branch_mask_row(pad: usize, prefix: usize, lengths: &[usize], q: usize, row: &mut [f32]) {
    let lp = pad + prefix;
    if q < pad {
        row[q] = 0.0;
    } else if q < lp {
        row[pad..=q].fill(0.0);
    } else {
        let mut start = lp;
        for &len in lengths {
            if q < start + len {
                row[pad..lp].fill(0.0);
                row[start..=q].fill(0.0);
                return;
            }
            start += len;
        }
    }
}

/// One perspective.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Perspective {
    /// Short name shown in the UI and JSON (`global`, `attributes`, …).
    pub name: String,
    /// Instruction text appended after the input's content; may be empty.
    #[serde(default)]
    pub instruction: String,
    /// Number of learnable soft-prompt vectors after the instruction (0 for real models by
    /// default, so the token ids say everything the model saw).
    #[serde(default)]
    pub soft_tokens: usize,
}

impl Perspective {
    /// A perspective with this name and instruction and no soft tokens.
    pub fn new(name: &str, instruction: &str) -> Self {
        Self {
            name: name.into(),
            instruction: instruction.into(),
            soft_tokens: 0,
        }
    }
}

/// The global perspective followed by K fine-grained ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerspectiveSet {
    /// The 1+K perspectives: index 0 is the global one, 1..=K the fine-grained ones.
    pub perspectives: Vec<Perspective>,
}

impl PerspectiveSet {
    /// The default for real models: the global view and K = 4 fine-grained perspectives
    /// named for what MMVP-VLM probes. The instructions are short on purpose: every
    /// instruction token is computed once per perspective, so their length is what 1+K
    /// perspectives cost over one.
    pub fn default_real() -> Self {
        Self {
            perspectives: vec![
                Perspective::new("global", ""),
                Perspective::new("attributes", "Focus on colours, materials and states."),
                Perspective::new("count", "Focus on how many objects there are."),
                Perspective::new("spatial", "Focus on positions, orientation and viewpoint."),
                Perspective::new("text", "Focus on written text and structure."),
            ],
        }
    }

    /// Reads a set from JSON: either `{"perspectives":[…]}` or a bare list.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let set = match serde_json::from_str::<PerspectiveSet>(&text) {
            Ok(set) => set,
            Err(_) => PerspectiveSet {
                perspectives: serde_json::from_str(&text).map_err(|source| ModelError::Json {
                    path: path.to_path_buf(),
                    what: "a perspective set ({\"perspectives\":[{\"name\":…,\"instruction\":…}]})",
                    source,
                })?,
            },
        };
        set.validate().map_err(|reason| ModelError::BadConfig {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(set)
    }

    /// Checks that there is a global perspective and names are unique and non-empty.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.perspectives.is_empty() {
            return Err("a perspective set needs at least the global perspective".into());
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.perspectives {
            if p.name.trim().is_empty() {
                return Err("every perspective needs a name".into());
            }
            if !seen.insert(p.name.as_str()) {
                return Err(format!("perspective name {:?} is used twice", p.name));
            }
        }
        Ok(())
    }

    /// Number of fine-grained perspectives K.
    pub fn k(&self) -> usize {
        self.perspectives.len().saturating_sub(1)
    }

    /// The names in order.
    pub fn names(&self) -> Vec<&str> {
        self.perspectives.iter().map(|p| p.name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_mask_is_causal_in_the_prefix_and_keeps_branches_apart() {
        // pad 1, prefix 2, suffixes of 2 and 1: T = 6.
        let m = branch_mask(1, 2, &[2, 1], f32::NEG_INFINITY);
        let allowed =
            |q: usize| -> Vec<usize> { (0..6).filter(|&k| m[q * 6 + k] == 0.0).collect() };
        assert_eq!(allowed(0), [0]); // padding: itself only
        assert_eq!(allowed(1), [1]);
        assert_eq!(allowed(2), [1, 2]);
        assert_eq!(allowed(3), [1, 2, 3]); // branch 0, first token
        assert_eq!(allowed(4), [1, 2, 3, 4]);
        assert_eq!(allowed(5), [1, 2, 5]); // branch 1 never sees branch 0
        // Nobody attends to padding but padding itself.
        assert!((1..6).all(|q| m[q * 6] == f32::NEG_INFINITY));
        assert!(m.iter().all(|&v| v == 0.0 || v == f32::NEG_INFINITY));
    }

    #[test]
    fn reads_both_file_shapes_and_rejects_duplicates() {
        let dir = std::env::temp_dir().join(format!("agff-persp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.json");
        std::fs::write(
            &a,
            r#"{"perspectives":[{"name":"global"},{"name":"colour","instruction":"Colours."}]}"#,
        )
        .unwrap();
        let set = PerspectiveSet::from_file(&a).unwrap();
        assert_eq!(set.k(), 1);
        assert_eq!(set.names(), ["global", "colour"]);
        let b = dir.join("b.json");
        std::fs::write(&b, r#"[{"name":"g"},{"name":"g"}]"#).unwrap();
        let err = PerspectiveSet::from_file(&b).unwrap_err().to_string();
        assert!(err.contains("b.json") && err.contains("twice"), "{err}");
        let c = dir.join("c.json");
        std::fs::write(&c, "{not json").unwrap();
        assert!(
            PerspectiveSet::from_file(&c)
                .unwrap_err()
                .to_string()
                .contains("c.json")
        );
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(PerspectiveSet::default_real().k(), 4);
    }
}
