//! `agff-lens embed` as a user runs it.

use std::path::Path;
use std::process::Command;

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3vl")
}

fn agff_lens() -> Command {
    Command::new(env!("CARGO_BIN_EXE_agff-lens"))
}

#[test]
fn embed_json_has_every_item_and_perspective_and_matches_transformers() {
    let model = fixtures().join("tiny-a");
    let image = fixtures().join("images/chelsea.png");
    let out = agff_lens()
        .args(["embed", "--json", "--model"])
        .arg(&model)
        .arg("--image")
        .arg(&image)
        .args(["--text", "a cat sitting on a wooden floor"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["kind"], "image");
    assert_eq!(items[0]["input"], image.display().to_string());
    assert_eq!(items[1]["kind"], "text");
    let reference = candle_core::safetensors::load(
        fixtures().join("reference/tiny-a__chelsea.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let want_ids: Vec<i64> = reference["input_ids"].to_vec1().unwrap();
    let want_emb: Vec<f32> = reference["embedding"].to_vec1().unwrap();
    for item in items {
        let ps = item["perspectives"].as_array().unwrap();
        let names: Vec<&str> = ps.iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["global", "attributes", "count", "spatial", "text"]);
        for p in ps {
            let e: Vec<f64> = p["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert_eq!(e.len(), 64);
            let norm = e.iter().map(|x| x * x).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "unit length, got {norm}");
        }
    }
    // The image's global perspective is the reference embedding, token for token.
    let g = &items[0]["perspectives"][0];
    let ids: Vec<i64> = g["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    assert_eq!(ids, want_ids);
    let e: Vec<f64> = g["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let cos: f64 = e.iter().zip(&want_emb).map(|(a, b)| a * *b as f64).sum();
    assert!(cos > 0.99999, "cosine {cos}");
}

#[test]
fn embed_reports_bad_inputs_by_name() {
    let model = fixtures().join("tiny-a");
    let dir = std::env::temp_dir().join(format!("agff-embed-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("holiday.png");
    std::fs::write(&fake, b"plain text, not a picture").unwrap();
    let out = agff_lens()
        .args(["embed", "--model"])
        .arg(&model)
        .arg("--image")
        .arg(&fake)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holiday.png"), "{err}");
    let out = agff_lens()
        .args(["embed", "--model", "/no/such/model", "--text", "x"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/model"));
    let out = agff_lens()
        .args(["embed", "--model"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to embed"));
    let bad = dir.join("persp.json");
    std::fs::write(&bad, r#"[{"name":"a"},{"name":"a"}]"#).unwrap();
    let out = agff_lens()
        .args(["embed", "--text", "x", "--model"])
        .arg(&model)
        .arg("--perspectives")
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("persp.json") && err.contains("twice"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
