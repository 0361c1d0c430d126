//! Two-dimensional pictures of an embedding space: PCA at once, t-SNE on request.
//!
//! The gallery's unit vectors of one perspective (the global one, or a fine-grained one)
//! are projected to 2-D for the app's embedding map. PCA is exact and deterministic
//! (power iteration with deflation on the centred data, from a fixed start); t-SNE
//! (Barnes–Hut, the `bhtsne` crate) starts from the PCA layout, so it is deterministic
//! too, and is slower: it runs on the app's model thread.

use serde::Serialize;

use super::GalleryEmbeddings;

/// How to project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
pub enum ProjectionMethod {
    /// The first two principal components (milliseconds for 10,000 points).
    #[default]
    Pca,
    /// t-SNE (Barnes–Hut, θ = 0.5, perplexity up to 30, cosine distance), started from
    /// the PCA layout.
    Tsne,
}

/// A 2-D layout of `n` points and the linear map that placed them (PCA only), so that a
/// query can be placed on the same picture.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Projection {
    /// Row-major `[n, 2]` coordinates.
    pub points: Vec<[f32; 2]>,
    /// How the points were placed.
    pub method: ProjectionMethod,
    /// The PCA basis: mean `[d]` and two unit directions `[2][d]` (for t-SNE, the PCA
    /// basis it started from; a query placed with it lands near, not exactly on, its
    /// t-SNE neighbours).
    pub mean: Vec<f32>,
    /// The two unit PCA directions, each `[d]`.
    pub axes: [Vec<f32>; 2],
    /// Share of the variance each PCA axis explains.
    pub explained: [f32; 2],
}

impl Projection {
    /// Where a vector `[d]` lands under the PCA basis.
    pub fn place(&self, v: &[f32]) -> [f32; 2] {
        let mut out = [0f32; 2];
        for (o, axis) in out.iter_mut().zip(&self.axes) {
            *o = v
                .iter()
                .zip(&self.mean)
                .zip(axis)
                .map(|((x, m), a)| (x - m) * a)
                .sum();
        }
        out
    }
}

/// The vectors of perspective `slot` (0 = global) of every gallery item, `[n][d]`.
pub fn perspective_vectors(gallery: &GalleryEmbeddings, slot: usize) -> Vec<&[f32]> {
    let d = gallery.dim;
    (0..gallery.len())
        .map(|i| &gallery.item(i)[slot * d..(slot + 1) * d])
        .collect()
}

/// Projects `vectors` (each of the same length d) to 2-D. Fewer than 2 points give the
/// origin for each; a cancelled run (`cancel` true) returns `None`.
pub fn project(
    vectors: &[&[f32]],
    method: ProjectionMethod,
    cancel: &dyn Fn() -> bool,
) -> Option<Projection> {
    let pca = pca2(vectors);
    if method == ProjectionMethod::Pca || vectors.len() < 8 {
        return Some(pca);
    }
    if cancel() {
        return None;
    }
    Some(tsne(vectors, pca))
}

/// The first two principal components by power iteration (60 rounds each, from a fixed
/// start), with the second deflated against the first.
fn pca2(vectors: &[&[f32]]) -> Projection {
    let n = vectors.len();
    let d = vectors.first().map_or(0, |v| v.len());
    let mut mean = vec![0f32; d];
    for v in vectors {
        for (m, x) in mean.iter_mut().zip(*v) {
            *m += x / n.max(1) as f32;
        }
    }
    let centred: Vec<Vec<f32>> = vectors
        .iter()
        .map(|v| v.iter().zip(&mean).map(|(x, m)| x - m).collect())
        .collect();
    let total: f32 = centred
        .iter()
        .map(|r| r.iter().map(|x| x * x).sum::<f32>())
        .sum();
    let mut axes: [Vec<f32>; 2] = [vec![0f32; d], vec![0f32; d]];
    let mut explained = [0f32; 2];
    let mut rng = crate::util::rng::SplitMix64::new(0x9ca);
    for k in 0..2 {
        let mut v: Vec<f32> = rng.uniform_pm1(d);
        let mut lambda = 0f32;
        for _ in 0..60 {
            // w = Xᵀ(X v), deflated against the axes found before.
            let mut w = vec![0f32; d];
            for row in &centred {
                let s: f32 = row.iter().zip(&v).map(|(a, b)| a * b).sum();
                for (wi, ri) in w.iter_mut().zip(row) {
                    *wi += s * ri;
                }
            }
            for prev in &axes[..k] {
                let p: f32 = w.iter().zip(prev).map(|(a, b)| a * b).sum();
                for (wi, pi) in w.iter_mut().zip(prev) {
                    *wi -= p * pi;
                }
            }
            let norm = w.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm <= f32::EPSILON {
                break;
            }
            lambda = norm;
            v = w.iter().map(|x| x / norm).collect();
        }
        explained[k] = if total > 0.0 { lambda / total } else { 0.0 };
        axes[k] = v;
    }
    let mut out = Projection {
        points: Vec::with_capacity(n),
        method: ProjectionMethod::Pca,
        mean,
        axes,
        explained,
    };
    out.points = vectors.iter().map(|v| out.place(v)).collect();
    out
}

/// t-SNE from the PCA layout (scaled to a small spread, as t-SNE expects).
fn tsne(vectors: &[&[f32]], pca: Projection) -> Projection {
    let n = vectors.len();
    let spread = pca
        .points
        .iter()
        .map(|p| p[0].abs().max(p[1].abs()))
        .fold(0f32, f32::max)
        .max(1e-6);
    let init: Vec<f32> = pca
        .points
        .iter()
        .flat_map(|p| [p[0] / spread * 1e-2, p[1] / spread * 1e-2])
        .collect();
    // Perplexity must stay below n/3 for the affinities to exist.
    let perplexity = 30f32.min(((n as f32) - 1.0) / 3.0).max(2.0);
    let mut t: bhtsne::tSNE<f32, &[f32]> = bhtsne::tSNE::new(vectors);
    t.perplexity(perplexity)
        .epochs(500)
        .initial_embedding(init)
        .barnes_hut(0.5, |a, b| {
            // Angular distance of unit vectors: a metric, as Barnes–Hut requires.
            let dot: f32 = a.iter().zip(b.iter()).map(|(x, y)| x * y).sum();
            (2.0 - 2.0 * dot.clamp(-1.0, 1.0)).max(0.0).sqrt()
        });
    let flat = t.embedding();
    let points = flat.chunks(2).map(|c| [c[0], c[1]]).collect();
    Projection {
        points,
        method: ProjectionMethod::Tsne,
        ..pca
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pca_finds_the_axis_of_largest_spread_and_places_queries_on_it() {
        // Points along x with a little y: the first axis is ±x, explaining most variance.
        let data: Vec<Vec<f32>> = (0..50)
            .map(|i| {
                let t = i as f32 / 10.0 - 2.5;
                vec![t, 0.1 * (i % 3) as f32, 0.0]
            })
            .collect();
        let refs: Vec<&[f32]> = data.iter().map(Vec::as_slice).collect();
        let p = project(&refs, ProjectionMethod::Pca, &|| false).unwrap();
        assert_eq!(p.points.len(), 50);
        assert!(p.axes[0][0].abs() > 0.99, "{:?}", p.axes[0]);
        assert!(
            p.explained[0] > 0.95 && p.explained[1] < 0.05,
            "{:?}",
            p.explained
        );
        // Axes are orthonormal.
        let dot: f32 = p.axes[0].iter().zip(&p.axes[1]).map(|(a, b)| a * b).sum();
        assert!(dot.abs() < 1e-3);
        // A point's own placement is its layout coordinate.
        assert_eq!(p.place(&data[7]), p.points[7]);
    }

    #[test]
    fn tsne_keeps_clusters_apart() {
        // Two tight clusters of unit vectors far apart.
        let mut rng = crate::util::rng::SplitMix64::new(1);
        let mut data = Vec::new();
        for c in 0..2 {
            for _ in 0..20 {
                let mut v = vec![0f32; 8];
                v[c * 4] = 1.0;
                for x in &mut v {
                    *x += 0.05 * rng.rough_normal();
                }
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                data.push(v.iter().map(|x| x / n).collect::<Vec<f32>>());
            }
        }
        let refs: Vec<&[f32]> = data.iter().map(Vec::as_slice).collect();
        let p = project(&refs, ProjectionMethod::Tsne, &|| false).unwrap();
        assert_eq!(p.method, ProjectionMethod::Tsne);
        let centre = |r: std::ops::Range<usize>| {
            let k = r.len() as f32;
            r.fold([0f32; 2], |a, i| {
                [a[0] + p.points[i][0] / k, a[1] + p.points[i][1] / k]
            })
        };
        let (a, b) = (centre(0..20), centre(20..40));
        let between = ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
        let within = (0..20)
            .map(|i| ((p.points[i][0] - a[0]).powi(2) + (p.points[i][1] - a[1]).powi(2)).sqrt())
            .fold(0f32, f32::max);
        assert!(between > within, "between {between}, within {within}");
        assert!(
            p.points
                .iter()
                .all(|q| q[0].is_finite() && q[1].is_finite())
        );
    }
}
