//! The run's learning curve on disk: one JSON line per step in `OUT/steps.jsonl`, so a run
//! in the background (or one that went wrong) can be read afterwards, not only watched.
//! Lines are held in memory and appended at each checkpoint, so the file always ends at
//! the last checkpoint and a resumed run continues it without gaps or repeats.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::heads::HeadsLoss;
use super::{StepReport, TrainError};

/// The file name, inside a run's output folder.
pub const STEPS_FILE: &str = "steps.jsonl";

/// One line of [`STEPS_FILE`]: the scalar figures of a [`StepReport`].
#[derive(Debug, Serialize)]
struct StepLine {
    step: u64,
    loss: f64,
    accuracy: f64,
    lr: f64,
    grad_norm: f64,
    /// softmax(θ) after the step: GG, FG, GF, FF.
    similarity_weights: [f32; 4],
    beta: f64,
    seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    scene_heads: Option<HeadsLoss>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text_heads: Option<HeadsLoss>,
}

/// Collects step lines and appends them to `OUT/steps.jsonl` on [`StepLog::flush`].
pub(crate) struct StepLog {
    path: PathBuf,
    pending: String,
}

impl StepLog {
    /// A log in `out`. A fresh run (`resumed` false) starts the file again; a resumed one
    /// appends to it.
    pub(crate) fn open(out: &Path, resumed: bool) -> Result<Self, TrainError> {
        let path = out.join(STEPS_FILE);
        if !resumed {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(TrainError::io(&path, e));
                }
                _ => {}
            }
        }
        Ok(Self {
            path,
            pending: String::new(),
        })
    }

    /// Holds one step's line until the next flush.
    pub(crate) fn record(&mut self, r: &StepReport) {
        let line = StepLine {
            step: r.step,
            loss: r.loss,
            accuracy: r.accuracy,
            lr: r.lr,
            grad_norm: r.grad_norm,
            similarity_weights: r.similarity_weights,
            beta: r.beta,
            seconds: r.seconds,
            scene_heads: r.scene_heads,
            text_heads: r.text_heads,
        };
        // Plain numbers and options serialise without fail; a NaN becomes null.
        if let Ok(text) = serde_json::to_string(&line) {
            self.pending.push_str(&text);
            self.pending.push('\n');
        }
    }

    /// Appends the held lines to the file (at a checkpoint, and at the end of a run).
    pub(crate) fn flush(&mut self) -> Result<(), TrainError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| TrainError::io(&self.path, e))?;
        file.write_all(self.pending.as_bytes())
            .map_err(|e| TrainError::io(&self.path, e))?;
        self.pending.clear();
        Ok(())
    }
}
