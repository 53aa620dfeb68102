//! Parseval networks' step after each update (reference 7.1): every residual weight pair is projected onto
//! the simplex, `a0 <- clip((1 + a0 - a1) / 2, 0, 1)`, `a1 <- 1 - a0`, and every convolution kernel and
//! every linear weight except the last layer's, reshaped to `M (out x in kh kw)`, is retracted towards the
//! Stiefel manifold: `M <- (1 + beta) M - beta M M^T M`.

use candle_core::{Tensor, Var};

use crate::Result;

/// Applies the projection and the retraction; `last_weight` (the classifier's last layer) is left alone.
pub fn parseval_step(params: &[(String, Var)], last_weight: &Tensor, beta: f64) -> Result<()> {
    for (name, p) in params {
        let t = p.as_tensor().detach();
        if name.ends_with(".alpha") {
            let a: Vec<f32> = t.to_vec1()?;
            let a0 = ((1.0 + a[0] - a[1]) / 2.0).clamp(0.0, 1.0);
            p.set(&Tensor::new(&[a0, 1.0 - a0], t.device())?)?;
        } else if (t.rank() == 4 || t.rank() == 2) && p.as_tensor().id() != last_weight.id() {
            let m = t.flatten_from(1)?;
            let mmtm = lmt_models::matmul(&lmt_models::matmul(&m, &m.t()?)?, &m)?;
            let retracted = ((&m * (1.0 + beta))? - (mmtm * beta)?)?;
            p.set(&retracted.reshape(t.shape())?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn var(v: Tensor) -> Var {
        Var::from_tensor(&v).unwrap()
    }

    #[test]
    fn retraction_fixes_orthonormal_rows_and_projection_hits_the_simplex() {
        let dev = Device::Cpu;
        let orth = var(Tensor::new(&[[0.6f32, 0.8, 0.0], [-0.8, 0.6, 0.0]], &dev).unwrap());
        let scaled = var(Tensor::new(&[[2.0f32, 0.0], [0.0, 2.0]], &dev).unwrap());
        let last = var(Tensor::new(&[[5.0f32]], &dev).unwrap());
        let alpha = var(Tensor::new(&[0.9f32, 0.4], &dev).unwrap());
        let params = vec![
            ("a.weight".to_string(), orth.clone()),
            ("b.weight".to_string(), scaled.clone()),
            ("fc.weight".to_string(), last.clone()),
            ("g.alpha".to_string(), alpha.clone()),
        ];
        parseval_step(&params, last.as_tensor(), 0.1).unwrap();
        let o: Vec<Vec<f32>> = orth.as_tensor().to_vec2().unwrap();
        assert!(
            (o[0][0] - 0.6).abs() < 1e-6 && (o[1][1] - 0.6).abs() < 1e-6,
            "{o:?}"
        );
        // 2 I -> 1.1 * 2 - 0.1 * 8 = 1.4: pulled towards norm 1.
        assert!((scaled.as_tensor().to_vec2::<f32>().unwrap()[0][0] - 1.4).abs() < 1e-6);
        assert_eq!(last.as_tensor().to_vec2::<f32>().unwrap(), [[5.0]]);
        let a: Vec<f32> = alpha.as_tensor().to_vec1().unwrap();
        assert!(
            (a[0] - 0.75).abs() < 1e-6 && (a[1] - 0.25).abs() < 1e-6,
            "{a:?}"
        );
    }
}
