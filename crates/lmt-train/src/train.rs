//! The training loop: one straight loop for every method (plain and LMT so far).
//!
//! Per step: c and the learning rate as pure functions of the step, forward with the train-time estimate
//! when LMT is on, the LMT logits, cross-entropy, backward, a finiteness check, the optimiser update, and
//! one power-iteration step (u <- its gradient). Per epoch: test accuracy, a CSV row and a checkpoint.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use lmt_core::{
    cross_entropy, gloro_logits, lmt_logits_prop1, lmt_logits_prop2, LipEstimate, PowerVectors,
};
use lmt_data::{Dataset, ImageSet};
use lmt_models::{CertifyMethod, Classifier, Ctx, Lip};

use crate::checkpoint::{self, Position};
use crate::config::{c_schedule, lr_schedule, Method, Plan};
use crate::error::{Result, TrainError};
use crate::optim::Optimizer;
use crate::parseval::parseval_step;
use crate::spectral::SpectralNormHook;

/// Crafts the adversarial batch that replaces a clean one in adversarial training.
///
/// The loop knows no attack (lmt-train does not depend on lmt-attacks); `experiments` implements this
/// with lmt-attacks' C&W for configs whose method is `adversarial`.
pub trait Adversary {
    /// Adversarial versions of `x` (labels `labels`) against `model` in inference mode.
    fn perturb(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        labels: &[usize],
    ) -> std::result::Result<Tensor, Box<dyn std::error::Error + Send + Sync>>;
}

/// Switches of one invocation (not part of the config).
#[derive(Clone, Copy, Default)]
pub struct RunOptions<'a> {
    /// Continue from `<out>/checkpoint.safetensors` if it exists.
    pub resume: bool,
    /// Stop (with a checkpoint) after this many global steps; for tests and interrupted runs.
    pub stop_after_steps: Option<usize>,
    /// Show a progress bar.
    pub progress: bool,
    /// The attack that crafts each batch, for the `adversarial` method (required there, unused elsewhere).
    pub adversary: Option<&'a dyn Adversary>,
}

/// One row of `log.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochLog {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss (the LMT loss for LMT runs); after a mid-epoch resume, over the resumed part.
    pub train_loss: f64,
    /// Training accuracy on the clean logits.
    pub train_accuracy: f64,
    /// Accuracy on the evaluated test images.
    pub test_accuracy: f64,
    /// c at the end of the epoch (0 for plain runs).
    pub c: f64,
    /// Train-time estimate of the bound the loss uses (L_sub for Prop. 2, L for Prop. 1), without c;
    /// NaN for plain runs, which carry no estimate. An estimate, not a certified bound.
    pub estimated_bound: f64,
    /// Wall seconds of the epoch (of its resumed part, after a resume).
    pub seconds: f64,
}

/// The CSV header of `log.csv`.
pub const LOG_HEADER: &str =
    "epoch,train_loss,train_accuracy,test_accuracy,c,estimated_bound,seconds";

impl EpochLog {
    fn csv(&self) -> String {
        format!(
            "{},{:.6},{:.6},{:.6},{},{},{:.3}",
            self.epoch,
            self.train_loss,
            self.train_accuracy,
            self.test_accuracy,
            self.c,
            if self.estimated_bound.is_nan() {
                String::new()
            } else {
                format!("{:.6}", self.estimated_bound)
            },
            self.seconds
        )
    }
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Rows logged by this invocation.
    pub epochs: Vec<EpochLog>,
    /// The checkpoint written last.
    pub checkpoint: PathBuf,
    /// Where training stopped.
    pub position: Position,
}

/// Images and labels of `idx` as tensors.
pub fn batch_tensors(set: &ImageSet, idx: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
    let (x, y) = set.batch_f32(idx);
    let [c, h, w] = set.image_shape();
    let x = Tensor::from_vec(x, (idx.len(), c, h, w), device)?;
    let y = Tensor::from_vec(
        y.iter().map(|&v| v as u32).collect::<Vec<_>>(),
        idx.len(),
        device,
    )?;
    Ok((x, y))
}

/// Accuracy of `model` on the first `n` images of `set` (eval mode, no bound).
pub fn accuracy(model: &dyn Classifier, set: &ImageSet, n: usize, device: &Device) -> Result<f64> {
    let n = n.min(set.len());
    let mut correct = 0.0;
    for start in (0..n).step_by(1000) {
        let idx: Vec<usize> = (start..(start + 1000).min(n)).collect();
        let (x, y) = batch_tensors(set, &idx, device)?;
        let logits = model
            .forward(&x, Lip::None, &Ctx::eval(CertifyMethod::Auto))?
            .logits;
        correct += logits
            .argmax(1)?
            .eq(&y)?
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok(correct / n as f64)
}

/// Trains `model` (whose trainable variables are `params`) on `data` by `plan`, writing
/// `<out>/checkpoint.safetensors` and `<out>/log.csv`.
pub fn train(
    plan: &Plan,
    model: &dyn Classifier,
    params: Vec<(String, Var)>,
    data: &Dataset,
    out: &Path,
    opts: RunOptions,
) -> Result<Summary> {
    // Training runs where the model's parameters live (the CPU, or a GPU with the `cuda` feature).
    let device = params
        .first()
        .map_or(Device::Cpu, |(_, p)| p.device().clone());
    let cfg = &plan.config;
    let split;
    let data = if plan.validation > 0 {
        split = data
            .validation_split(plan.validation)
            .ok_or_else(|| TrainError::Config {
                key: format!("profiles.{}.validation", plan.profile),
                detail: format!(
                    "holds out {} images, but the training set has {}",
                    plan.validation,
                    data.train.len()
                ),
            })?;
        &split
    } else {
        data
    };
    if matches!(plan.method, Method::Adversarial { .. }) && opts.adversary.is_none() {
        return Err(TrainError::Config {
            key: "method".into(),
            detail: "`adversarial` needs an attack: run it through `experiments train`, or pass RunOptions::adversary".into(),
        });
    }
    let needs_last = matches!(
        plan.method,
        Method::Parseval { .. } | Method::Lmt { proposition: 2, .. } | Method::Gloro { .. }
    );
    let last_weight = match model.last_weight() {
        Some(w) => w.clone(),
        None if needs_last => {
            return Err(TrainError::Config {
                key: "method".into(),
                detail: "Parseval, GloRo and Prop. 2 need a model that ends in a linear layer; this one does not (use LMT with proposition: 1)".into(),
            })
        }
        None => Tensor::zeros(1, DType::F32, &device)?,
    };
    std::fs::create_dir_all(out).map_err(|source| TrainError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let ckpt = out.join("checkpoint.safetensors");
    let log_path = out.join("log.csv");
    // The resolved run travels in the checkpoint's metadata: the file alone says what network it is.
    let plan_json = serde_json::to_string(plan).map_err(|e| TrainError::Config {
        key: "plan".into(),
        detail: format!("cannot be written as JSON: {e}"),
    })?;
    let meta = std::collections::HashMap::from([(checkpoint::PLAN_KEY.to_string(), plan_json)]);
    let vectors = PowerVectors::new(cfg.seed ^ 0x5eed);
    let mut opt = Optimizer::new(plan.optimizer.clone(), params)?;
    if matches!(plan.method, Method::Parseval { .. }) {
        // The authors' ParsevalWeightDecay hook: decay on the last layer's weight and bias only.
        let last = last_weight.id();
        let last_name = opt
            .params()
            .iter()
            .find(|(_, p)| p.as_tensor().id() == last)
            .map(|(n, _)| n.clone())
            .unwrap_or_default();
        let last_bias = last_name
            .strip_suffix(".weight")
            .map(|s| format!("{s}.bias"))
            .unwrap_or_default();
        opt.restrict_decay(|n| n == last_name || n == last_bias);
    }
    let mut spectral = match &plan.method {
        Method::SpectralNorm { rate, scaling } => Some(SpectralNormHook::new(
            *rate,
            *scaling,
            opt.params(),
            cfg.seed,
        )?),
        _ => None,
    };
    let mut rows: Vec<String> = Vec::new();
    let mut pos = Position::default();
    // The running sums of the epoch in progress, so a resumed epoch logs what an uninterrupted one would.
    let mut resumed_sums = None;
    if opts.resume && ckpt.is_file() {
        let (p, saved) = checkpoint::load(&ckpt, &mut opt, &vectors, &model.buffers())?;
        pos = p;
        let sum = |k: &str| -> Result<Option<f64>> {
            saved
                .get(k)
                .map(|t| Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?))
                .transpose()
        };
        if let (Some(l), Some(c), Some(s)) = (
            sum("meta.loss_sum")?,
            sum("meta.correct")?,
            sum("meta.seen")?,
        ) {
            resumed_sums = Some((l, c, s as usize));
        }
        if let Some(hook) = &mut spectral {
            for (name, a) in hook.vectors.iter_mut() {
                if let Some(t) = saved.get(&format!("snreg.{name}")) {
                    *a = t.clone();
                }
            }
        }
        // Rows of epochs the checkpoint does not contain (written before a kill, after its last save)
        // are dropped: they are logged again when those epochs are trained again.
        if let Ok(text) = std::fs::read_to_string(&log_path) {
            rows = text
                .lines()
                .skip(1)
                .filter(|l| !l.is_empty())
                .filter(|l| {
                    l.split(',')
                        .next()
                        .and_then(|e| e.parse::<usize>().ok())
                        .is_some_and(|e| e <= pos.epoch)
                })
                .map(str::to_string)
                .collect();
        }
    }
    let n_train = plan
        .train_subset
        .unwrap_or(data.train.len())
        .min(data.train.len());
    let n_test = plan.test_subset.unwrap_or(data.test.len());
    let steps_per_epoch = n_train.div_ceil(cfg.batch_size);
    let mut last_ckpt = if pos.step > 0 {
        ckpt.display().to_string()
    } else {
        "none".to_string()
    };
    let mut logs = Vec::new();

    'epochs: for epoch in pos.epoch..plan.epochs {
        let started = Instant::now();
        let batches = lmt_data::epoch_batches(n_train, cfg.batch_size, cfg.seed, epoch as u64);
        let bar = if opts.progress {
            ProgressBar::new(batches.len() as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
                .expect("valid template"),
        );
        bar.set_prefix(format!("{}/{}", epoch + 1, plan.epochs));
        bar.set_position(pos.batch as u64);
        let (mut loss_sum, mut correct, mut seen) = match resumed_sums.take() {
            Some(sums) if epoch == pos.epoch && pos.batch > 0 => sums,
            _ => (0.0, 0.0, 0usize),
        };
        let (mut c, mut estimate) = (0.0, f64::NAN);
        for (b, idx) in
            batches
                .iter()
                .enumerate()
                .skip(if epoch == pos.epoch { pos.batch } else { 0 })
        {
            let step = epoch * steps_per_epoch + b + 1;
            let epoch_detail = (step - 1) as f64 / steps_per_epoch as f64;
            c = c_schedule(&plan.method, epoch_detail);
            let lr = lr_schedule(&plan.optimizer, epoch_detail);
            let (mut x, y) = batch_tensors(&data.train, idx, &device)?;
            if let (Method::Adversarial { .. }, Some(adv)) = (&plan.method, opts.adversary) {
                // The authors' AT: the whole batch is replaced by its adversarials (no clean mix).
                let labels: Vec<usize> =
                    idx.iter().map(|&i| data.train.labels[i] as usize).collect();
                x = adv
                    .perturb(model, &x, &labels)
                    .map_err(|e| TrainError::Adversary(e.to_string()))?;
            }
            // Dropout masks from (seed, step): reproducible, and a resumed run needs no generator state.
            let ctx = Ctx::train(&vectors)
                .with_seed(cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step as u64);
            let (logits, loss) = match &plan.method {
                Method::Plain
                | Method::SpectralNorm { .. }
                | Method::Parseval { .. }
                | Method::Adversarial { .. } => {
                    let out = model.forward(&x, Lip::None, &ctx)?;
                    let loss = cross_entropy(&out.logits, &y)?;
                    (out.logits, loss)
                }
                Method::Lmt { .. } | Method::Gloro { .. } => {
                    // c (eps for GloRo) starts the carried estimate, so it comes back as c L or c L_sub.
                    let out = model.forward(
                        &x,
                        Lip::Estimate(LipEstimate::one(&device)?.scale(c)?),
                        &ctx,
                    )?;
                    let whole = matches!(plan.method, Method::Lmt { proposition: 1, .. });
                    let carried = if whole { &out.l } else { &out.l_sub };
                    // A model must return the kind of number it was given; MixedLip says one did not.
                    let c_l = carried
                        .estimate()
                        .ok_or(lmt_models::ModelError::MixedLip)?
                        .tensor()
                        .clone();
                    estimate = c_l.to_dtype(DType::F64)?.to_scalar::<f64>()? / c;
                    let z = match &plan.method {
                        Method::Lmt {
                            proposition: 2,
                            capped,
                            ..
                        } => lmt_logits_prop2(&out.logits, &y, &c_l, &last_weight, *capped)?,
                        Method::Lmt { capped, .. } => {
                            lmt_logits_prop1(&out.logits, &y, &c_l, *capped)?
                        }
                        _ => gloro_logits(&out.logits, &y, &c_l, &last_weight)?,
                    };
                    (out.logits, cross_entropy(&z, &y)?)
                }
            };
            let loss_value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let lmt = matches!(plan.method, Method::Lmt { .. } | Method::Gloro { .. });
            for (what, value, checked) in [
                ("loss", loss_value, true),
                ("Lipschitz estimate", estimate, lmt),
            ] {
                if checked && !value.is_finite() {
                    return Err(TrainError::NonFinite {
                        what,
                        value,
                        epoch,
                        step,
                        last_checkpoint: last_ckpt,
                    });
                }
            }
            let mut grads = loss.backward()?;
            if let Some(hook) = &mut spectral {
                hook.apply(&mut grads, opt.params())?;
            }
            opt.step(&grads, lr, cfg.weight_decay)?;
            if let Method::Parseval { beta } = &plan.method {
                parseval_step(opt.params(), &last_weight, *beta)?;
            }
            vectors.refresh(&grads)?;
            loss_sum += loss_value * idx.len() as f64;
            correct += logits
                .argmax(1)?
                .eq(&y)?
                .to_dtype(DType::F64)?
                .sum_all()?
                .to_scalar::<f64>()?;
            seen += idx.len();
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.4} acc {:.3} c {c:.3e} L_est {estimate:.3}",
                loss_sum / seen as f64,
                correct / seen as f64
            ));
            pos = Position {
                step,
                epoch,
                batch: b + 1,
            };
            // A stop on an epoch's last batch first finishes the epoch (its log row and checkpoint).
            let stop = opts.stop_after_steps == Some(step) && b + 1 < batches.len();
            if step % cfg.checkpoint_every == 0 || stop {
                save_checked(
                    &ckpt,
                    &opt,
                    &vectors,
                    &model.buffers(),
                    &extra_state(&spectral, (loss_sum, correct, seen)),
                    pos,
                    &meta,
                    &mut last_ckpt,
                )?;
            }
            if stop {
                bar.abandon();
                break 'epochs;
            }
        }
        bar.finish_and_clear();
        let mut test_accuracy = None;
        if epoch + 1 == plan.epochs && plan.recalibrate_bn > 0 {
            // Measured every time: the test accuracy with the statistics gathered under dropout, and
            // after re-estimating them without it.
            let before = accuracy(model, &data.test, n_test, &device)?;
            recalibrate_bn(
                model,
                &data.train,
                n_train,
                plan.recalibrate_bn,
                cfg,
                &device,
            )?;
            let after = accuracy(model, &data.test, n_test, &device)?;
            let text = format!(
                "images,test_points,test_accuracy_before,test_accuracy_after\n{},{},{before},{after}\n",
                plan.recalibrate_bn.min(n_train),
                n_test.min(data.test.len())
            );
            let path = out.join("bn_recalibration.csv");
            std::fs::write(&path, text).map_err(|source| TrainError::Io { path, source })?;
            eprintln!(
                "BN statistics re-estimated without dropout: test accuracy {before:.4} -> {after:.4}"
            );
            test_accuracy = Some(after);
        }
        let row = EpochLog {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct / seen.max(1) as f64,
            test_accuracy: match test_accuracy {
                Some(a) => a,
                None => accuracy(model, &data.test, n_test, &device)?,
            },
            c,
            estimated_bound: estimate,
            seconds: started.elapsed().as_secs_f64(),
        };
        if opts.progress && bar.is_hidden() {
            // No terminal to draw the bar on (a log file, a pipe, `table1 --jobs`): one line per epoch.
            eprintln!(
                "epoch {}/{}: loss {:.4}, train accuracy {:.4}, test accuracy {:.4} ({:.1} s)",
                row.epoch,
                plan.epochs,
                row.train_loss,
                row.train_accuracy,
                row.test_accuracy,
                row.seconds
            );
        }
        rows.push(row.csv());
        write_log(&log_path, &rows)?;
        logs.push(row);
        pos = Position {
            step: pos.step,
            epoch: epoch + 1,
            batch: 0,
        };
        save_checked(
            &ckpt,
            &opt,
            &vectors,
            &model.buffers(),
            &extra_state(&spectral, (0.0, 0.0, 0)),
            pos,
            &meta,
            &mut last_ckpt,
        )?;
        if opts.stop_after_steps == Some(pos.step) {
            break;
        }
    }
    Ok(Summary {
        epochs: logs,
        checkpoint: ckpt,
        position: pos,
    })
}

/// Re-estimates every BN layer's running statistics as the mean, over the first `images` training images
/// of a fixed order (from the seed), of their batch statistics with dropout off: statistics gathered under
/// dropout do not match the activations without it, which an undertrained network feels most. Runs
/// before the last epoch's checkpoint is written, so a resumed run never skips it.
pub fn recalibrate_bn(
    model: &dyn Classifier,
    set: &ImageSet,
    n_train: usize,
    images: usize,
    cfg: &crate::TrainConfig,
    device: &Device,
) -> Result<()> {
    let order = lmt_data::epoch_order(n_train, cfg.seed ^ 0xb17, 0);
    let order = &order[..images.min(order.len())];
    // Whole batches only, so every batch statistic weighs the same (one batch when there are fewer).
    let batch = cfg.batch_size.min(order.len()).max(1);
    for (k, idx) in order.chunks_exact(batch).enumerate() {
        let (x, _) = batch_tensors(set, idx, device)?;
        model.forward(&x, Lip::None, &Ctx::recalibrate_bn(k))?;
    }
    Ok(())
}

/// Refuses to overwrite the last good checkpoint with non-finite weights.
#[allow(clippy::too_many_arguments)]
fn save_checked(
    path: &Path,
    opt: &Optimizer,
    vectors: &PowerVectors,
    buffers: &[(String, Var)],
    extra: &[(String, Tensor)],
    pos: Position,
    meta: &std::collections::HashMap<String, String>,
    last: &mut String,
) -> Result<()> {
    for (_, p) in opt.params() {
        let s = p
            .as_tensor()
            .abs()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        if !s.is_finite() {
            return Err(TrainError::NonFinite {
                what: "weights",
                value: s,
                epoch: pos.epoch,
                step: pos.step,
                last_checkpoint: last.clone(),
            });
        }
    }
    checkpoint::save(path, opt, vectors, buffers, extra, pos, meta)?;
    *last = path.display().to_string();
    Ok(())
}

/// Method state beyond the optimiser's, under checkpoint keys.
fn extra_state(
    spectral: &Option<SpectralNormHook>,
    (loss_sum, correct, seen): (f64, f64, usize),
) -> Vec<(String, Tensor)> {
    let mut state: Vec<(String, Tensor)> = spectral
        .iter()
        .flat_map(|h| {
            h.vectors
                .iter()
                .map(|(k, v)| (format!("snreg.{k}"), v.clone()))
        })
        .collect();
    for (k, v) in [
        ("meta.loss_sum", loss_sum),
        ("meta.correct", correct),
        ("meta.seen", seen as f64),
    ] {
        if let Ok(t) = Tensor::new(v, &Device::Cpu) {
            state.push((k.to_string(), t));
        }
    }
    state
}

fn write_log(path: &Path, rows: &[String]) -> Result<()> {
    let text = std::iter::once(LOG_HEADER.to_string())
        .chain(rows.iter().cloned())
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let tmp = path.with_extension("csv.tmp");
    let io = |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
