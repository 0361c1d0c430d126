//! The AGFF core against independent references: brute-force loops over perspectives,
//! hand-computed fusion values, finite differences and the formulas of method.md §2–§5.

use agff_lens::agff::{
    Aggregator, EgaConfig, FfPairing, FusedScorer, Fusion, FusionInit, PerspectiveEmbeddings,
    Similarity, SimilarityConfig, agff_similarities, ega_objective, info_nce,
};
use candle_core::{DType, Device, Tensor, Var};

const DEV: Device = Device::Cpu;

/// Deterministic pseudo-random numbers (the crate's seeded generator), so failures
/// reproduce.
struct Rng(agff_lens::util::rng::SplitMix64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(agff_lens::util::rng::SplitMix64::new(seed))
    }

    fn next(&mut self) -> f64 {
        self.0.unit_f64() * 2.0 - 1.0
    }

    fn tensor(&mut self, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| self.next()).collect();
        Tensor::from_vec(v, shape, &DEV).unwrap()
    }
}

fn vec3(t: &Tensor) -> Vec<Vec<Vec<f64>>> {
    t.to_dtype(DType::F64).unwrap().to_vec3().unwrap()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn reduce(agg: Aggregator, x: &[f64]) -> f64 {
    let k = x.len() as f64;
    match agg {
        Aggregator::Max => x.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        Aggregator::Mean => x.iter().sum::<f64>() / k,
        // The definition, literally: γ·log((1/K)·Σ exp(x/γ)); fine in f64 for |x| ≤ 1, γ ≥ 0.05.
        Aggregator::Lme { gamma } => {
            gamma * (x.iter().map(|v| (v / gamma).exp()).sum::<f64>() / k).ln()
        }
    }
}

/// s_GG, s_FG, s_GF, s_FF of one pair by loops over perspectives (method.md §2).
fn brute_force_similarities(q: &[Vec<f64>], c: &[Vec<f64>], cfg: &SimilarityConfig) -> [f64; 4] {
    let k = q.len() - 1;
    let gg = dot(&q[0], &c[0]);
    if k == 0 {
        return [gg; 4];
    }
    let fg: Vec<f64> = (1..=k).map(|i| dot(&q[i], &c[0])).collect();
    let gf: Vec<f64> = (1..=k).map(|i| dot(&q[0], &c[i])).collect();
    let ff: Vec<f64> = match cfg.ff_pairing {
        FfPairing::Matched => (1..=k).map(|i| dot(&q[i], &c[i])).collect(),
        FfPairing::All => (1..=k)
            .flat_map(|i| (1..=k).map(move |j| (i, j)))
            .map(|(i, j)| dot(&q[i], &c[j]))
            .collect(),
    };
    let agg = cfg.aggregator;
    [gg, reduce(agg, &fg), reduce(agg, &gf), reduce(agg, &ff)]
}

#[test]
fn similarities_equal_brute_force_loops() {
    agff_lens::test_devices!(dev => { similarities_equal_brute_force_on(&dev) });
}

fn similarities_equal_brute_force_on(dev: &Device) {
    let mut rng = Rng::new(7);
    let aggregators = [
        Aggregator::Max,
        Aggregator::Mean,
        Aggregator::Lme { gamma: 0.05 },
        Aggregator::Lme { gamma: 0.7 },
    ];
    // (K, d, queries, candidates)
    for (k, d, nq, nc) in [
        (0, 5, 2, 3),
        (1, 3, 2, 3),
        (3, 8, 4, 5),
        (4, 16, 3, 7),
        (6, 2, 1, 4),
    ] {
        let on = |t: Tensor| t.to_device(dev).unwrap();
        let q = PerspectiveEmbeddings::from_raw(on(rng.tensor(&[nq, k + 1, d]))).unwrap();
        let c = PerspectiveEmbeddings::from_raw(on(rng.tensor(&[nc, k + 1, d]))).unwrap();
        let (qv, cv) = (vec3(q.tensor()), vec3(c.tensor()));
        for aggregator in aggregators {
            for ff_pairing in [FfPairing::Matched, FfPairing::All] {
                let cfg = SimilarityConfig {
                    aggregator,
                    ff_pairing,
                };
                let got = agff_similarities(&q, &c, &cfg).unwrap();
                assert_eq!(got.similarities.dims(), &[nq, nc, 4]);
                assert_eq!(got.perspective_sims.dims(), &[nq, nc, k + 1, k + 1]);
                let similarities = vec3(&got.similarities);
                let sims: Vec<f64> = got
                    .perspective_sims
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let p = k + 1;
                for i in 0..nq {
                    for j in 0..nc {
                        let want = brute_force_similarities(&qv[i], &cv[j], &cfg);
                        for m in 0..4 {
                            let err = (similarities[i][j][m] - want[m]).abs();
                            assert!(
                                err < 1e-12,
                                "K={k} d={d} {cfg:?} pair ({i},{j}) pattern {m}: {} vs {}",
                                similarities[i][j][m],
                                want[m]
                            );
                        }
                        for a in 0..=k {
                            for b in 0..=k {
                                let want = dot(&qv[i][a], &cv[j][b]);
                                let got = sims[((i * nc + j) * p + a) * p + b];
                                assert!((got - want).abs() < 1e-12);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn similarities_reject_mismatched_batches() {
    let mut rng = Rng::new(1);
    let q = PerspectiveEmbeddings::from_raw(rng.tensor(&[2, 3, 4])).unwrap();
    let wider = PerspectiveEmbeddings::from_raw(rng.tensor(&[2, 3, 5])).unwrap();
    let more_k = PerspectiveEmbeddings::from_raw(rng.tensor(&[2, 4, 4])).unwrap();
    let cfg = SimilarityConfig::default();
    assert!(
        agff_similarities(&q, &wider, &cfg)
            .unwrap_err()
            .to_string()
            .contains("width")
    );
    assert!(
        agff_similarities(&q, &more_k, &cfg)
            .unwrap_err()
            .to_string()
            .contains("perspectives")
    );
}

#[test]
fn lme_lies_between_mean_and_max() {
    let x = [0.1f32, 0.4, -0.3, 0.35];
    let max = Aggregator::Max.reduce_slice(&x);
    let mean = Aggregator::Mean.reduce_slice(&x);
    let mut last = f32::INFINITY;
    for gamma in [0.001, 0.05, 0.5, 5.0, 500.0] {
        let v = Aggregator::Lme { gamma }.reduce_slice(&x);
        assert!(v <= max + 1e-6 && v >= mean - 1e-6, "γ={gamma}: {v}");
        assert!(v <= last + 1e-6, "lme must fall as γ grows");
        last = v;
    }
    assert!((Aggregator::Lme { gamma: 0.001 }.reduce_slice(&x) - max).abs() < 2e-3);
    assert!((Aggregator::Lme { gamma: 500.0 }.reduce_slice(&x) - mean).abs() < 1e-3);
    assert!("lme:-1".parse::<Aggregator>().is_err());
    assert_eq!(
        "lme:0.2".parse::<Aggregator>().unwrap(),
        Aggregator::Lme { gamma: 0.2 }
    );
}

fn fusion(theta: [f64; 4], beta: f64) -> Fusion {
    Fusion::new(FusionInit { theta, beta }, DType::F64, &DEV).unwrap()
}

fn fuse_one(f: &Fusion, s: [f64; 4]) -> (f64, Vec<f64>) {
    let t = Tensor::new(&s, &DEV).unwrap().reshape((1, 4)).unwrap();
    let fused = f.fuse(&t).unwrap();
    let score = fused.scores.to_vec1::<f64>().unwrap()[0];
    let a = fused.weights.to_vec2::<f64>().unwrap().remove(0);
    (score, a)
}

#[test]
fn fusion_matches_hand_computed_values() {
    // β = 1, equal weights, exp(s_m) = 1, 3, 5, 7: s = log(16/4) = log 4, a = (1,3,5,7)/16.
    let s = [0.0, 3f64.ln(), 5f64.ln(), 7f64.ln()];
    let (score, a) = fuse_one(&fusion([0.0; 4], 1.0), s);
    assert!((score - 4f64.ln()).abs() < 1e-12, "{score}");
    for (got, want) in a.iter().zip([1.0, 3.0, 5.0, 7.0]) {
        assert!((got - want / 16.0).abs() < 1e-12);
    }
    // w = (0.1, 0.2, 0.3, 0.4) from θ = log(1, 2, 3, 4): Σ w·exp(s) = 0.1+0.6+1.5+2.8 = 5.
    let theta = [1f64.ln(), 2f64.ln(), 3f64.ln(), 4f64.ln()];
    let (score, a) = fuse_one(&fusion(theta, 1.0), s);
    assert!((score - 5f64.ln()).abs() < 1e-12, "{score}");
    for (got, want) in a.iter().zip([0.02, 0.12, 0.3, 0.56]) {
        assert!((got - want).abs() < 1e-12);
    }
    // β = 0.5: s_m = 0.5·log(x_m) so exp(s_m/β) = x_m = (2, 4, 6, 8); equal weights → 0.5·log 5.
    let s = [2f64, 4.0, 6.0, 8.0].map(|x| 0.5 * x.ln());
    let (score, _) = fuse_one(&fusion([0.0; 4], 0.5), s);
    assert!((score - 0.5 * 5f64.ln()).abs() < 1e-12, "{score}");
}

#[test]
fn equal_patterns_give_that_value_and_small_beta_gives_the_max() {
    let f = fusion([0.3, -1.2, 0.8, 0.1], 0.05);
    let (score, a) = fuse_one(&f, [0.37; 4]);
    assert!((score - 0.37).abs() < 1e-12);
    // With equal patterns the pair weights are the pattern weights w.
    let w = f.similarity_weights().unwrap();
    for (got, want) in a.iter().zip(w) {
        assert!((got - want as f64).abs() < 1e-6);
    }
    let s = [0.1, 0.7, 0.3, -0.2];
    let (score, a) = fuse_one(&fusion([0.0; 4], 1e-4), s);
    assert!((score - 0.7).abs() < 1e-3, "{score}");
    assert!(a[1] > 0.999);
    // And the fused score always lies between min and max.
    for beta in [1e-3, 0.05, 1.0, 30.0] {
        let (score, _) = fuse_one(&fusion([0.3, -1.2, 0.8, 0.1], beta), s);
        assert!((-0.2..=0.7).contains(&score), "β={beta}: {score}");
    }
}

#[test]
fn fusion_weights_sum_to_one_and_are_the_gradient() {
    let f = fusion([0.5, -0.3, 0.0, 1.1], 0.08);
    let s = [0.42, 0.51, 0.38, 0.47];
    let (_, a) = fuse_one(&f, s);
    assert!((a.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    let eps = 1e-6;
    for m in 0..4 {
        let (mut up, mut down) = (s, s);
        up[m] += eps;
        down[m] -= eps;
        let fd = (fuse_one(&f, up).0 - fuse_one(&f, down).0) / (2.0 * eps);
        assert!((fd - a[m]).abs() < 1e-7, "pattern {m}: a={} fd={fd}", a[m]);
    }
}

#[test]
fn global_only_embeddings_fuse_to_gg() {
    let mut rng = Rng::new(3);
    let q = PerspectiveEmbeddings::from_raw(rng.tensor(&[3, 1, 6])).unwrap();
    let c = PerspectiveEmbeddings::from_raw(rng.tensor(&[4, 1, 6])).unwrap();
    let scores = agff_similarities(&q, &c, &SimilarityConfig::default()).unwrap();
    let fused = fusion([0.2, 0.1, -0.4, 0.0], 0.05)
        .fuse(&scores.similarities)
        .unwrap();
    let gg = q
        .global()
        .unwrap()
        .matmul(&c.global().unwrap().t().unwrap())
        .unwrap();
    let diff = (fused.scores - gg)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(diff.to_scalar::<f64>().unwrap() < 1e-12);
}

/// Gradients of `loss` w.r.t. each var.
fn grads(loss: &Tensor, vars: &[&Var]) -> Vec<Vec<f64>> {
    let store = loss.backward().unwrap();
    vars.iter()
        .map(|v| {
            store
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        })
        .collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Fused `[B, B]` scores of raw query and candidate embeddings.
fn fused_scores(q: &Var, c: &Var, f: &Fusion) -> Tensor {
    let q = PerspectiveEmbeddings::from_raw(q.as_tensor().clone()).unwrap();
    let c = PerspectiveEmbeddings::from_raw(c.as_tensor().clone()).unwrap();
    let p = agff_similarities(&q, &c, &SimilarityConfig::default()).unwrap();
    f.fuse(&p.similarities).unwrap().scores
}

#[test]
fn ega_with_alpha_zero_is_plain_info_nce() {
    let mut rng = Rng::new(11);
    let q = Var::from_tensor(&rng.tensor(&[6, 4, 8])).unwrap();
    let c = Var::from_tensor(&rng.tensor(&[6, 4, 8])).unwrap();
    let f = fusion([0.1, 0.0, -0.2, 0.3], 0.05);
    let s = fused_scores(&q, &c, &f);
    let tau = 0.02;
    let ega = ega_objective(&s, &EgaConfig { alpha: 0.0, tau }).unwrap();
    let plain = info_nce(&s, tau).unwrap();
    let plain_value = plain.to_scalar::<f64>().unwrap();
    assert!((ega.info_nce - plain_value).abs() < 1e-12);
    assert!((ega.objective.to_scalar::<f64>().unwrap() - plain_value).abs() < 1e-12);
    let g_ega = grads(&ega.objective, &[&q, &c]);
    let g_plain = grads(&plain, &[&q, &c]);
    for (a, b) in g_ega.iter().zip(&g_plain) {
        let scale = b.iter().map(|x| x.abs()).fold(0.0, f64::max);
        assert!(scale > 1e-3, "the gradient must not vanish in this test");
        assert!(max_abs_diff(a, b) <= 1e-6, "{}", max_abs_diff(a, b));
    }
}

/// G/(τB) from method.md §5, by loops over a plain matrix.
fn reference_ega_gradient(s: &[Vec<f64>], alpha: f64, tau: f64) -> Vec<f64> {
    let b = s.len();
    let mut out = Vec::new();
    for i in 0..b {
        let row = &s[i];
        let z: f64 = row.iter().map(|v| (v / tau).exp()).sum();
        let p: Vec<f64> = row.iter().map(|v| (v / tau).exp() / z).collect();
        let mut g = vec![0.0; row.len()];
        for j in 0..row.len() {
            if j != i {
                let h = 1.0 / (1.0 + (-(row[j] - row[i]) / tau).exp());
                g[j] = p[j] * (1.0 + alpha * h);
            }
        }
        g[i] = -g.iter().sum::<f64>();
        out.extend(g.iter().map(|x| x / (tau * b as f64)));
    }
    out
}

#[test]
fn ega_gradient_is_the_amplified_matrix() {
    let mut rng = Rng::new(5);
    for (b, c) in [(4, 4), (5, 8)] {
        let raw = rng.tensor(&[b, c]);
        let s = Var::from_tensor(&(raw * 0.3).unwrap()).unwrap();
        let values = s.as_tensor().to_vec2::<f64>().unwrap();
        for alpha in [0.0, 0.5, 1.0, 3.0] {
            for tau in [0.02, 0.1] {
                let out = ega_objective(s.as_tensor(), &EgaConfig { alpha, tau }).unwrap();
                let got = &grads(&out.objective, &[&s])[0];
                let want = reference_ega_gradient(&values, alpha, tau);
                let scale = want.iter().map(|x| x.abs()).fold(0.0, f64::max);
                assert!(
                    max_abs_diff(got, &want) <= 1e-9 * scale.max(1.0),
                    "B={b} C={c} α={alpha} τ={tau}: {}",
                    max_abs_diff(got, &want)
                );
                // Rows of G sum to zero: the positive's pull balances the amplified push.
                for row in want.chunks(c) {
                    assert!(row.iter().sum::<f64>().abs() < 1e-9 * scale.max(1.0));
                }
            }
        }
    }
}

#[test]
fn a_hard_negatives_share_of_the_gradient_grows_with_alpha() {
    // Query 0: positive 0.50, a hard negative at 0.49, easy ones far below.
    let s = Tensor::new(
        &[
            [0.50f64, 0.49, 0.20, 0.10],
            [0.05, 0.60, 0.10, 0.00],
            [0.1, 0.2, 0.7, 0.3],
            [0.0, 0.1, 0.2, 0.8],
        ],
        &DEV,
    )
    .unwrap();
    let s = Var::from_tensor(&s).unwrap();
    let mut last = 0.0;
    for alpha in [0.0, 0.5, 1.0, 2.0, 4.0] {
        let out = ega_objective(s.as_tensor(), &EgaConfig { alpha, tau: 0.05 }).unwrap();
        let g = &grads(&out.objective, &[&s])[0];
        let negatives: f64 = g[1..4].iter().map(|x| x.abs()).sum();
        let share = g[1].abs() / negatives;
        assert!(
            share > last,
            "α={alpha}: share {share} did not grow from {last}"
        );
        last = share;
        let amp = out.amplification.to_vec2::<f64>().unwrap();
        let h = out.hardness.to_vec2::<f64>().unwrap();
        assert!((amp[0][1] - (1.0 + alpha * h[0][1])).abs() < 1e-12);
        assert_eq!(amp[0][0], 1.0);
        assert_eq!(h[0][0], 0.0);
        // The hard negative is much harder than the easy one.
        assert!(h[0][1] > 0.4 && h[0][3] < 1e-3);
    }
}

#[test]
fn gradients_reach_theta_rho_and_embeddings() {
    let mut rng = Rng::new(23);
    let q = Var::from_tensor(&rng.tensor(&[4, 3, 5])).unwrap();
    let c = Var::from_tensor(&rng.tensor(&[4, 3, 5])).unwrap();
    let f = fusion([0.4, -0.1, 0.2, -0.6], 0.1);
    let tau = 0.1;
    let loss_of = |q: &Var, c: &Var, f: &Fusion| -> f64 {
        info_nce(&fused_scores(q, c, f), tau)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let loss = info_nce(&fused_scores(&q, &c, &f), tau).unwrap();
    let g = grads(&loss, &[&q, &c, f.theta(), f.rho()]);
    let eps = 1e-6;
    // Central differences on every parameter of the fusion and some embedding entries.
    let check = |var: &Var, grad: &[f64], indexes: &[usize]| {
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for &i in indexes {
            let mut plus = base.clone();
            plus[i] += eps;
            let mut minus = base.clone();
            minus[i] -= eps;
            var.set(&Tensor::from_vec(plus, var.shape(), &DEV).unwrap())
                .unwrap();
            let up = loss_of(&q, &c, &f);
            var.set(&Tensor::from_vec(minus, var.shape(), &DEV).unwrap())
                .unwrap();
            let down = loss_of(&q, &c, &f);
            var.set(&Tensor::from_vec(base.clone(), var.shape(), &DEV).unwrap())
                .unwrap();
            let fd = (up - down) / (2.0 * eps);
            assert!(
                (fd - grad[i]).abs() <= 1e-5 * (1.0 + fd.abs()),
                "index {i}: autograd {} vs finite difference {fd}",
                grad[i]
            );
        }
    };
    assert!(g[2].iter().any(|x| x.abs() > 1e-4), "θ gets a gradient");
    assert!(g[3][0].abs() > 1e-4, "ρ gets a gradient");
    check(f.theta(), &g[2], &[0, 1, 2, 3]);
    check(f.rho(), &g[3], &[0]);
    check(&q, &g[0], &[0, 7, 16, 33, 59]);
    check(&c, &g[1], &[2, 11, 25, 40, 58]);
}

#[test]
fn contrastive_losses_reject_bad_input() {
    let s = Tensor::zeros((3, 2), DType::F64, &DEV).unwrap();
    assert!(info_nce(&s, 0.02).is_err(), "fewer candidates than queries");
    let s = Tensor::zeros((2, 2), DType::F64, &DEV).unwrap();
    assert!(info_nce(&s, 0.0).is_err());
    assert!(
        ega_objective(
            &s,
            &EgaConfig {
                alpha: -1.0,
                tau: 0.02
            }
        )
        .is_err()
    );
    let nan = Tensor::new(&[[f64::NAN, 0.0], [0.0, 0.0]], &DEV).unwrap();
    let err = ega_objective(&nan, &EgaConfig::default()).unwrap_err();
    assert!(err.to_string().contains("not finite"), "{err}");
    assert_eq!(
        Similarity::ALL.map(Similarity::name),
        ["GG", "FG", "GF", "FF"]
    );
}

#[test]
fn fast_scorer_matches_the_differentiable_path() {
    let mut rng = Rng::new(31);
    for (k, d, nq, nc) in [(0, 6, 2, 5), (1, 4, 3, 2), (4, 32, 3, 300), (5, 9, 1, 7)] {
        let q = PerspectiveEmbeddings::from_raw(rng.tensor(&[nq, k + 1, d])).unwrap();
        let c = PerspectiveEmbeddings::from_raw(rng.tensor(&[nc, k + 1, d])).unwrap();
        let f = fusion([0.2, -0.5, 0.9, 0.0], 0.07);
        for aggregator in [
            Aggregator::Max,
            Aggregator::Mean,
            Aggregator::Lme { gamma: 0.05 },
        ] {
            for ff_pairing in [FfPairing::Matched, FfPairing::All] {
                let cfg = SimilarityConfig {
                    aggregator,
                    ff_pairing,
                };
                let slow = agff_similarities(&q, &c, &cfg).unwrap();
                let fused = f.fuse(&slow.similarities).unwrap();
                let (similarities, weights) = (vec3(&slow.similarities), vec3(&fused.weights));
                let scores = fused.scores.to_vec2::<f64>().unwrap();
                let fast = FusedScorer::new(cfg, &f).unwrap().score(&q, &c).unwrap();
                assert_eq!((fast.queries, fast.candidates), (nq, nc));
                for i in 0..nq {
                    assert_eq!(fast.row(i).len(), nc);
                    for j in 0..nc {
                        let got = fast.get(i, j).unwrap();
                        let close = |a: f32, b: f64| (a as f64 - b).abs() < 2e-5;
                        assert!(
                            close(got.fused, scores[i][j]),
                            "K={k} {cfg:?} ({i},{j}) fused"
                        );
                        for m in 0..4 {
                            assert!(
                                close(got.similarities[m], similarities[i][j][m]),
                                "pattern {m}"
                            );
                            assert!(close(got.weights[m], weights[i][j][m]), "weight {m}");
                        }
                    }
                }
                assert!(fast.get(nq, 0).is_none());
            }
        }
    }
}
