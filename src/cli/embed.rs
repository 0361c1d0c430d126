//! `agff-lens embed`: global and perspective embeddings of images and texts.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::agff::PerspectiveEmbeddings;
use crate::model::EmbedInput;
use crate::model::image_io::{open_image, to_rgb8};

/// Options of `embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// `demo`, a local Hugging Face folder, or a Hub repo id (owner/name).
    #[arg(long)]
    pub model: String,
    /// An image to embed (repeatable; each is one item).
    #[arg(long = "image")]
    pub images: Vec<PathBuf>,
    /// A text to embed (repeatable; each is one item, after the images).
    #[arg(long = "text")]
    pub texts: Vec<String>,
    /// How the model runs and what it embeds with.
    #[command(flatten)]
    pub run: super::RunArgs,
    /// Print the prompt of every perspective branch.
    #[arg(long)]
    pub show_prompt: bool,
    /// Print JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct PerspectiveOut {
    name: String,
    input_ids: Vec<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    soft_positions: Vec<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<String>,
    embedding: Vec<f32>,
}

#[derive(Serialize)]
struct ItemOut {
    kind: &'static str,
    input: String,
    perspectives: Vec<PerspectiveOut>,
}

#[derive(Serialize)]
struct EmbedReport {
    model: String,
    weights_digest: String,
    items: Vec<ItemOut>,
}

/// Runs `embed`.
pub fn run(args: &EmbedArgs) -> anyhow::Result<()> {
    if args.images.is_empty() && args.texts.is_empty() {
        anyhow::bail!("nothing to embed: give at least one --image or --text");
    }
    let session = args.run.session(&args.model)?;
    let model = session.backbone.as_ref();
    let perspectives = &session.perspectives;
    let options = session.embed_options();
    let mut items: Vec<(&'static str, String, EmbedInput)> = Vec::new();
    for path in &args.images {
        let image = to_rgb8(&open_image(path)?);
        items.push((
            "image",
            path.display().to_string(),
            EmbedInput::image(image),
        ));
    }
    for text in &args.texts {
        let query = crate::session::read_text_query(model, text)
            .with_context(|| format!("text {text:?}"))?;
        for warning in query.warnings() {
            eprintln!("warning: in {text:?}: {warning}");
        }
        items.push(("text", text.clone(), EmbedInput::text(query.text)));
    }
    let mut report = EmbedReport {
        model: model.identity().name.clone(),
        weights_digest: model.identity().weights_digest.clone(),
        items: Vec::new(),
    };
    for (kind, label, input) in &items {
        let (unit, emb) = PerspectiveEmbeddings::embed(model, input, perspectives, &options)
            .with_context(|| format!("embedding {kind} {label:?}"))?;
        let vectors: Vec<Vec<f32>> = unit.tensor().squeeze(0)?.to_vec2()?;
        let prompts = if args.show_prompt {
            Some(model.show_prompt(input, perspectives)?)
        } else {
            None
        };
        let perspectives_out = emb
            .branches
            .into_iter()
            .zip(vectors)
            .enumerate()
            .map(|(i, (b, v))| PerspectiveOut {
                name: b.name,
                input_ids: b.input_ids,
                soft_positions: b.soft_positions,
                prompt: prompts.as_ref().map(|p| p[i].clone()),
                embedding: v,
            })
            .collect();
        report.items.push(ItemOut {
            kind,
            input: label.clone(),
            perspectives: perspectives_out,
        });
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "model {} (weights {}), {} perspectives: {}",
        report.model,
        report.weights_digest,
        perspectives.perspectives.len(),
        perspectives.names().join(", ")
    );
    for item in &report.items {
        println!("{} {:?}", item.kind, item.input);
        for p in &item.perspectives {
            let head: Vec<String> = p
                .embedding
                .iter()
                .take(4)
                .map(|v| format!("{v:+.4}"))
                .collect();
            println!(
                "  {:<12} {:>5} tokens  d={}  [{}, …]",
                p.name,
                p.input_ids.len(),
                p.embedding.len(),
                head.join(", ")
            );
            if let Some(prompt) = &p.prompt {
                println!("    prompt: {prompt:?}");
            }
        }
    }
    Ok(())
}
