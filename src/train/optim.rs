//! AdamW with its state kept by parameter name, so a checkpoint can save and restore it.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor, Var, backprop::GradStore};

use super::TrainError;

/// AdamW (decoupled weight decay) over named variables.
pub struct AdamW {
    vars: Vec<(String, Var, bool)>,
    /// Per-variable factor on the learning rate (1 unless [`AdamW::scale_lr_where`] set it).
    lr_scales: Vec<f64>,
    m: HashMap<String, Tensor>,
    v: HashMap<String, Tensor>,
    /// Updates taken so far (the `t` of the bias corrections); saved with the moments.
    pub step: u64,
    /// Decay of the first moment (0.9).
    pub beta1: f64,
    /// Decay of the second moment (0.98).
    pub beta2: f64,
    /// Added to the root of the second moment (1e-8).
    pub eps: f64,
    /// Decoupled weight decay: each update first scales a decayed variable by
    /// `1 − lr·weight_decay`.
    pub weight_decay: f64,
}

impl AdamW {
    /// `vars` with a flag saying whether weight decay applies (matrices yes; norms,
    /// biases, position tables and fusion parameters no).
    pub fn new(vars: Vec<(String, Var, bool)>, weight_decay: f64) -> Self {
        Self {
            lr_scales: vec![1.0; vars.len()],
            vars,
            m: HashMap::new(),
            v: HashMap::new(),
            step: 0,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
            weight_decay,
        }
    }

    /// Multiplies the learning rate (and so the decoupled decay, which scales with it) of
    /// every variable whose name satisfies `pred` by `scale`: a pre-trained part trained
    /// on at a lower rate than the parts learnt from scratch.
    pub fn scale_lr_where(&mut self, pred: impl Fn(&str) -> bool, scale: f64) {
        for ((name, _, _), s) in self.vars.iter().zip(self.lr_scales.iter_mut()) {
            if pred(name) {
                *s = scale;
            }
        }
    }

    /// Global L2 norm of the gradients of all variables (missing gradients count 0).
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64, TrainError> {
        let mut total = 0f64;
        for (_, var, _) in &self.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                total += g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
            }
        }
        Ok(total.sqrt())
    }

    /// Whether every variable holds only finite numbers.
    pub fn params_finite(&self) -> Result<bool, TrainError> {
        for (_, var, _) in &self.vars {
            let s = var
                .as_tensor()
                .abs()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            if !s.is_finite() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// One update with learning rate `lr` after clipping the gradients' global norm
    /// (`norm`, from [`AdamW::grad_norm`]) to at most `clip`.
    ///
    /// # Errors
    /// As [`AdamW::step`].
    pub fn step_clipped(
        &mut self,
        grads: &GradStore,
        lr: f64,
        norm: f64,
        clip: f64,
    ) -> Result<(), TrainError> {
        let scale = if norm > clip { clip / norm } else { 1.0 };
        self.step(grads, lr, scale)
    }

    /// One update with learning rate `lr`, the gradients scaled by `scale` (clipping).
    pub fn step(&mut self, grads: &GradStore, lr: f64, scale: f64) -> Result<(), TrainError> {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        for ((name, var, decay), lr_scale) in self.vars.iter().zip(&self.lr_scales) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let lr = lr * lr_scale;
            // Detached: a gradient that candle computed from tracked tensors (a cosine
            // head's normalised weights) carries their op graph, and the moments built
            // from it would chain every step's graph to the next one's.
            let g = (g.detach() * scale)?;
            let m = match self.m.get(name) {
                Some(m) => ((m * self.beta1)? + (&g * (1.0 - self.beta1))?)?,
                None => (&g * (1.0 - self.beta1))?,
            };
            let v = match self.v.get(name) {
                Some(v) => ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?,
                None => (g.sqr()? * (1.0 - self.beta2))?,
            };
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + self.eps)?)?;
            let mut theta = var.as_tensor().detach();
            if *decay && self.weight_decay > 0.0 {
                theta = (theta * (1.0 - lr * self.weight_decay))?;
            }
            var.set(&(theta - (update * lr)?)?)?;
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        Ok(())
    }

    /// Saves the moments and step to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for (k, t) in &self.m {
            map.insert(format!("m.{k}"), t.clone());
        }
        for (k, t) in &self.v {
            map.insert(format!("v.{k}"), t.clone());
        }
        map.insert(
            "step".into(),
            Tensor::new(&[self.step as f64], &candle_core::Device::Cpu)?,
        );
        super::write_tensors(path, &map)
    }

    /// Restores what [`AdamW::save`] wrote.
    pub fn load(&mut self, path: &Path) -> Result<(), TrainError> {
        let device = self
            .vars
            .first()
            .map(|(_, v, _)| v.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        let map = candle_core::safetensors::load(path, &device).map_err(|e| {
            TrainError::Checkpoint(format!(
                "{}: cannot read optimiser state: {e}",
                path.display()
            ))
        })?;
        for (k, t) in map {
            if let Some(name) = k.strip_prefix("m.") {
                self.m.insert(name.to_string(), t);
            } else if let Some(name) = k.strip_prefix("v.") {
                self.v.insert(name.to_string(), t);
            } else if k == "step" {
                self.step = t.to_vec1::<f64>()?.first().copied().unwrap_or(0.0) as u64;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::Optimizer;

    /// Our AdamW (kept by name, so checkpoints can save it) takes the same steps as
    /// candle-nn's: decoupled weight decay, bias-corrected moments, the same β and ε.
    #[test]
    fn matches_candle_nn_adamw() {
        let dev = Device::Cpu;
        let init = crate::util::rng::SplitMix64::new(5).uniform_pm1(12);
        let target = crate::util::rng::SplitMix64::new(6).uniform_pm1(12);
        let target = Tensor::from_vec(target, (3, 4), &dev).unwrap();
        let ours_var = Var::from_vec(init.clone(), (3, 4), &dev).unwrap();
        let theirs_var = Var::from_vec(init, (3, 4), &dev).unwrap();
        let (lr, wd) = (0.05, 0.1);
        let mut ours = AdamW::new(vec![("w".into(), ours_var.clone(), true)], wd);
        let mut theirs = candle_nn::AdamW::new(
            vec![theirs_var.clone()],
            candle_nn::ParamsAdamW {
                lr,
                beta1: ours.beta1,
                beta2: ours.beta2,
                eps: ours.eps,
                weight_decay: wd,
            },
        )
        .unwrap();
        let loss = |w: &Var| {
            (w.as_tensor() - &target)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
        };
        for _ in 0..25 {
            ours.step(&loss(&ours_var).backward().unwrap(), lr, 1.0)
                .unwrap();
            theirs.step(&loss(&theirs_var).backward().unwrap()).unwrap();
        }
        let d = crate::model::testing::max_abs_diff(ours_var.as_tensor(), theirs_var.as_tensor());
        assert!(d < 1e-6, "AdamW differs from candle-nn's by {d}");
        // And it did move towards the target.
        let moved = crate::model::testing::max_abs_diff(ours_var.as_tensor(), &target);
        assert!(moved < 0.9, "{moved}");
    }

    /// The moments hold values, not graphs: a gradient that passes through the variable
    /// itself (a cosine head's row normalisation) comes out of candle's backward pass
    /// tracking ops, and moments built from it chained each step's graph to the next, so
    /// the demo recipe with cosine heads grew by megabytes a step until the kernel killed
    /// it (24 GB after 2,000 steps).
    #[test]
    fn moments_keep_no_graph() {
        let dev = Device::Cpu;
        let init = crate::util::rng::SplitMix64::new(9).uniform_pm1(12);
        let w = Var::from_vec(init, (3, 4), &dev).unwrap();
        let x = Tensor::from_vec(vec![0.5f32, -1.0, 2.0, 0.25], (1, 4), &dev).unwrap();
        let mut optim = AdamW::new(vec![("w".into(), w.clone(), true)], 0.1);
        for _ in 0..3 {
            let t = w.as_tensor();
            let norm = t.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
            let unit = t.broadcast_div(&norm).unwrap();
            let loss = x.matmul(&unit.t().unwrap()).unwrap().sum_all().unwrap();
            optim.step(&loss.backward().unwrap(), 0.01, 1.0).unwrap();
        }
        for moments in [&optim.m, &optim.v] {
            let m = moments.get("w").unwrap();
            assert!(
                !m.track_op(),
                "a moment keeps the op graph it was computed from"
            );
        }
    }

    /// A variable whose rate is scaled by s takes the steps it would take alone at s·lr,
    /// decay included, while the others keep the full rate.
    #[test]
    fn a_scaled_variable_moves_as_at_the_scaled_rate() {
        let dev = Device::Cpu;
        let init = crate::util::rng::SplitMix64::new(8).uniform_pm1(6);
        let var = |v: &[f32]| Var::from_vec(v.to_vec(), (2, 3), &dev).unwrap();
        let (tower, head, alone, full) = (var(&init), var(&init), var(&init), var(&init));
        let (lr, wd, s) = (0.05, 0.1, 0.1);
        let mut mixed = AdamW::new(
            vec![
                ("vision.w".into(), tower.clone(), true),
                ("head.w".into(), head.clone(), true),
            ],
            wd,
        );
        mixed.scale_lr_where(|n| n.starts_with("vision."), s);
        let mut slow = AdamW::new(vec![("w".into(), alone.clone(), true)], wd);
        let mut fast = AdamW::new(vec![("w".into(), full.clone(), true)], wd);
        let loss = |w: &Var| w.as_tensor().sqr().unwrap().sum_all().unwrap();
        for _ in 0..10 {
            let both = (loss(&tower) + loss(&head)).unwrap();
            mixed.step(&both.backward().unwrap(), lr, 1.0).unwrap();
            slow.step(&loss(&alone).backward().unwrap(), lr * s, 1.0)
                .unwrap();
            fast.step(&loss(&full).backward().unwrap(), lr, 1.0)
                .unwrap();
        }
        let diff = crate::model::testing::max_abs_diff;
        assert!(diff(tower.as_tensor(), alone.as_tensor()) < 1e-6);
        assert!(diff(head.as_tensor(), full.as_tensor()) < 1e-6);
        assert!(diff(tower.as_tensor(), head.as_tensor()) > 0.1);
    }
}
