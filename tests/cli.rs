//! The command line as a user meets it.

use std::process::Command;

fn agff_lens() -> Command {
    Command::new(env!("CARGO_BIN_EXE_agff-lens"))
}

#[test]
fn help_lists_every_subcommand() {
    let out = agff_lens().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for sub in [
        "gui", "embed", "search", "explain", "eval", "train", "scenes", "bench",
    ] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(sub)),
            "`{sub}` missing from --help:\n{help}"
        );
    }
}

#[test]
fn commands_not_built_yet_exit_2_and_say_so() {
    for args in [&["bench", "search"][..], &["explain", "--json"]] {
        let out = agff_lens().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "no fake output for {args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not available yet"), "{args:?}: {err}");
    }
}

#[test]
fn bench_fusion_json_reports_rates_and_ratio() {
    let out = agff_lens()
        .args([
            "bench",
            "fusion",
            "--json",
            "--queries",
            "4",
            "--candidates",
            "32",
            "--dim",
            "16,64",
            "--reps",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for (r, d) in results.iter().zip([16, 64]) {
        assert_eq!(r["d"], d);
        assert_eq!(r["k"], 4);
        for key in ["pairs_per_sec", "fusion_gflops", "gemm_gflops", "ratio"] {
            let x = r[key].as_f64().unwrap_or(f64::NAN);
            assert!(x.is_finite() && x > 0.0, "{key} = {x}");
        }
        let ratio = r["fusion_gflops"].as_f64().unwrap() / r["gemm_gflops"].as_f64().unwrap();
        assert!((ratio - r["ratio"].as_f64().unwrap()).abs() < 1e-9);
    }
}

#[test]
fn bench_fusion_rejects_bad_settings() {
    let out = agff_lens()
        .args(["bench", "fusion", "--aggregator", "median"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown aggregator"));
    let out = agff_lens()
        .args(["bench", "fusion", "--device", "cuda"])
        .output()
        .unwrap();
    if !cfg!(feature = "cuda") {
        assert!(String::from_utf8_lossy(&out.stderr).contains("--features cuda"));
    }
}

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("agff-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn scenes_writes_images_and_a_jsonl_of_captions() {
    let out = temp("scenes");
    let status = agff_lens()
        .args([
            "scenes",
            "--out",
            out.to_str().unwrap(),
            "--count",
            "5",
            "--seed",
            "9",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let jsonl = std::fs::read_to_string(out.join("scenes.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    for l in &lines {
        let file = out.join(l["file"].as_str().unwrap());
        assert!(image::open(&file).is_ok(), "{file:?}");
        assert!(!l["caption"].as_str().unwrap().is_empty());
        assert!(
            l["scene"]["objects"]
                .as_array()
                .is_some_and(|o| !o.is_empty())
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn pmmvp_export_scores_like_the_generated_benchmark() {
    // The exported folder, read back by `eval mmvp`, gives exactly what `eval pmmvp`
    // computes on the same pairs in memory.
    let out = temp("pmmvp");
    let dir = out.to_str().unwrap();
    let status = agff_lens()
        .args([
            "scenes", "pmmvp", "--out", dir, "--pairs", "2", "--seed", "5",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(out.join("Questions.csv").is_file());
    let run = |args: &[&str]| -> serde_json::Value {
        let o = agff_lens().args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let generated = run(&[
        "eval", "pmmvp", "--model", "demo", "--pairs", "2", "--seed", "5", "--json",
    ]);
    let exported = run(&["eval", "mmvp", "--model", "demo", "--dir", dir, "--json"]);
    let patterns = generated["patterns"].as_object().unwrap();
    assert_eq!(patterns.len(), 9);
    for (name, scores) in patterns {
        for m in ["fused", "GG", "FG", "GF", "FF"] {
            let v = scores[m].as_f64().unwrap();
            assert!(
                (0.0..=100.0).contains(&v) && (v * 2.0 / 100.0).fract() == 0.0,
                "{name} {m} {v}"
            );
        }
    }
    for m in ["fused", "GG", "FG", "GF", "FF"] {
        assert!(generated["average"][m].as_f64().is_some());
    }
    // JPEG export changes pixels slightly, so compare only what cannot move: the same
    // patterns are there, each with 2 pairs.
    let exported_patterns = exported["patterns"].as_object().unwrap();
    assert_eq!(
        exported_patterns.keys().collect::<Vec<_>>(),
        patterns.keys().collect::<Vec<_>>()
    );
    assert_eq!(exported["pairs_per_pattern"]["text"], 2);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn embed_with_the_demo_model_reports_unknown_words_and_its_perspectives() {
    let out = agff_lens()
        .args([
            "embed",
            "--model",
            "demo",
            "--text",
            "a red zebra",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let persp = v["items"][0]["perspectives"].as_array().unwrap();
    let names: Vec<&str> = persp.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["global", "attributes", "count", "spatial", "text"]);
    for p in persp {
        let e: Vec<f64> = serde_json::from_value(p["embedding"].clone()).unwrap();
        let norm = e.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("zebra"));
}

#[test]
fn train_without_a_target_or_with_bad_data_says_what_to_do() {
    let out = agff_lens()
        .args(["train", "--out", "/tmp/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--recipe demo"));
    let empty = temp("emptydata");
    std::fs::create_dir_all(&empty).unwrap();
    let out = agff_lens()
        .args([
            "train",
            "--model",
            "demo",
            "--data",
            empty.to_str().unwrap(),
            "--out",
            "/tmp/x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("found 0 captioned images") && err.contains("agff-cli-emptydata"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn fine_tune_on_a_scenes_folder_writes_soft_prompts_and_fusion() {
    let data = temp("ftdata");
    let out = temp("ftout");
    assert!(
        agff_lens()
            .args(["scenes", "--out", data.to_str().unwrap(), "--count", "6"])
            .status()
            .unwrap()
            .success()
    );
    let o = agff_lens()
        .args([
            "train",
            "--model",
            "demo",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "2",
            "--batch",
            "4",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let fusion: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("fusion.json")).unwrap()).unwrap();
    assert_eq!(fusion["step"], 2);
    assert!(fusion["beta"].as_f64().unwrap() > 0.0);
    let soft = candle_core::safetensors::load(
        out.join("soft_prompts.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(soft.len(), 4, "one soft prompt per fine perspective");
    assert!(out.join("perspectives.json").is_file());
    let _ = (
        std::fs::remove_dir_all(&data),
        std::fs::remove_dir_all(&out),
    );
}
