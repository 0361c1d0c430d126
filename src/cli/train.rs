//! `agff-lens train`: the demo recipe from scratch, the three-model ablation, or a
//! fine-tune of an existing model on captioned images.

use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use crate::model::{DeviceChoice, PerspectiveSet};
use crate::session::defaults;
use crate::train::{
    CaptionPair, DataSource, TrainControl, TrainEvent, TrainSettings, TrainSummary, fine_tune,
    load_caption_dataset_with, train_demo,
};

/// What to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Recipe {
    /// The demo MLLM from scratch on procedural scenes.
    Demo,
    /// Three demo models with the same budget, one after the other, into OUT/agff-ega,
    /// OUT/agff (α=0) and OUT/global (K=0, α=0).
    Ablation,
}

/// Options of `train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Train a model from scratch with a recipe (`demo`, `ablation`).
    #[arg(long, conflicts_with_all = ["model", "data"])]
    pub recipe: Option<Recipe>,
    /// Fine-tune this model (`demo`, a folder or a repo id): soft prompts and fusion.
    #[arg(long, requires = "data")]
    pub model: Option<String>,
    /// Fine-tune data: a folder of images with sidecar .txt captions, a folder with a
    /// .jsonl, or a .jsonl of {"image","text"}; `scenes` for procedural scenes.
    #[arg(long)]
    pub data: Option<String>,
    /// Where checkpoints go (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Optimisation steps [default: 1800 for a recipe, 60 for a fine-tune].
    #[arg(long)]
    pub steps: Option<u64>,
    /// Pairs per batch [default: 32 for a recipe, 16 for a fine-tune].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Peak learning rate (AdamW, linear warm-up then cosine).
    #[arg(long, default_value_t = defaults::LR)]
    pub lr: f64,
    /// Warm-up steps [default: a tenth of the steps, at most 100].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// EGA strength α (0: plain InfoNCE).
    #[arg(long = "ega-alpha", default_value_t = defaults::EGA_ALPHA)]
    pub alpha: f64,
    /// InfoNCE temperature τ [default: 0.05 for a recipe, which trains from scratch and
    /// learns faster with a softer start; 0.02, the method's default, for a fine-tune].
    #[arg(long)]
    pub tau: Option<f64>,
    /// Fine-grained perspectives of the demo recipe (0: global only) [default: 4].
    #[arg(long)]
    pub k: Option<usize>,
    /// Seed of a recipe's initial weights and of the procedural scenes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint every N steps.
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Stop each model after this many minutes (0: no limit).
    #[arg(long, default_value_t = 0.0)]
    pub minutes: f64,
    /// Steps of the vision tower's dense pre-training before a recipe's contrastive
    /// stage (0: none; the tower then learns from captions alone).
    #[arg(long)]
    pub vision_steps: Option<u64>,
    /// Stop the pre-training after this many minutes (0: no limit).
    #[arg(long)]
    pub vision_minutes: Option<f64>,
    /// Steps of the language model's pre-training on the text heads' tasks (which object
    /// a statement puts on the left…), on texts alone, before a recipe's contrastive stage
    /// (0: none). Its heads go on into the contrastive stage when --text-heads is on.
    #[arg(long)]
    pub text_steps: Option<u64>,
    /// Give the text heads two more tasks: the fill and colour of the first object a text
    /// names ("filled red"), and the viewpoint it names ("far"), on the attributes and
    /// spatial text embeddings (not the global one).
    #[arg(long)]
    pub more_text_tasks: bool,
    /// Give the text heads a task asking the first size a text names ("small", "large"),
    /// on the attributes text embedding (not the global one).
    #[arg(long)]
    pub size_text_task: bool,
    /// The global text embedding's head answers the fill-and-colour task too, and the size
    /// task asks the size with the colour after it ("small filled red"), there and on the
    /// attributes text embedding; with --number-text-task, the number task too. Needs at
    /// least one of --more-text-tasks, --size-text-task and --number-text-task.
    #[arg(long)]
    pub text_tasks_on_global: bool,
    /// Give the text heads a task asking the number and colour of the first object a text
    /// names ("two … red", "no red"), on the count text embedding (and the global one with
    /// --text-tasks-on-global).
    #[arg(long)]
    pub number_text_task: bool,
    /// Go on training the pre-trained tower in the contrastive stage (default: frozen).
    #[arg(long)]
    pub tune_vision: bool,
    /// Give the recipe's new model 2-D grid positions on its visual tokens (a fixed
    /// sine-cosine embedding of row and column in the language model's inputs).
    #[arg(long)]
    pub visual_positions_2d: bool,
    /// Weight of the recipe's scene heads: an auxiliary loss asking each image embedding,
    /// through a linear head per perspective, for its scene's counts, colours, columns,
    /// rows, orientations and characters (0: none).
    #[arg(long)]
    pub scene_heads: Option<f64>,
    /// Weight of the recipe's text heads: an auxiliary loss asking each text embedding,
    /// through a linear head, which object the text puts on the left, right, top or
    /// bottom of a relation it states, and which orientation and characters it names
    /// (0: none).
    #[arg(long)]
    pub text_heads: Option<f64>,
    /// Make the scene (image) heads cosine classifiers at this scale (a logit is scale ×
    /// the cosine of the embedding and the class's weight row, so a head cannot answer
    /// from a hair's difference between two embeddings) [default: 0, linear heads].
    #[arg(long)]
    pub head_scale: Option<f64>,
    /// The same for the text heads [default: 0, linear heads].
    #[arg(long)]
    pub text_head_scale: Option<f64>,
    /// Factor on the learning rate of a tuned tower (--tune-vision) [default: 0.1].
    #[arg(long)]
    pub vision_lr_scale: Option<f64>,
    /// Continue the run saved in --out.
    #[arg(long)]
    pub resume: bool,
    /// Perspectives of a fine-tune (JSON); default: the model's own.
    #[arg(long)]
    pub perspectives: Option<PathBuf>,
    /// Keep the fusion θ, ρ fixed.
    #[arg(long)]
    pub freeze_fusion: bool,
    /// Weights dtype of a fine-tuned model (f32 whatever the device: training keeps f32).
    #[arg(long, value_enum, default_value_t = super::Dtype::F32)]
    pub dtype: super::Dtype,
    /// Compute device of a fine-tune: cpu, cuda[:N], metal[:N] (recipes train on the CPU).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// No progress bar; one line per checkpoint.
    #[arg(long)]
    pub quiet: bool,
    /// A very small model (quick runs and tests).
    #[arg(long, hide = true)]
    pub tiny: bool,
}

impl TrainArgs {
    /// The run's settings: the shared defaults of a recipe or a fine-tune
    /// ([`crate::session::defaults`]), then what was given.
    fn settings(&self) -> TrainSettings {
        let recipe = self.recipe.is_some();
        let steps = self.steps.unwrap_or(if recipe {
            defaults::RECIPE_STEPS
        } else {
            defaults::FINE_TUNE_STEPS
        });
        let base = if recipe {
            defaults::recipe(steps)
        } else {
            defaults::fine_tune(steps)
        };
        TrainSettings {
            batch: self.batch.unwrap_or(base.batch),
            lr: self.lr,
            warmup: self.warmup.unwrap_or(base.warmup).min(steps),
            alpha: self.alpha,
            tau: self.tau.unwrap_or(base.tau),
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            k: self.k.unwrap_or(base.k),
            train_fusion: !self.freeze_fusion,
            time_budget_s: (self.minutes * 60.0).round() as u64,
            tiny: self.tiny,
            vision_steps: self.vision_steps.unwrap_or(base.vision_steps),
            vision_budget_s: self
                .vision_minutes
                .map_or(base.vision_budget_s, |m| (m * 60.0).round() as u64),
            text_steps: self.text_steps.unwrap_or(base.text_steps),
            more_text_tasks: self.more_text_tasks,
            size_text_task: self.size_text_task,
            text_tasks_on_global: self.text_tasks_on_global,
            number_text_task: self.number_text_task,
            freeze_vision: !self.tune_vision,
            vision_lr_scale: self.vision_lr_scale.unwrap_or(base.vision_lr_scale),
            visual_position_2d: self.visual_positions_2d,
            scene_heads: self.scene_heads.unwrap_or(base.scene_heads),
            text_heads: self.text_heads.unwrap_or(base.text_heads),
            head_scale: self.head_scale.unwrap_or(base.head_scale),
            text_head_scale: self.text_head_scale.unwrap_or(base.text_head_scale),
            ..base
        }
    }

    /// The options given that only a recipe reads (a fine-tune trains soft prompts and the
    /// fusion of an existing model, whose tower, perspectives and heads it keeps).
    fn recipe_only_given(&self) -> Vec<&'static str> {
        [
            ("--k", self.k.is_some()),
            ("--vision-steps", self.vision_steps.is_some()),
            ("--vision-minutes", self.vision_minutes.is_some()),
            ("--text-steps", self.text_steps.is_some()),
            ("--more-text-tasks", self.more_text_tasks),
            ("--size-text-task", self.size_text_task),
            ("--text-tasks-on-global", self.text_tasks_on_global),
            ("--number-text-task", self.number_text_task),
            ("--tune-vision", self.tune_vision),
            ("--visual-positions-2d", self.visual_positions_2d),
            ("--scene-heads", self.scene_heads.is_some()),
            ("--text-heads", self.text_heads.is_some()),
            ("--head-scale", self.head_scale.is_some()),
            ("--text-head-scale", self.text_head_scale.is_some()),
            ("--vision-lr-scale", self.vision_lr_scale.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect()
    }
}

/// Runs `train`.
pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    let recipe_only = args.recipe_only_given();
    if args.recipe.is_none() && !recipe_only.is_empty() {
        anyhow::bail!(
            "{} only {} to a recipe (--recipe demo|ablation); a fine-tune (--model … --data …) trains the soft prompts and the fusion of the model it loads",
            recipe_only.join(", "),
            if recipe_only.len() == 1 {
                "applies"
            } else {
                "apply"
            }
        );
    }
    if args.recipe.is_some() && args.device != DeviceChoice::Cpu {
        // The recipes' kernels (fused GELU, im2col, the optimiser) are written for the CPU
        // they are budgeted on: say so rather than ignore the flag silently.
        eprintln!(
            "note: the training recipes run on the CPU; --device {} applies to fine-tunes (--model)",
            args.device
        );
    }
    match (args.recipe, &args.model) {
        (Some(Recipe::Demo), _) => {
            let s = with_progress(args, "demo", |control, tx| {
                train_demo(&args.settings(), &args.out, args.resume, control, Some(tx))
            })?;
            print_summary(&s);
            Ok(())
        }
        (Some(Recipe::Ablation), _) => {
            let variants = [
                ("global", 0usize, 0.0f64),
                ("agff", 4, 0.0),
                ("agff-ega", 4, args.alpha),
            ];
            for (name, k, alpha) in variants {
                let mut settings = args.settings();
                settings.k = k;
                settings.alpha = alpha;
                let out = args.out.join(name);
                let s = with_progress(args, name, |control, tx| {
                    train_demo(&settings, &out, args.resume, control, Some(tx))
                })?;
                print_summary(&s);
            }
            Ok(())
        }
        (None, Some(model)) => {
            let backbone = crate::session::load_backbone(
                model,
                &crate::session::LoadOptions {
                    dtype: args.dtype.dtype(),
                    device: args.device,
                    ..crate::session::LoadOptions::default()
                },
                &mut super::progress::TerminalDownload::new(),
            )?;
            let perspectives = match &args.perspectives {
                Some(p) => PerspectiveSet::from_file(p)?,
                None => backbone.default_perspectives(),
            };
            let data = match args.data.as_deref() {
                Some("scenes") => DataSource::scenes(args.seed),
                Some(path) => DataSource::Pairs(check_dataset(args, Path::new(path))?),
                None => anyhow::bail!("--model needs --data"),
            };
            let settings = args.settings();
            let s = with_progress(args, "fine-tune", |control, tx| {
                fine_tune(
                    backbone.as_ref(),
                    &perspectives,
                    &data,
                    &settings,
                    &args.out,
                    control,
                    Some(tx),
                )
            })?;
            print_summary(&s);
            Ok(())
        }
        (None, None) => anyhow::bail!(
            "say what to train: --recipe demo|ablation, or --model M --data DIR to fine-tune"
        ),
    }
}

fn print_summary(s: &TrainSummary) {
    eprintln!(
        "{} steps in {:.1} s ({}); last loss {:.4}, in-batch accuracy {:.3}; saved in {}",
        s.steps_done,
        s.seconds,
        if s.stopped_early {
            "stopped early"
        } else {
            "complete"
        },
        s.final_loss,
        s.final_accuracy,
        s.out.display()
    );
}

/// Reads a captioned data set, with a progress bar while its images are checked (they are
/// all decoded once; a folder of large photos takes a while).
fn check_dataset(args: &TrainArgs, path: &Path) -> anyhow::Result<Vec<CaptionPair>> {
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("checking images [{elapsed_precise}] {bar:30} {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let pairs = load_caption_dataset_with(path, &|| false, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    Ok(pairs?)
}

/// Runs a trainer on a worker thread and draws its events as a progress bar.
fn with_progress<F>(args: &TrainArgs, label: &str, train: F) -> anyhow::Result<TrainSummary>
where
    F: FnOnce(
            &TrainControl,
            std::sync::mpsc::SyncSender<TrainEvent>,
        ) -> Result<TrainSummary, crate::train::TrainError>
        + Send,
{
    let control = TrainControl::default();
    let (tx, rx) = sync_channel(64);
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| train(&control, tx));
        let bar = if args.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(args.settings().steps)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} (eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(label.to_string());
        let mut last = String::new();
        let mut stage = String::new();
        for event in rx {
            match event {
                TrainEvent::Started { resumed_from, .. } => bar.set_position(resumed_from),
                TrainEvent::Step(r) => {
                    bar.set_position(r.step);
                    last = format!(
                        "loss {:.4} acc {:.2} lr {:.2e} {:.2}s/step",
                        r.loss, r.accuracy, r.lr, r.seconds
                    );
                    if let Some(h) = r.scene_heads {
                        last.push_str(&format!(" heads {:.3} ({:.2})", h.loss, h.accuracy));
                    }
                    if let Some(h) = r.text_heads {
                        last.push_str(&format!(" text heads {:.3} ({:.2})", h.loss, h.accuracy));
                    }
                    bar.set_message(last.clone());
                    // The tower's and the text pre-training write no checkpoints: a quiet run still
                    // says how it goes, at the checkpoint interval.
                    if args.quiet
                        && (stage == "vision" || stage == "text")
                        && r.step % args.checkpoint_every.max(1) == 0
                    {
                        eprintln!("{label}/{stage}: step {}: {last}", r.step);
                    }
                }
                TrainEvent::Checkpoint { step, dir } => {
                    if args.quiet {
                        eprintln!(
                            "{label}: step {step}: {last}; checkpoint in {}",
                            dir.display()
                        );
                    }
                }
                TrainEvent::Paused => {}
                TrainEvent::Finished(_) => bar.finish(),
                TrainEvent::Stage { name, total_steps } => {
                    stage.clone_from(&name);
                    bar.set_length(total_steps);
                    bar.set_position(0);
                    bar.set_prefix(format!("{label}/{name}"));
                    bar.reset_elapsed();
                }
                TrainEvent::Note(line) => {
                    if args.quiet {
                        eprintln!("{label}: {line}");
                    } else {
                        bar.println(format!("{label}: {line}"));
                    }
                }
            }
        }
        let result = worker
            .join()
            .map_err(|_| anyhow::anyhow!("the training thread panicked"))?;
        result.with_context(|| format!("training {label}"))
    })
}
