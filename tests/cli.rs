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
    for args in [
        &["embed", "--model", "demo", "--text", "x", "--json"][..],
        &["bench", "search"],
        &["search", "--json"],
        &["train"],
    ] {
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
