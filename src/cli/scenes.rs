//! `agff-lens scenes`: procedural scenes with captions and metadata, and the P-MMVP export
//! in the MMVP-VLM folder layout.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::scenes::{MmvpPattern, export_mmvp, pmmvp_pairs, write_scenes};

/// Options of `scenes`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ScenesArgs {
    /// `pmmvp`, or none to write scenes into --out.
    #[command(subcommand)]
    pub command: Option<ScenesCommand>,
    /// Output folder (images + scenes.jsonl).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Number of scenes.
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    /// Seed of the scenes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// What `scenes` writes instead of plain scenes.
#[derive(Debug, Subcommand)]
pub enum ScenesCommand {
    /// Export the P-MMVP pairs in the MMVP-VLM layout (images + Questions.csv).
    Pmmvp {
        /// Output folder (created).
        #[arg(long)]
        out: PathBuf,
        /// Pairs per pattern.
        #[arg(long, default_value_t = 15)]
        pairs: usize,
        /// Seed of the pairs.
        #[arg(long, default_value_t = crate::scenes::eval::PMMVP_SEED)]
        seed: u64,
    },
}

/// Runs `scenes`.
pub fn run(args: &ScenesArgs) -> anyhow::Result<()> {
    match &args.command {
        Some(ScenesCommand::Pmmvp { out, pairs, seed }) => {
            let all: Vec<_> = MmvpPattern::ALL
                .iter()
                .flat_map(|&p| pmmvp_pairs(p, *pairs, *seed))
                .collect();
            export_mmvp(out, &all)?;
            eprintln!("wrote {} pairs to {}", all.len(), out.display());
            Ok(())
        }
        None => {
            let Some(out) = &args.out else {
                anyhow::bail!("give --out DIR (or `scenes pmmvp --out DIR`)");
            };
            let n = write_scenes(out, args.count, args.seed)?;
            eprintln!("wrote {n} scenes to {}", out.display());
            Ok(())
        }
    }
}
