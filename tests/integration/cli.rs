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
fn bench_search_json_reports_throughput_latency_and_memory() {
    let out = agff_lens()
        .args([
            "bench",
            "search",
            "--scenes",
            "6",
            "--candidates",
            "3000",
            "--dim",
            "32",
            "--first-stage",
            "200",
            "--queries",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert!(v["embed_images_per_sec"].as_f64().unwrap() > 0.0);
    assert!(v["peak_rss_mb"].as_f64().unwrap() > 0.0);
    let rows = v["search"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "with and without the first stage");
    for row in rows {
        assert_eq!(row["candidates"], 3000);
        assert_eq!(row["d"], 32);
        assert_eq!(row["k"], 4);
        assert!(row["latency_ms"].as_f64().unwrap() > 0.0);
    }
    let staged = rows.iter().find(|r| r["first_stage"] == true).unwrap();
    let kept = staged["top10_kept"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&kept), "{kept}");
    let full = rows.iter().find(|r| r["first_stage"] == false).unwrap();
    assert!(full["top10_kept"].is_null());
}

#[test]
fn bench_search_rejects_zero_sizes() {
    let out = agff_lens()
        .args(["bench", "search", "--scenes", "0", "--dim", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--dim"), "{err}");
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
    // A bad value of an enumerated option is clap's usage error (exit code 2).
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown aggregator"));
    for args in [
        ["bench", "fusion", "--ff", "some"],
        ["bench", "model", "--dtype", "f8"],
    ] {
        let out = agff_lens().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    let out = agff_lens()
        .args([
            "explain", "--model", "demo", "--image", "x.png", "--query", "a", "--out", "o",
            "--method", "gradcam",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("attribution"));
    let out = agff_lens()
        .args(["bench", "fusion", "--device", "cuda"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !cfg!(feature = "cuda") {
        assert!(stderr.contains("--features cuda"));
    } else if !out.status.success() {
        // Built with CUDA on a machine that cannot run it: an error naming the device,
        // not a panic (exit code 101) from the library loader.
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("cuda:0"), "{stderr}");
    }
}

/// The JSON a command printed, after checking it succeeded (its stderr otherwise).
fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
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
    // The separation diagnostic: a mean cosine per pattern for the two images and the two
    // statements. The statements are the same strings in both runs, so their cosines
    // agree; the JPEG images only nearly.
    for name in patterns.keys() {
        let g = &generated["separation"][name];
        let e = &exported["separation"][name];
        let (gi, gs) = (
            g["images"].as_f64().unwrap(),
            g["statements"].as_f64().unwrap(),
        );
        let (ei, es) = (
            e["images"].as_f64().unwrap(),
            e["statements"].as_f64().unwrap(),
        );
        for v in [gi, gs, ei, es] {
            assert!((-1.0..=1.0 + 1e-5).contains(&v), "{name}: cosine {v}");
        }
        assert!((gs - es).abs() < 1e-5, "{name}: statements {gs} vs {es}");
        assert!((gi - ei).abs() < 0.05, "{name}: images {gi} vs {ei}");
    }
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

/// The recipe's options would change nothing in a fine-tune: given there, they are refused
/// by name before anything loads or is written.
#[test]
fn a_fine_tune_refuses_the_recipes_options() {
    let out = temp("ftrecipe");
    let o = agff_lens()
        .args([
            "train",
            "--model",
            "demo",
            "--data",
            "scenes",
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "2",
            "--scene-heads",
            "1",
            "--k",
            "2",
            "--tune-vision",
            "--head-scale",
            "10",
            "--text-head-scale",
            "10",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "--k, --tune-vision, --scene-heads, --head-scale, --text-head-scale only apply to a recipe"
        ),
        "{err}"
    );
    assert!(!out.exists(), "a refused run wrote {}", out.display());
    let o = agff_lens()
        .args(["train", "--model", "demo", "--data", "scenes", "--out"])
        .arg(&out)
        .args(["--head-scale", "10"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--head-scale only applies to a recipe"),
        "{err}"
    );
    assert!(!out.exists(), "a refused run wrote {}", out.display());
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
            // A soft temperature: the demo model already tells these captions apart, and
            // at the default τ its InfoNCE loss (and gradient) would round to zero.
            "--tau",
            "1.0",
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

    // `--tuned DIR` applies the run to search: its soft prompts and fusion change the
    // scores of the same gallery.
    let cache = temp("ftcache");
    let search = |extra: &[&str]| -> Vec<f64> {
        let o = agff_lens()
            .args(["search", "--model", "demo", "--gallery"])
            .arg(&data)
            .args(["--query", "a red circle", "--cache"])
            .arg(&cache)
            .args(["--top", "6", "--json"])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut scores: Vec<(String, f64)> = v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["path"].as_str().unwrap().to_owned(),
                    r["score"].as_f64().unwrap(),
                )
            })
            .collect();
        scores.sort_by(|a, b| a.0.cmp(&b.0));
        scores.into_iter().map(|(_, s)| s).collect()
    };
    let plain = search(&[]);
    let tuned = search(&["--tuned", out.to_str().unwrap()]);
    assert_eq!(plain.len(), tuned.len());
    assert!(
        plain.iter().zip(&tuned).any(|(a, b)| (a - b).abs() > 1e-7),
        "{plain:?} {tuned:?}"
    );
    // So does `embed`, and a folder that is not a run is refused by name.
    let o = agff_lens()
        .args([
            "embed",
            "--model",
            "demo",
            "--text",
            "a red circle",
            "--tuned",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("fusion.json") && err.contains("ftdata"),
        "{err}"
    );
    // --tuned brings its own perspectives: giving both is a usage error.
    let o = agff_lens()
        .args([
            "embed",
            "--model",
            "demo",
            "--text",
            "a",
            "--perspectives",
            "p.json",
            "--tuned",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let _ = (
        std::fs::remove_dir_all(&data),
        std::fs::remove_dir_all(&out),
        std::fs::remove_dir_all(&cache),
    );
}

#[test]
fn explain_writes_overlays_and_a_breakdown_that_adds_up() {
    let scenes = temp("explain-scenes");
    let out = temp("explain-out");
    assert!(
        agff_lens()
            .args([
                "scenes",
                "--out",
                scenes.to_str().unwrap(),
                "--count",
                "2",
                "--seed",
                "4"
            ])
            .status()
            .unwrap()
            .success()
    );
    let a = scenes.join("scene_00000.png");
    let b = scenes.join("scene_00001.png");
    for method in ["attribution", "mean-baseline", "attention", "similarity"] {
        let o = agff_lens()
            .args([
                "explain",
                "--model",
                "demo",
                "--image",
                a.to_str().unwrap(),
                "--query",
                "a red circle",
                "--method",
                method,
                "--versus",
                b.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--json",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["method"], method);
        let maps = v["perspective_maps"].as_array().unwrap();
        assert_eq!(maps.len(), 5);
        for m in maps.iter().chain(v["similarity_maps"].as_array().unwrap()) {
            let (rows, cols) = (m["rows"].as_u64().unwrap(), m["cols"].as_u64().unwrap());
            assert_eq!(m["values"].as_array().unwrap().len() as u64, rows * cols);
            let png = image::open(m["png"].as_str().unwrap()).unwrap();
            assert_eq!((png.width(), png.height()), (96, 96));
        }
        let w: f64 = ["GG", "FG", "GF", "FF"]
            .iter()
            .map(|k| v["scores"]["weights"][k].as_f64().unwrap())
            .sum();
        assert!((w - 1.0).abs() < 1e-4);
        let vs = &v["versus"];
        let diff = v["scores"]["fused"].as_f64().unwrap() - vs["scores"]["fused"].as_f64().unwrap();
        assert!((diff - vs["fused_diff"].as_f64().unwrap()).abs() < 1e-5);
        assert!(["GG", "FG", "GF", "FF"].contains(&vs["decided_by"].as_str().unwrap()));
    }
    let _ = (
        std::fs::remove_dir_all(&scenes),
        std::fs::remove_dir_all(&out),
    );
}

#[test]
fn pointing_reports_a_hit_rate_per_method() {
    let o = agff_lens()
        .args([
            "eval", "pointing", "--model", "demo", "--scenes", "4", "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for m in ["attribution", "mean-baseline", "attention", "similarity"] {
        let s = &v["methods"][m];
        assert_eq!(s["trials"], 4);
        let hits = s["hits"].as_u64().unwrap();
        assert!((s["hit_rate"].as_f64().unwrap() - hits as f64 / 4.0).abs() < 1e-12);
        // The random-cell rate: the same scenes for every method, inside (0, 1).
        let chance = s["chance"].as_f64().unwrap();
        assert!(chance > 0.0 && chance < 1.0, "{chance}");
        assert_eq!(s["chance"], v["methods"]["attribution"]["chance"]);
    }
}

#[test]
fn search_json_ranks_a_scene_folder_and_lists_skipped_files() {
    let scenes = temp("search-scenes");
    let cache = temp("search-cache");
    assert!(
        agff_lens()
            .args(["scenes", "--out", scenes.to_str().unwrap(), "--count", "6"])
            .status()
            .unwrap()
            .success()
    );
    std::fs::write(scenes.join("broken.png"), b"not a png").unwrap();
    // `search … --json` over the scenes for "a blue square", with `extra` options.
    let search = |extra: &[&str]| -> serde_json::Value {
        let o = agff_lens()
            .args([
                "search",
                "--model",
                "demo",
                "--gallery",
                scenes.to_str().unwrap(),
                "--query",
                "a blue square",
                "--cache",
                cache.to_str().unwrap(),
                "--json",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let v = search(&["--top", "3"]);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    let scores: Vec<f64> = results
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]));
    for r in results {
        for k in ["GG", "FG", "GF", "FF"] {
            assert!(r["similarities"][k].is_number() && r["weights"][k].is_number());
        }
        assert_eq!(r["perspectives"].as_object().unwrap().len(), 5);
    }
    assert_eq!(v["indexed"], 6);
    // The first stage (20,000 by default) did not cut 6 images.
    assert!(v.get("first_stage").is_none());
    assert!(
        v["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["path"].as_str().unwrap().ends_with("broken.png"))
    );
    // Two models side by side: the demo model against a SigLIP checkpoint, then a model
    // against itself (which must agree completely).
    let siglip = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/siglip/tiny");
    let v = search(&["--top", "3", "--compare-model", siglip]);
    let c = &v["compare"];
    assert_eq!(c["model"], siglip);
    assert_eq!(c["results"].as_array().unwrap().len(), 3);
    assert_eq!(v["results"].as_array().unwrap().len(), 3);
    assert_eq!(c["items"], 6);
    assert_eq!(c["k"], 3);
    // SigLIP has no fine-grained perspectives: its fused score is GG.
    let top = &c["results"][0];
    assert_eq!(top["score"], top["similarities"]["GG"]);
    assert_eq!(top["perspectives"].as_object().unwrap().len(), 1);
    let rho = c["spearman"].as_f64().unwrap();
    assert!((-1.0..=1.0).contains(&rho));
    let v = search(&["--top", "3", "--compare-model", "demo"]);
    assert_eq!(v["compare"]["overlap_at_k"], 1.0);
    assert_eq!(v["compare"]["spearman"], 1.0);
    // A first stage that keeps 2 of 6 reports how much of the exact top 10 it kept.
    let v = search(&["--first-stage", "2"]);
    assert_eq!(v["first_stage"]["keep"], 2);
    // The exact top 10 of 6 images is all 6; 2 were kept.
    let kept = v["first_stage"]["top10_kept"].as_f64().unwrap();
    assert!((kept - 2.0 / 6.0).abs() < 1e-9, "{kept}");
    let _ = (
        std::fs::remove_dir_all(&scenes),
        std::fs::remove_dir_all(&cache),
    );
}

#[test]
fn an_error_names_its_cause_once() {
    let o = agff_lens()
        .args([
            "search",
            "--model",
            "demo",
            "--gallery",
            "/no/such/gallery",
            "--query",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/no/such/gallery"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

/// `bench model --paced` (what `benches/paired_qwen3vl.py` drives): one JSON line on
/// stderr per embedding, one perspective then 1+K for the warm-up and each rep, and the
/// reported medians are the paced reps' times (warm-ups excluded).
#[test]
fn bench_model_paced_reports_each_embedding_in_order() {
    use std::io::Write;
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/qwen3vl/tiny-a/config.json");
    let mut child = agff_lens()
        .args(["bench", "model", "--config"])
        .arg(&config)
        .args(["--image-size", "64", "--reps", "3", "--paced", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The go-aheads: (1 warm-up + 3 reps) × (single, multi).
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"go\n".repeat(8).as_slice())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let paced: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with("{\"paced\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = paced.iter().map(|v| v["paced"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["single", "multi"].repeat(4), "{stderr}");
    let times = |kind: &str| -> Vec<f64> {
        let mut t: Vec<f64> = paced
            .iter()
            .filter(|v| v["paced"] == kind)
            .skip(1) // the warm-up
            .map(|v| v["seconds"].as_f64().unwrap())
            .collect();
        t.sort_by(f64::total_cmp);
        t
    };
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["single_seconds"].as_f64().unwrap(),
        times("single")[1]
    );
    assert_eq!(report["multi_seconds"].as_f64().unwrap(), times("multi")[1]);
    assert!(report["tokens"].as_u64().unwrap() > 0);
}

#[test]
fn queries_that_hold_nothing_are_refused_and_dropped_characters_reported() {
    let embed = |text: &str| {
        agff_lens()
            .args(["embed", "--model", "demo", "--text", text, "--json"])
            .output()
            .unwrap()
    };
    for (text, says) in [
        ("", "the query is empty"),
        ("   ", "the query is empty"),
        ("\u{200B}", "only invisible characters (U+200B)"),
        (
            "\u{FEFF} \u{200D}",
            "only invisible characters (U+FEFF, U+200D)",
        ),
        ("😀🎉", "reads no word of this query"),
        ("zebra giraffe", "unknown words: zebra, giraffe"),
    ] {
        let out = embed(text);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text:?}: {err}");
        assert!(err.contains(says), "{text:?}: {err}");
        assert!(!err.contains("panicked"), "{text:?}: {err}");
    }
    // Emoji-only also names what was dropped.
    let err = String::from_utf8_lossy(&embed("😀").stderr).into_owned();
    assert!(err.contains("“😀” (U+1F600)"), "{err}");
    // A query the model can read is embedded; what it drops is said.
    let out = embed("two red 😀 circles!");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("drops them: “😀” (U+1F600)") && !err.contains("“!”"),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn search_goes_on_without_a_cache_it_cannot_write_and_gives_raw_bytes_of_odd_paths() {
    use std::os::unix::ffi::OsStrExt;
    let gallery = temp("oddpaths");
    std::fs::create_dir_all(&gallery).unwrap();
    let odd = gallery.join(std::ffi::OsStr::from_bytes(b"sc\xffene.png"));
    let mut rng = agff_lens::scenes::SceneRng::new(9);
    agff_lens::scenes::Scene::random(&mut rng)
        .render()
        .save_with_format(&odd, image::ImageFormat::Png)
        .unwrap();
    // A file stands where the cache folder should be.
    let blocker = temp("oddpaths-cache");
    std::fs::create_dir_all(&blocker).unwrap();
    std::fs::write(blocker.join("file"), b"x").unwrap();
    let out = agff_lens()
        .args([
            "search",
            "--model",
            "demo",
            "--query",
            "a red circle",
            "--json",
        ])
        .arg("--gallery")
        .arg(&gallery)
        .arg("--cache")
        .arg(blocker.join("file").join("cache"))
        .output()
        .unwrap();
    let v = json_of(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is a file where the cache folder should be") && err.contains("going on"),
        "{err}"
    );
    let hit = &v["results"][0];
    let bytes: Vec<u8> = serde_json::from_value(hit["path_bytes"].clone()).unwrap();
    assert_eq!(bytes, odd.as_os_str().as_bytes());
    let _ = std::fs::remove_dir_all(&gallery);
    let _ = std::fs::remove_dir_all(&blocker);
}

#[test]
fn bench_tower_reports_seconds_per_pretraining_step() {
    let out = agff_lens()
        .args(["bench", "tower", "--steps", "2", "--batch", "2", "--json"])
        .output()
        .unwrap();
    let v = json_of(&out);
    assert_eq!(v["steps"], 2);
    let (min, median, max) = (
        v["min_s"].as_f64().unwrap(),
        v["median_s"].as_f64().unwrap(),
        v["max_s"].as_f64().unwrap(),
    );
    assert!(0.0 < min && min <= median && median <= max, "{v}");
    let bad = agff_lens()
        .args(["bench", "tower", "--steps", "0"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
}

#[test]
fn matryoshka_dim_keeps_a_renormalised_prefix_and_is_checked() {
    let embed = |extra: &[&str]| {
        let out = agff_lens()
            .args([
                "embed",
                "--model",
                "demo",
                "--text",
                "two red circles",
                "--json",
            ])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.stdout,
        )
    };
    let vectors = |stdout: &[u8]| -> Vec<Vec<f64>> {
        let v: serde_json::Value = serde_json::from_slice(stdout).unwrap();
        v["items"][0]["perspectives"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| serde_json::from_value(p["embedding"].clone()).unwrap())
            .collect()
    };
    let (code, err, full) = embed(&[]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err, short) = embed(&["--dim", "32"]);
    assert_eq!(code, Some(0), "{err}");
    for (f, s) in vectors(&full).iter().zip(vectors(&short)) {
        assert_eq!(s.len(), 32);
        let norm = f[..32].iter().map(|x| x * x).sum::<f64>().sqrt();
        for (a, b) in f[..32].iter().zip(&s) {
            assert!((a / norm - b).abs() < 1e-5, "{a} / {norm} vs {b}");
        }
    }
    for bad in ["0", "129"] {
        let (code, err, _) = embed(&["--dim", bad]);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains(&format!("--dim {bad}")) && err.contains("give 1 to 128"),
            "{err}"
        );
    }
}

#[test]
fn search_and_explain_work_on_a_matryoshka_prefix() {
    let gallery = temp("dimgallery");
    std::fs::create_dir_all(&gallery).unwrap();
    let mut rng = agff_lens::scenes::SceneRng::new(21);
    for i in 0..4 {
        agff_lens::scenes::Scene::random(&mut rng)
            .render()
            .save(gallery.join(format!("s{i}.png")))
            .unwrap();
    }
    let cache = temp("dimcache");
    let search = |dim: &str| {
        agff_lens()
            .args([
                "search",
                "--model",
                "demo",
                "--query",
                "a red circle",
                "--json",
            ])
            .args(["--dim", dim])
            .arg("--gallery")
            .arg(&gallery)
            .arg("--cache")
            .arg(&cache)
            .output()
            .unwrap()
    };
    for dim in ["16", "128", "16"] {
        let v = json_of(&search(dim));
        assert_eq!(v["results"].as_array().unwrap().len(), 4);
    }
    // Each width has its own cache entry: the third search reads the first one's.
    let v = json_of(&search("16"));
    assert_eq!(v["from_cache"], 4);
    let out_dir = temp("dimexplain");
    let out = agff_lens()
        .args([
            "explain",
            "--model",
            "demo",
            "--query",
            "a red circle",
            "--method",
            "similarity",
        ])
        .args(["--dim", "16", "--json"])
        .arg("--image")
        .arg(gallery.join("s0.png"))
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for d in [gallery, cache, out_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn eval_pmmvp_puts_several_models_in_one_table_with_a_row_each() {
    let siglip = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/siglip/tiny");
    let args = [
        "eval", "pmmvp", "--model", "demo", "--model", siglip, "--pairs", "2",
    ];
    let out = agff_lens().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let header = lines.iter().position(|l| l.contains("average")).unwrap();
    assert!(lines[header].contains("orienta") && lines[header].contains("viewpoi"));
    // demo, its GG row, then the SigLIP checkpoint (K = 0: no separate GG row).
    assert!(lines[header + 1].trim_start().starts_with("demo"));
    assert!(lines[header + 2].trim_start().starts_with("GG"));
    assert!(lines[header + 3].trim_start().starts_with(siglip));
    // 9 patterns, the average and its standard error on every row.
    assert_eq!(lines[header + 3].split_whitespace().count(), 12);
    let v = json_of(&agff_lens().args(args).arg("--json").output().unwrap());
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[1]["model"], siglip);
    for m in models {
        let se = m["average_standard_error"]["fused"].as_f64().unwrap();
        assert!((0.0..=50.0).contains(&se), "{se}");
    }
    // With K = 0 every pattern's FG, GF and FF equal GG.
    let avg = &models[1]["average"];
    assert_eq!(avg["GG"], avg["FF"]);
    assert_eq!(avg["GG"], avg["fused"]);
}

#[test]
fn eval_pmmvp_shows_each_fine_view_alone_for_one_model() {
    let out = agff_lens()
        .args(["eval", "pmmvp", "--model", "demo", "--pairs", "1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text
        .lines()
        .find(|l| l.trim_start().starts_with("view alone"))
        .unwrap_or_else(|| panic!("no view table in:\n{text}"));
    for view in ["attributes", "count", "spatial", "text"] {
        assert!(header.contains(view), "{header}");
    }
    // A global-only model has no fine view to show.
    let siglip = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/siglip/tiny");
    let out = agff_lens()
        .args(["eval", "pmmvp", "--model", siglip, "--pairs", "1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("view alone"));
}

/// `bench model --once` times one global embedding of a non-square image with the chosen
/// preprocessing (how the README's 12-megapixel figures are measured).
#[test]
fn bench_model_once_times_a_non_square_image_with_a_profile() {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/qwen3vl/tiny-a/config.json");
    let run = |profile: &str| {
        json_of(
            &agff_lens()
                .args(["bench", "model", "--config"])
                .arg(&config)
                .args([
                    "--image-size",
                    "200",
                    "--image-height",
                    "90",
                    "--once",
                    "--json",
                ])
                .args(["--preprocess", profile])
                .output()
                .unwrap(),
        )
    };
    let e = run("embedder");
    assert_eq!(
        (e["image_size"].as_u64(), e["image_height"].as_u64()),
        (Some(200), Some(90))
    );
    assert!(
        e["preprocess"]
            .as_str()
            .unwrap()
            .starts_with("embedder 4096..1843200")
    );
    assert!(e["single_seconds"].as_f64().unwrap() > 0.0);
    // The processor's minimum (65,536 pixels for this config's processor defaults) lifts
    // the image to more tokens than the embedder's 4,096.
    let p = run("processor");
    assert!(p["preprocess"].as_str().unwrap().starts_with("processor"));
    assert!(
        p["tokens"].as_u64().unwrap() > e["tokens"].as_u64().unwrap(),
        "{p} {e}"
    );
}

#[test]
fn zero_counts_are_refused_not_run() {
    // An evaluation over nothing printed a table of zeros; a training run of 0 steps
    // wrote an untrained run as if it had finished.
    for args in [
        ["eval", "pointing", "--model", "demo", "--scenes", "0"],
        ["eval", "pmmvp", "--model", "demo", "--pairs", "0"],
    ] {
        let out = agff_lens().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("0 is not in 1.."),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = std::env::temp_dir().join(format!("agff-zero-steps-{}", std::process::id()));
    let out = agff_lens()
        .args([
            "train", "--model", "demo", "--data", "scenes", "--steps", "0", "--out",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("steps must be at least 1"));
    assert!(!dir.join("fusion.json").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
