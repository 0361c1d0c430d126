//! Criterion benchmarks of the AGFF core: scoring (patterns + fusion) and one EGA
//! training step's backward pass. `agff-lens bench fusion` gives the headline figures;
//! these track regressions at fixed small sizes.

use agff_lens::agff::{
    EgaConfig, Fusion, FusionInit, PerspectiveEmbeddings, SimilarityConfig, agff_similarities,
    ega_objective,
};
use candle_core::{DType, Device, Tensor, Var};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn unit(n: usize, p: usize, d: usize) -> PerspectiveEmbeddings {
    let raw = Tensor::randn(0f32, 1.0, (n, p, d), &Device::Cpu).expect("random tensor");
    PerspectiveEmbeddings::from_raw(raw).expect("normalise")
}

fn scoring(c: &mut Criterion) {
    let mut group = c.benchmark_group("fused_scores");
    let fusion = Fusion::new(FusionInit::default(), DType::F32, &Device::Cpu).expect("fusion");
    let config = SimilarityConfig::default();
    for d in [256usize, 2048] {
        let (nq, nc) = (16, 1024);
        let q = unit(nq, 5, d);
        let cands = unit(nc, 5, d);
        group.throughput(Throughput::Elements((nq * nc) as u64));
        group.bench_with_input(BenchmarkId::new("k4", d), &d, |b, _| {
            b.iter(|| {
                let p = agff_similarities(&q, &cands, &config).expect("similarities");
                fusion.fuse(&p.similarities).expect("fuse")
            });
        });
    }
    group.finish();
}

fn ega_step(c: &mut Criterion) {
    let fusion = Fusion::new(FusionInit::default(), DType::F32, &Device::Cpu).expect("fusion");
    let config = SimilarityConfig::default();
    let b = 64;
    let q = Var::randn(0f32, 1.0, (b, 5, 256), &Device::Cpu).expect("q");
    let k = Var::randn(0f32, 1.0, (b, 5, 256), &Device::Cpu).expect("k");
    c.bench_function("ega_backward_b64_d256", |bench| {
        bench.iter(|| {
            let qe = PerspectiveEmbeddings::from_raw(q.as_tensor().clone()).expect("q");
            let ke = PerspectiveEmbeddings::from_raw(k.as_tensor().clone()).expect("k");
            let p = agff_similarities(&qe, &ke, &config).expect("similarities");
            let s = fusion.fuse(&p.similarities).expect("fuse").scores;
            let out = ega_objective(&s, &EgaConfig::default()).expect("ega");
            out.objective.backward().expect("backward")
        });
    });
}

criterion_group!(benches, scoring, ega_step);
criterion_main!(benches);
