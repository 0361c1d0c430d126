//! The `agff-lens` command line: the edge where library errors become messages and exit
//! codes (0 success, 1 failure, 2 usage errors and commands that are not available yet).

mod bench;
mod bench_search;
mod embed;
mod eval;
mod explain;
mod progress;
mod scenes;
mod search;
mod train;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// See why a multimodal embedding model retrieved what it retrieved.
#[derive(Debug, Parser)]
#[command(name = "agff-lens", version, about, long_about = None)]
pub struct Cli {
    /// The command to run (none: `gui`).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands; without one, `gui` runs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open the desktop app (the default).
    Gui(GuiArgs),
    /// Embed images and texts into global and perspective embeddings.
    Embed(embed::EmbedArgs),
    /// Rank a folder of images for a text or image query by the fused AGFF score.
    Search(search::SearchArgs),
    /// Explain one result: pattern scores, fusion weights and per-perspective heatmaps.
    Explain(explain::ExplainArgs),
    /// Evaluate a model: the P-MMVP pair benchmark, MMVP-VLM folders, scene retrieval.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Train the demo model or fine-tune a model with AGFF InfoNCE and EGA.
    Train(train::TrainArgs),
    /// Generate procedural scenes with captions and metadata (or export P-MMVP).
    Scenes(scenes::ScenesArgs),
    /// Measure speed: fusion scoring, model throughput, search.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// What `bench` measures.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Score Q queries × C candidates with K perspectives and compare the rate with a plain
    /// matrix product of the same FLOP count.
    Fusion(bench::FusionArgs),
    /// Items per second of a model for one perspective and for 1+K perspectives.
    Model(bench::ModelArgs),
    /// Gallery embedding throughput and search latency.
    Search(bench_search::SearchBenchArgs),
    /// Seconds per step of the demo tower's dense pre-training (stage 1 of the recipe).
    Tower(bench::TowerArgs),
    /// Seconds per step of the demo recipe's contrastive training (stage 2: AGFF + EGA
    /// with the scene and text heads).
    Contrastive(bench::ContrastiveArgs),
}

/// Options of `gui`.
#[derive(Debug, Args, Default)]
pub struct GuiArgs {
    /// Folder of the embedding cache and the demo scenes (default: the user cache folder,
    /// or AGFF_LENS_CACHE).
    #[arg(long)]
    pub cache: Option<std::path::PathBuf>,
    /// Compute device for the models: `cpu`, `cuda[:N]`, `metal[:N]` (GPU back-ends need the
    /// `cuda` or `metal` build feature).
    #[arg(long, default_value = "cpu")]
    pub device: crate::model::DeviceChoice,
    /// The view the window opens on.
    #[arg(long, value_enum, default_value_t = crate::app::Tab::Search)]
    pub view: crate::app::Tab,
    /// A text query to run as soon as the demo gallery is indexed.
    #[arg(long)]
    pub query: Option<String>,
}

/// A command that exists in the interface but is not implemented in this build.
#[derive(Debug, thiserror::Error)]
#[error("`agff-lens {0}` is not available yet in this version")]
pub struct NotAvailable(pub &'static str);

/// Weights dtype of a model (`--dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Dtype {
    /// 32-bit floats.
    #[default]
    F32,
    /// bfloat16: half the memory, f32's range.
    Bf16,
    /// IEEE half precision: half the memory, a narrower range.
    F16,
}

impl Dtype {
    /// candle's dtype.
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Dtype::F32 => candle_core::DType::F32,
            Dtype::Bf16 => candle_core::DType::BF16,
            Dtype::F16 => candle_core::DType::F16,
        }
    }
}

/// How a model runs and what it embeds with: shared by every command that takes a model.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Weights dtype (default: the device's, [`crate::model::DeviceChoice::default_dtype`]:
    /// bf16 on CUDA, f32 elsewhere).
    #[arg(long, value_enum)]
    pub dtype: Option<Dtype>,
    /// Compute device: `cpu`, `cuda[:N]`, `metal[:N]`.
    #[arg(long, default_value = "cpu")]
    pub device: crate::model::DeviceChoice,
    /// A JSON perspective set: {"perspectives":[{"name":…,"instruction":…}]} (default: the
    /// model's own).
    #[arg(long, conflicts_with = "tuned")]
    pub perspectives: Option<std::path::PathBuf>,
    /// A fine-tune's output folder (`train --model M --data D --out DIR`, or the app's
    /// saved run): embed and score with its perspectives, soft prompts and fusion.
    #[arg(long)]
    pub tuned: Option<std::path::PathBuf>,
    /// Cut a query text longer than the model reads (Qwen3-VL: 8,192 tokens with its
    /// prompt) to fit, with a warning, instead of refusing it.
    #[arg(long)]
    pub truncate: bool,
    /// How a Qwen3-VL model resizes images: `embedder` (as the released
    /// Qwen3-VL-Embedding does: Pillow's bicubic, 4,096–1,843,200 pixels) or `processor`
    /// (transformers' processor and preprocessor_config.json's budget). Default: `embedder`
    /// for a Qwen3-VL-Embedding release, else `processor`.
    #[arg(long, value_enum)]
    pub preprocess: Option<Preprocess>,
    /// Fewest pixels an image is resized to (overrides the profile's).
    #[arg(long)]
    pub min_pixels: Option<usize>,
    /// Most pixels an image is resized to (overrides the profile's): fewer visual tokens,
    /// faster on a CPU, a different embedding.
    #[arg(long)]
    pub max_pixels: Option<usize>,
    /// Matryoshka: keep the first N dimensions of every embedding, then L2-renormalise
    /// (Qwen3-VL-Embedding is trained for such prefixes; part of the cache key).
    #[arg(long)]
    pub dim: Option<usize>,
}

/// `--preprocess`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preprocess {
    /// The released embedder's path (`qwen_vl_utils.fetch_image`).
    Embedder,
    /// transformers' processor resizing itself.
    Processor,
}

impl RunArgs {
    /// Loads `model` (terminal progress bars for a download) and applies `--perspectives`
    /// or `--tuned`.
    pub(crate) fn session(&self, model: &str) -> anyhow::Result<crate::session::Session> {
        use crate::model::loader::{ImageOptions, ProfileKind};
        let options = crate::session::LoadOptions {
            dtype: self
                .dtype
                .map_or_else(|| self.device.default_dtype(), Dtype::dtype),
            device: self.device,
            images: ImageOptions {
                profile: self.preprocess.map(|p| match p {
                    Preprocess::Embedder => ProfileKind::Embedder,
                    Preprocess::Processor => ProfileKind::Processor,
                }),
                min_pixels: self.min_pixels,
                max_pixels: self.max_pixels,
            },
            ..crate::session::LoadOptions::default()
        };
        let mut progress = progress::TerminalDownload::new();
        let mut session = crate::session::Session::load(model, &options, &mut progress)?;
        let prep = &session.backbone.identity().preprocess;
        if prep.starts_with("siglip") {
            eprintln!("images: {prep} (resized to the processor's size, aspect ratio not kept)");
        } else if !prep.is_empty() {
            eprintln!("images: {prep} pixels (--preprocess, --min-pixels, --max-pixels)");
        }
        if let Some(path) = &self.perspectives {
            session.set_perspectives(crate::model::PerspectiveSet::from_file(path)?)?;
        }
        if let Some(dir) = &self.tuned {
            session.apply_tuned(dir)?;
        }
        session.truncate = self.truncate;
        session.set_dim(self.dim)?;
        Ok(session)
    }
}

/// A text or an image query (`search`, `explain`).
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// A text query.
    #[arg(
        long,
        conflicts_with = "query_image",
        required_unless_present = "query_image"
    )]
    pub query: Option<String>,
    /// An image query.
    #[arg(long)]
    pub query_image: Option<std::path::PathBuf>,
}

impl QueryArgs {
    /// The query as model input, checked by [`crate::session::read_text_query`]: one that
    /// holds nothing is refused; unknown words and dropped characters are warned about.
    pub(crate) fn input(
        &self,
        backbone: &dyn crate::model::Backbone,
    ) -> anyhow::Result<crate::model::EmbedInput> {
        use crate::model::image_io::{open_image, to_rgb8};
        match (&self.query, &self.query_image) {
            (Some(text), _) => {
                let query = crate::session::read_text_query(backbone, text)?;
                for warning in query.warnings() {
                    eprintln!("warning: {warning}");
                }
                Ok(crate::model::EmbedInput::text(query.text))
            }
            (None, Some(path)) => Ok(crate::model::EmbedInput::image(to_rgb8(&open_image(path)?))),
            (None, None) => anyhow::bail!("give --query TEXT or --query-image PATH"),
        }
    }
}

/// The raw bytes of a path that is not valid UTF-8 (its JSON text is then lossy and a
/// script could not open it), for a `*_bytes` field beside the text; `None` otherwise.
pub(crate) fn non_utf8_bytes(path: &std::path::Path) -> Option<Vec<u8>> {
    match path.to_str() {
        Some(_) => None,
        None => Some(path.as_os_str().as_encoded_bytes().to_vec()),
    }
}

/// Parses the process arguments and runs the command.
pub fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if err.downcast_ref::<NotAvailable>().is_some() {
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
            eprintln!("error: {}", error_message(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause once: library errors often name their cause in
/// their own message too (`{path}: {source}`), and printing the chain blindly repeats it.
fn error_message(err: &anyhow::Error) -> String {
    let mut message = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGFF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,hf_hub=off,hf_xet=off"));
    // A second initialisation (tests calling `run` twice) is harmless.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let command = cli.command.unwrap_or(Command::Gui(GuiArgs::default()));
    match command {
        Command::Gui(args) => crate::app::run(args.cache, args.device, args.view, args.query)
            .map_err(|e| anyhow::anyhow!("cannot open the app window: {e}")),
        Command::Embed(args) => embed::run(&args),
        Command::Search(args) => search::run(&args),
        Command::Explain(args) => explain::run(&args),
        Command::Eval(cmd) => eval::run(cmd),
        Command::Train(args) => train::run(&args),
        Command::Scenes(args) => scenes::run(&args),
        Command::Bench(BenchCommand::Fusion(args)) => bench::fusion(&args),
        Command::Bench(BenchCommand::Model(args)) => bench::model(&args),
        Command::Bench(BenchCommand::Search(args)) => bench_search::run(&args),
        Command::Bench(BenchCommand::Tower(args)) => bench::tower(&args),
        Command::Bench(BenchCommand::Contrastive(args)) => bench::contrastive(&args),
    }
}
