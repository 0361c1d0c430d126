//! Our Qwen3-VL against Hugging Face transformers 5.23 on tiny random checkpoints of the
//! real architecture (`tests/fixtures/make_qwen3vl.py` writes them and the references;
//! these tests need no Python).

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use agff_lens::model::image_io::{open_image, to_rgb8};
use agff_lens::model::qwen3_vl::preprocess::{ImageProcessorConfig, preprocess};
use agff_lens::model::qwen3_vl::{BranchStrategy, Qwen3Vl};
use agff_lens::model::{Backbone, EmbedInput, EmbedOptions, PerspectiveSet};
use candle_core::{DType, Device, Tensor};
use common::{cosine, max_abs};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3vl")
}

fn reference(file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join(file), &Device::Cpu).unwrap()
}

fn cases() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixtures().join("reference/cases.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn load(model: &str, dtype: DType) -> Qwen3Vl {
    Qwen3Vl::load(&fixtures().join(model), dtype, &Device::Cpu).unwrap()
}

fn ids(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::I64)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as u32)
        .collect()
}

fn image(rel: &str) -> image::RgbImage {
    to_rgb8(&open_image(&fixtures().join(rel)).unwrap())
}

#[test]
fn preprocessing_matches_the_transformers_image_processor() {
    for model in ["tiny-a", "tiny-b"] {
        let config = ImageProcessorConfig::from_file(
            &fixtures().join(model).join("preprocessor_config.json"),
        )
        .unwrap();
        // PNGs decode identically everywhere; JPEG decoders may differ by ±1 level.
        for (name, file) in [
            ("chelsea", "chelsea.png"),
            ("camera", "camera.png"),
            ("horse", "horse.png"),
        ] {
            let r = reference(&format!(
                "reference/preprocess__{name}__{model}.safetensors"
            ));
            let got = preprocess(&image(&format!("images/{file}")), &config).unwrap();
            let grid: Vec<i64> = r["image_grid_thw"]
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(
                got.grid_thw.map(|v| v as i64).to_vec(),
                grid,
                "{model}/{name}"
            );
            let want = &r["pixel_values"];
            let ours = Tensor::from_slice(&got.pixel_values, want.dims(), &Device::Cpu).unwrap();
            let err = max_abs(&ours, want);
            eprintln!(
                "preprocess {model}/{name}: grid {:?}, max |Δ pixel| = {err:e}",
                got.grid_thw
            );
            assert!(err <= 1e-5, "{model}/{name}: pixel values differ by {err}");
        }
    }
}

#[test]
fn hidden_states_and_embeddings_match_transformers() {
    agff_lens::test_devices!(dev => { hidden_states_match_on(&dev) });
}

/// The parity checks on one device (references are on the CPU; outputs are compared there).
fn hidden_states_match_on(dev: &Device) {
    let mut models: HashMap<String, Qwen3Vl> = HashMap::new();
    for case in cases() {
        let model_name = case["model"].as_str().unwrap().to_string();
        let model = models.entry(model_name.clone()).or_insert_with(|| {
            Qwen3Vl::load(&fixtures().join(&model_name), DType::F32, dev).unwrap()
        });
        let r = reference(case["file"].as_str().unwrap());
        let label = format!("{model_name}/{}", case["case"]);
        let input_ids = ids(&r["input_ids"]);

        // Our prompt, tokenised and expanded, is the sequence transformers saw.
        let input = EmbedInput {
            image: case["image"].as_str().map(image),
            text: case["text"].as_str().map(String::from),
        };
        let global = &PerspectiveSet::default_real().perspectives[0];
        let (prefix, suffix) = model.prompt_text(&input, global);
        assert_eq!(
            format!("{prefix}{suffix}"),
            case["prompt"].as_str().unwrap(),
            "{label}"
        );

        let prepared = input
            .image
            .as_ref()
            .map(|img| model.prepare_image(img).unwrap());
        let out = model
            .forward_sequence(
                &input_ids,
                prepared.as_ref(),
                &[model.config().text.num_hidden_layers - 1],
                true,
            )
            .unwrap();
        let pos: Vec<Vec<i64>> = r["position_ids"]
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(pos, out.position_ids.to_vec(), "{label}: position ids");
        if let Some((merged, deep)) = &out.vision {
            let err = max_abs(merged, &r["vision_merged"]);
            assert!(err <= 1e-4, "{label}: vision merger differs by {err}");
            for (j, d) in deep.iter().enumerate() {
                let err = max_abs(d, &r[&format!("deepstack_{j}")]);
                assert!(err <= 1e-4, "{label}: deepstack {j} differs by {err}");
            }
        }
        // hidden_state_i (i ≥ 1, not the last) is layer i−1's output before DeepStack.
        let n = model.config().text.num_hidden_layers;
        for i in 1..n {
            let err = max_abs(&out.layer_outputs[i - 1], &r[&format!("hidden_state_{i}")]);
            assert!(
                err <= 1e-4,
                "{label}: layer {} output differs by {err}",
                i - 1
            );
        }
        let err = max_abs(&out.hidden, &r["last_hidden_state"]);
        assert!(err <= 1e-4, "{label}: last hidden state differs by {err}");
        let last = out.hidden.get(input_ids.len() - 1).unwrap();
        let cos = cosine(&last, &r["embedding"]);
        eprintln!("{label}: max |Δ last hidden| = {err:e}, embedding cosine = {cos:.9}");
        assert!(cos >= 0.99999, "{label}: embedding cosine {cos}");
        // Attention capture: the last layer, from the last position.
        let (_, probs) = &out.attentions[0];
        let row = probs
            .narrow(1, input_ids.len() - 1, 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        let err = max_abs(&row, &r["attn_last_layer_last_token"]);
        assert!(err <= 1e-4, "{label}: attention differs by {err}");

        // The backbone's global branch (shared prefix + suffix) gives the same embedding.
        let emb = model
            .embed(
                &input,
                &PerspectiveSet::default_real(),
                &EmbedOptions::default(),
            )
            .unwrap();
        assert_eq!(
            emb.branches[0].input_ids, input_ids,
            "{label}: global branch tokens"
        );
        let cos = cosine(&emb.vectors.get(0).unwrap(), &r["embedding"]);
        assert!(
            cos >= 0.99999,
            "{label}: global perspective embedding cosine {cos}"
        );
    }
}

#[test]
fn branches_with_a_shared_prefix_equal_full_sequence_runs() {
    let model = load("tiny-b", DType::F32);
    let input = EmbedInput {
        image: Some(image("images/chelsea.png")),
        text: Some("a cat".into()),
    };
    let set = PerspectiveSet::default_real();
    let options = EmbedOptions {
        attention_layers: 1,
        ..Default::default()
    };
    let prepared = model.prepare_image(input.image.as_ref().unwrap()).unwrap();
    for strategy in [BranchStrategy::Packed, BranchStrategy::CachedPrefix] {
        let emb = model.embed_with(&input, &set, &options, strategy).unwrap();
        assert_eq!(emb.vectors.dims(), &[5, model.hidden_size()]);
        let mut distinct = 0;
        for (b, branch) in emb.branches.iter().enumerate() {
            let last_layer = model.config().text.num_hidden_layers - 1;
            let full = model
                .forward_sequence(&branch.input_ids, Some(&prepared), &[last_layer], false)
                .unwrap();
            let want = full.hidden.get(branch.input_ids.len() - 1).unwrap();
            let err = max_abs(&emb.vectors.get(b).unwrap(), &want);
            assert!(err <= 1e-5, "{strategy:?} branch {}: {err}", branch.name);
            if b > 0 && max_abs(&emb.vectors.get(b).unwrap(), &emb.vectors.get(0).unwrap()) > 1e-3 {
                distinct += 1;
            }
            // Attention to the visual tokens from the branch's last token, as in the full run.
            let (start, n) = (
                emb.visual.as_ref().unwrap().first_position,
                prepared.patches() / 4,
            );
            let (_, probs) = &full.attentions[0];
            let row = probs
                .narrow(1, branch.input_ids.len() - 1, 1)
                .unwrap()
                .squeeze(1)
                .unwrap()
                .mean(0)
                .unwrap();
            let want: Vec<f32> = row.narrow(0, start, n).unwrap().to_vec1().unwrap();
            let got = branch.attention_to_visual.as_ref().unwrap();
            assert_eq!(got.len(), n);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "{strategy:?} attention {g} vs {w}");
            }
        }
        assert_eq!(
            distinct, 4,
            "each fine-grained perspective gives its own embedding"
        );
        let visual = emb.visual.unwrap();
        assert_eq!(visual.grid, (2, 3));
        assert_eq!(visual.hidden.dims(), &[6, model.hidden_size()]);
        let full = model
            .forward_sequence(&emb.branches[0].input_ids, Some(&prepared), &[], false)
            .unwrap();
        let err = max_abs(
            &visual.hidden,
            &full.hidden.narrow(0, visual.first_position, 6).unwrap(),
        );
        assert!(err <= 1e-5, "{strategy:?} visual hidden states: {err}");
    }
}

#[test]
fn half_precision_weights_load_and_stay_close() {
    let r = reference("reference/tiny-a__text.safetensors");
    for dtype in [DType::BF16, DType::F16] {
        let model = load("tiny-a", dtype);
        let input_ids = ids(&r["input_ids"]);
        let out = model
            .forward_sequence(&input_ids, None, &[], false)
            .unwrap();
        assert_eq!(out.hidden.dtype(), dtype);
        let cos = cosine(
            &out.hidden.get(input_ids.len() - 1).unwrap(),
            &r["embedding"],
        );
        assert!(cos > 0.99, "{dtype:?}: cosine {cos}");
    }
}

/// Two images of the same size with every channel value equal.
fn assert_same_pixels(got: &image::RgbImage, want: &image::RgbImage, name: &str) {
    assert_eq!(got.dimensions(), want.dimensions(), "{name}: size");
    let differing = got
        .as_raw()
        .iter()
        .zip(want.as_raw())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(differing, 0, "{name}: {differing} channel values differ");
}

/// The `embedder` profile equals `qwen_vl_utils.fetch_image` (Pillow's bicubic resize
/// after its `to_rgb`) pixel for pixel: references from tests/fixtures/make_embedder_resize.py.
#[test]
fn embedder_profile_resizes_pixel_for_pixel_like_fetch_image() {
    use agff_lens::model::qwen3_vl::{PreprocessProfile, resized_image};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/embedder_resize");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let cases = manifest["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 7);
    let config = ImageProcessorConfig::default();
    for case in cases {
        let name = case["input"].as_str().unwrap();
        let input = to_rgb8(&open_image(&dir.join(name)).unwrap());
        let want = open_image(&dir.join(case["output"].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        let profile = PreprocessProfile::Embedder {
            min_pixels: case["min_pixels"].as_u64().unwrap() as usize,
            max_pixels: case["max_pixels"].as_u64().unwrap() as usize,
        };
        let got = resized_image(&input, &config, profile).unwrap();
        assert_same_pixels(&got, &want, name);
    }
    // The processor's resampler differs from Pillow's in its weights' precision: on the
    // downscaled case the two disagree somewhere, so the test above is not vacuous.
    let over = to_rgb8(&open_image(&dir.join("over_cap.in.png")).unwrap());
    let budget = PreprocessProfile::Processor {
        min_pixels: Some(4096),
        max_pixels: Some(96 * 64),
    };
    let torch = resized_image(&over, &config, budget).unwrap();
    let pillow = resized_image(
        &over,
        &config,
        PreprocessProfile::Embedder {
            min_pixels: 4096,
            max_pixels: 96 * 64,
        },
    )
    .unwrap();
    assert_eq!(torch.dimensions(), pillow.dimensions());
    assert_ne!(torch.as_raw(), pillow.as_raw());
}

/// JPEGs decode to libjpeg-turbo's pixels, as PIL gives them: references from
/// tests/fixtures/make_jpeg_decode.py (4:2:0, 4:2:2, 4:4:4, grey, progressive, restart
/// markers, odd sizes).
#[test]
fn jpeg_decoding_equals_libjpeg_turbo() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jpeg_decode");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let cases = manifest["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 7);
    let mut image_crate_differs = false;
    for case in cases {
        let name = case["jpeg"].as_str().unwrap();
        let got = to_rgb8(&open_image(&dir.join(name)).unwrap());
        let want = open_image(&dir.join(case["pixels"].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        assert_same_pixels(&got, &want, name);
        // The image crate's own decoder (what was used before) disagrees somewhere.
        let other = image::load_from_memory(&std::fs::read(dir.join(name)).unwrap())
            .unwrap()
            .to_rgb8();
        image_crate_differs |= other.as_raw() != want.as_raw();
    }
    assert!(image_crate_differs, "the test would pass with any decoder");
}

/// The `embedder` profile equals the authors' whole image path
/// (`qwen_vl_utils.process_vision_info`, the processor with `do_resize=False`, the model,
/// last-token pooling) on both tiny checkpoints, for inputs over the pixel cap, under the
/// minimum, RGBA, grey and palette: the same grid, the same pixel values, the same tokens
/// and an embedding cosine ≥ 0.99999. References from tests/fixtures/make_embedder_parity.py.
#[test]
fn embedder_profile_equals_the_authors_embedding_path() {
    use agff_lens::model::qwen3_vl::PreprocessProfile;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dir = root.join("embedder_parity");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let cases = manifest["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 12);
    let mut models: HashMap<String, Qwen3Vl> = HashMap::new();
    for case in cases {
        let model_name = case["model"].as_str().unwrap().to_string();
        let label = format!("{model_name}/{}", case["case"].as_str().unwrap());
        let model = models
            .entry(model_name.clone())
            .or_insert_with(|| load(&model_name, DType::F32));
        model.set_preprocess(PreprocessProfile::Embedder {
            min_pixels: case["min_pixels"].as_u64().unwrap() as usize,
            max_pixels: case["max_pixels"].as_u64().unwrap() as usize,
        });
        let r =
            candle_core::safetensors::load(dir.join(case["file"].as_str().unwrap()), &Device::Cpu)
                .unwrap();
        let img = to_rgb8(
            &open_image(
                &root
                    .join("embedder_resize")
                    .join(case["input"].as_str().unwrap()),
            )
            .unwrap(),
        );

        let prepared = model.prepare_image(&img).unwrap();
        let grid: Vec<i64> = r["image_grid_thw"]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(
            prepared.grid_thw.map(|v| v as i64).to_vec(),
            grid,
            "{label}: grid"
        );
        let want = &r["pixel_values"];
        let ours = Tensor::from_slice(&prepared.pixel_values, want.dims(), &Device::Cpu).unwrap();
        let err = max_abs(&ours, want);
        assert!(err <= 1e-6, "{label}: pixel values differ by {err}");

        let input = EmbedInput {
            image: Some(img),
            text: case["text"].as_str().map(String::from),
        };
        let emb = model
            .embed(
                &input,
                &PerspectiveSet::default_real(),
                &EmbedOptions::default(),
            )
            .unwrap();
        assert_eq!(
            emb.branches[0].input_ids,
            ids(&r["input_ids"]),
            "{label}: tokens"
        );
        let cos = cosine(&emb.vectors.get(0).unwrap(), &r["embedding"]);
        eprintln!("{label}: max |Δ pixel| = {err:e}, embedding cosine = {cos:.9}");
        assert!(cos >= 0.99999, "{label}: embedding cosine {cos}");

        // The processor's path on the same budget resamples differently: the references
        // tell the two profiles apart wherever the image is resized.
        if case["case"] == "over_cap" {
            model.set_preprocess(PreprocessProfile::Processor {
                min_pixels: case["min_pixels"].as_u64().map(|v| v as usize),
                max_pixels: case["max_pixels"].as_u64().map(|v| v as usize),
            });
            let other = model.prepare_image(input.image.as_ref().unwrap()).unwrap();
            let other = Tensor::from_slice(&other.pixel_values, want.dims(), &Device::Cpu).unwrap();
            assert!(
                max_abs(&other, want) > 0.0,
                "{label}: the test cannot tell the profiles apart"
            );
        }
    }
}

/// Explanations (attribution through the language model's gradients, attention capture,
/// token similarities) run on every available device (the CPU here; `cuda:0` too in a
/// CUDA build where one answers) and agree with the CPU's maps.
#[test]
fn explanations_run_on_every_device_and_agree_with_the_cpu() {
    use agff_lens::agff::Fusion;
    use agff_lens::explain::{Explainer, Method};
    let maps_on = |dev: &Device| -> Vec<Vec<f32>> {
        let model = Qwen3Vl::load(&fixtures().join("tiny-b"), DType::F32, dev).unwrap();
        let ex = Explainer::new(
            &model,
            PerspectiveSet::default_real(),
            Fusion::for_backbone(&model).unwrap(),
        );
        let img = image("images/chelsea.png");
        let q = EmbedInput::text("a cat on a sofa");
        Method::ALL
            .iter()
            .map(|&m| {
                let e = ex.explain(&q, &img, m).unwrap();
                assert!(e.fused_map.values.iter().all(|v| v.is_finite()), "{m:?}");
                assert_eq!(e.perspective_maps.len(), 5);
                e.fused_map.values.clone()
            })
            .collect()
    };
    let reference = maps_on(&Device::Cpu);
    agff_lens::test_devices!(dev => {
        let maps = maps_on(&dev);
        for (m, (a, b)) in maps.iter().zip(&reference).enumerate() {
            let err = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            let scale = b.iter().map(|v| v.abs()).fold(0f32, f32::max).max(1e-12);
            assert!(err <= 1e-3 * scale, "method {m}: maps differ by {err} (scale {scale})");
        }
    });
}
