//! Bad model folders and inputs give errors that name the file and the problem.

use std::path::{Path, PathBuf};

use agff_lens::model::loader::load_folder;
use candle_core::{DType, Device};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/qwen3vl")
        .join(name)
}

/// A scratch copy of a fixture model folder.
fn copy_model(name: &str, tag: &str) -> PathBuf {
    let dst = std::env::temp_dir().join(format!("agff-model-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    dst
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn load_err(dir: &Path) -> String {
    match load_folder(dir, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{} loaded although it is broken", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_files_are_named() {
    let dir = copy_model("tiny-a", "missing");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("tokenizer.json"), "{err}");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::copy(fixture("tiny-a/tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("model.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).ok();

    let dir = copy_model("tiny-b", "shard");
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).ok();

    let err = load_err(Path::new("/nonexistent/agff-model"));
    assert!(err.contains("/nonexistent/agff-model"), "{err}");
}

#[test]
fn a_tensor_of_the_wrong_shape_is_named() {
    let dir = copy_model("tiny-a", "shape");
    edit_config(&dir, |v| v["text_config"]["intermediate_size"] = 100.into());
    let err = load_err(&dir);
    assert!(
        err.contains("model.language_model.layers.0.mlp.gate_proj.weight"),
        "{err}"
    );
    assert!(
        err.contains("[128, 64]") && err.contains("[100, 64]"),
        "{err}"
    );
    assert!(err.contains("model.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unknown_architectures_and_configs_without_vision_are_refused() {
    let dir = copy_model("tiny-a", "arch");
    edit_config(&dir, |v| {
        v["model_type"] = "llama".into();
        v["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    });
    let err = load_err(&dir);
    assert!(
        err.contains("unknown architecture") && err.contains("llama"),
        "{err}"
    );
    edit_config(&dir, |v| {
        v["model_type"] = "qwen3_vl".into();
        v.as_object_mut().unwrap().remove("vision_config");
    });
    let err = load_err(&dir);
    assert!(err.contains("vision"), "{err}");
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let err = load_err(&dir);
    assert!(err.contains("config.json") && err.contains("JSON"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_tensor_rewritten_in_place_changes_the_model_identity() {
    let dir = copy_model("tiny-a", "inplace");
    let identity = |dir: &Path| {
        load_folder(dir, DType::F32, &Device::Cpu)
            .unwrap()
            .identity()
            .clone()
    };
    let before = identity(&dir);
    assert_eq!(
        identity(&dir),
        before,
        "the same files give the same identity"
    );
    // Rewrite bytes deep inside one tensor, keeping the size (and so every header).
    let weights = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let len = bytes.len();
    let at = len - len / 3;
    for b in &mut bytes[at..at + 64] {
        *b ^= 0x55;
    }
    std::fs::write(&weights, &bytes).unwrap();
    // A later modification time, as any real rewrite gets.
    let f = std::fs::File::options().write(true).open(&weights).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    let after = identity(&dir);
    assert_eq!(after.name, before.name);
    assert_ne!(
        after.weights_digest, before.weights_digest,
        "a cache keyed by the identity would serve stale vectors"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_text_over_the_models_limit_is_refused_before_any_allocation_or_cut_with_truncate() {
    use agff_lens::model::{EmbedInput, EmbedOptions, ModelError};
    let model = load_folder(&fixture("tiny-a"), DType::F32, &Device::Cpu).unwrap();
    let perspectives = model.default_perspectives();
    // About 50,000 tokens: once a (total × total) mask of 10 GB aborted the process.
    let long = "a red circle left of a blue square; ".repeat(2800);
    let input = EmbedInput::text(long);
    match model.embed(&input, &perspectives, &EmbedOptions::default()) {
        Err(e @ ModelError::TooLong { tokens, limit, .. }) => {
            assert_eq!(limit, 8192);
            assert!(tokens > 20_000, "{tokens}");
            let text = e.to_string();
            assert!(
                text.contains(&tokens.to_string())
                    && text.contains("8192")
                    && text.contains("--truncate"),
                "{text}"
            );
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a 50k-token text was embedded"),
    }
    let cut = model
        .embed(
            &input,
            &perspectives,
            &EmbedOptions {
                truncate: true,
                ..EmbedOptions::default()
            },
        )
        .unwrap();
    let longest = cut
        .branches
        .iter()
        .map(|b| b.input_ids.len())
        .max()
        .unwrap();
    assert!(longest <= 8192, "{longest}");
    assert!(longest > 8000, "cut to fit, not to nothing: {longest}");
}

#[test]
fn an_embedding_release_gets_the_embedders_preprocessing_and_the_cache_key_follows() {
    use agff_lens::model::loader::{ImageOptions, ProfileKind, load_folder_with};
    let plain = copy_model("tiny-a", "profile-plain");
    let release = plain
        .parent()
        .unwrap()
        .join(format!("Qwen3-VL-Embedding-tiny-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&release);
    std::fs::rename(copy_model("tiny-a", "profile-release"), &release).unwrap();
    let prep = |dir: &Path, images: ImageOptions| {
        load_folder_with(dir, DType::F32, &Device::Cpu, &images)
            .unwrap()
            .identity()
            .preprocess
            .clone()
    };
    assert_eq!(
        prep(&release, ImageOptions::default()),
        "embedder 4096..1843200"
    );
    assert!(prep(&plain, ImageOptions::default()).starts_with("processor "));
    // A Hub cache snapshot is named by its commit: the repo folder decides.
    let snapshot = std::env::temp_dir()
        .join(format!("agff-profile-hub-{}", std::process::id()))
        .join("models--Qwen--Qwen3-VL-Embedding-2B/snapshots/0123abcd");
    assert_eq!(
        agff_lens::model::qwen3_vl::default_profile(&snapshot),
        agff_lens::model::qwen3_vl::PreprocessProfile::EMBEDDER
    );
    // Overrides: the profile and the pixel budget, both in the identity.
    let small = ImageOptions {
        profile: Some(ProfileKind::Processor),
        min_pixels: Some(1024),
        max_pixels: Some(200_704),
    };
    assert_eq!(prep(&release, small), "processor 1024..200704");
    let err = load_folder_with(
        &release,
        DType::F32,
        &Device::Cpu,
        &ImageOptions {
            min_pixels: Some(9000),
            max_pixels: Some(10),
            ..ImageOptions::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("--min-pixels 9000 is more than --max-pixels 10"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&plain);
    let _ = std::fs::remove_dir_all(&release);
}
