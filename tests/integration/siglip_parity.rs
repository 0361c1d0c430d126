//! Our SigLIP backbone against Hugging Face transformers 5.23 on a tiny random checkpoint of
//! the real architecture (`tests/fixtures/make_siglip.py` writes it and the references;
//! these tests need no Python).

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use agff_lens::model::image_io::{open_image, to_rgb8};
use agff_lens::model::siglip::Siglip;
use agff_lens::model::{Backbone, EmbedInput, EmbedOptions, ModelError, PerspectiveSet};
use candle_core::{DType, Device, Tensor};
use common::{cosine, max_abs};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tiny() -> PathBuf {
    fixtures().join("siglip/tiny")
}

fn reference(file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("siglip/reference").join(file), &Device::Cpu)
        .unwrap()
}

fn cases() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("siglip/reference/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load() -> Siglip {
    Siglip::load(&tiny(), DType::F32, &Device::Cpu).unwrap()
}

fn image(case: &serde_json::Value) -> image::RgbImage {
    to_rgb8(&open_image(&fixtures().join(case["image"].as_str().unwrap())).unwrap())
}

#[test]
fn pixel_values_equal_the_siglip_image_processor_bicubic_and_bilinear() {
    let mut model = load();
    for case in cases()["images"].as_array().unwrap() {
        let r = reference(case["file"].as_str().unwrap());
        let img = image(case);
        let want = &r["pixel_values"];
        let got =
            Tensor::from_vec(model.pixel_values(&img).unwrap(), want.dims(), &Device::Cpu).unwrap();
        let err = max_abs(&got, want);
        eprintln!("{}: bicubic max |Δ pixel| = {err:e}", case["image"]);
        assert!(
            err <= 1e-6,
            "{}: pixel values differ by {err}",
            case["image"]
        );
    }
    let mut bilinear = model.processor().clone();
    bilinear.resample = 2;
    model.set_processor(bilinear);
    assert_eq!(model.identity().preprocess, "siglip 32x32 bilinear");
    for case in cases()["images"].as_array().unwrap() {
        let r = reference(case["file"].as_str().unwrap());
        let img = image(case);
        let want = &r["pixel_values_bilinear"];
        let got =
            Tensor::from_vec(model.pixel_values(&img).unwrap(), want.dims(), &Device::Cpu).unwrap();
        let err = max_abs(&got, want);
        assert!(
            err <= 1e-6,
            "{}: bilinear pixel values differ by {err}",
            case["image"]
        );
        // The two filters give different pixels, so each comparison means something.
        assert!(max_abs(&r["pixel_values"], want) > 0.01);
    }
}

#[test]
fn patch_tokens_and_image_embeddings_match_transformers() {
    let model = load();
    for case in cases()["images"].as_array().unwrap() {
        let r = reference(case["file"].as_str().unwrap());
        let img = image(case);
        let label = case["image"].as_str().unwrap();
        let err = max_abs(&model.patch_tokens(&img).unwrap(), &r["patch_tokens"]);
        assert!(err <= 1e-5, "{label}: patch tokens differ by {err}");
        let emb = model.image_embedding(&img).unwrap();
        let err = max_abs(&emb, &r["image_embeds"]);
        let cos = cosine(&emb, &r["image_embeds"]);
        eprintln!("{label}: max |Δ image embedding| = {err:e}, cosine {cos:.9}");
        assert!(err <= 1e-5, "{label}: image embedding differs by {err}");

        // The backbone's embedding is the same vector, with the head's view of the image.
        let out = model
            .embed(
                &EmbedInput::image(img),
                &model.default_perspectives(),
                &EmbedOptions {
                    attention_layers: 1,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(out.vectors.dims(), &[1, 32]);
        assert!(max_abs(&out.vectors.get(0).unwrap(), &emb) == 0.0);
        let visual = out.visual.unwrap();
        assert_eq!(visual.grid, (4, 4));
        assert_eq!(visual.hidden.dims(), &[16, 32]);
        let attention = out.branches[0].attention_to_visual.clone().unwrap();
        assert_eq!(attention.len(), 16);
        assert!((attention.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}

#[test]
fn text_ids_and_text_embeddings_match_transformers() {
    let model = load();
    for case in cases()["texts"].as_array().unwrap() {
        let r = reference(case["file"].as_str().unwrap());
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = r["input_ids"]
            .to_dtype(DType::U32)
            .unwrap()
            .to_vec1()
            .unwrap();
        let ids = model.text_ids(text, false).unwrap();
        assert_eq!(ids, want, "{text:?}: token ids");
        let emb = model.text_embedding(&ids).unwrap();
        let err = max_abs(&emb, &r["text_embeds"]);
        eprintln!("{text:?}: max |Δ text embedding| = {err:e}");
        assert!(err <= 1e-5, "{text:?}: text embedding differs by {err}");
        if !text.is_empty() {
            let out = model
                .embed(
                    &EmbedInput::text(text),
                    &model.default_perspectives(),
                    &EmbedOptions::default(),
                )
                .unwrap();
            assert_eq!(out.branches[0].input_ids, want);
            assert!(max_abs(&out.vectors.get(0).unwrap(), &emb) == 0.0);
        }
    }
}

#[test]
fn siglip_folders_load_through_the_common_loader() {
    let model = agff_lens::model::loader::load_folder(&tiny(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.default_perspectives().perspectives.len(), 1);
    assert_eq!(model.hidden_size(), 32);
    assert_eq!(model.identity().preprocess, "siglip 32x32 bicubic");
    assert_eq!(model.identity().weights_digest.len(), 16);
}

#[test]
fn siglip_refuses_what_it_cannot_do_with_a_clear_error() {
    let model = load();
    // Fine-grained perspectives need an instruction-following language model.
    let e = model
        .embed(
            &EmbedInput::text("a cat"),
            &PerspectiveSet::default_real(),
            &EmbedOptions::default(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("K = 0"), "{e}");
    // A text longer than max_position_embeddings (64): refused, or cut with --truncate.
    let long = "a photo of a cat ".repeat(20);
    match model.text_ids(&long, false) {
        Err(ModelError::TooLong { tokens, limit, .. }) => {
            assert_eq!(limit, 64);
            assert!(tokens > 64);
        }
        other => panic!("expected TooLong, got {other:?}"),
    }
    let cut = model.text_ids(&long, true).unwrap();
    assert_eq!(cut.len(), 64);
    assert_eq!(cut[63], 1, "the cut text still ends in </s>");
    // Image and text in one input: a dual encoder embeds one or the other.
    let both = EmbedInput {
        image: Some(image::RgbImage::new(8, 8)),
        text: Some("a cat".into()),
    };
    let e = model
        .embed(
            &both,
            &model.default_perspectives(),
            &EmbedOptions::default(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("not both"), "{e}");
    // A folder with spiece.model but no tokenizer.json says so.
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "spiece.model",
        "preprocessor_config.json",
    ] {
        std::fs::copy(tiny().join(f), dir.path().join(f)).unwrap();
    }
    let e = Siglip::load(dir.path(), DType::F32, &Device::Cpu)
        .err()
        .unwrap();
    assert!(e.to_string().contains("spiece.model"), "{e}");
    // A missing tensor is named.
    std::fs::copy(
        tiny().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let weights = candle_core::safetensors::load(tiny().join("model.safetensors"), &Device::Cpu)
        .unwrap()
        .into_iter()
        .filter(|(name, _)| name != "vision_model.head.probe")
        .collect::<HashMap<_, _>>();
    candle_core::safetensors::save(&weights, dir.path().join("model.safetensors")).unwrap();
    let e = Siglip::load(dir.path(), DType::F32, &Device::Cpu)
        .err()
        .unwrap();
    assert!(e.to_string().contains("vision_model.head.probe"), "{e}");
}

/// SigLIP 2's tokenizer (Gemma, `tokenizer_class` not SigLIP's) is only lower-cased, and
/// `padding_side` in tokenizer_config.json is honoured.
#[test]
fn a_gemma_tokenizer_config_lowercases_only_and_pads_where_it_says() {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
    ] {
        std::fs::copy(tiny().join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"tokenizer_class": "GemmaTokenizer", "padding_side": "left"}"#,
    )
    .unwrap();
    let gemma = Siglip::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let siglip = load();
    let ids = gemma.text_ids("A Cat!", false).unwrap();
    assert_eq!(ids.len(), 64);
    // Left padding: the pads come first and the text ends the sequence.
    let content: Vec<u32> = ids.iter().copied().skip_while(|&i| i == 1).collect();
    assert_eq!(*ids.last().unwrap(), 1, "</s> last");
    assert!(ids[0] == 1 && content.len() < 64);
    // The "!" is kept (SigLIP's canonicalisation would drop it): not the same tokens.
    let plain = siglip.text_ids("a cat", false).unwrap();
    let plain: Vec<u32> = plain[..plain.iter().position(|&i| i == 1).unwrap()].to_vec();
    assert_ne!(&content[..content.len() - 1], plain.as_slice());
    assert_eq!(
        gemma
            .show_prompt(&EmbedInput::text("A Cat!"), &gemma.default_perspectives())
            .unwrap(),
        ["a cat!"]
    );
}
