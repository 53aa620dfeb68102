//! What `certify`, `attack`, `tightness` and `export` evaluate: a checkpoint written by `train` (its
//! config.yaml beside it names the network and the data set) or an ONNX classifier with the data set
//! named on the command line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lmt_data::Dataset;
use lmt_models::Classifier;

use crate::run::{load_data, load_trained, manifest};
use crate::DataArgs;

/// The data sets an imported model can be evaluated on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DatasetName {
    /// MNIST (data/mnist, from `make data`).
    Mnist,
    /// Fashion-MNIST (Debian's dataset-fashion-mnist).
    FashionMnist,
    /// The official SVHN files (--svhn-dir).
    Svhn,
    /// The SVHN stand-in (Fashion-MNIST, or MNIST with --stand-in mnist), padded to 32x32 and repeated
    /// to 3 channels; every output names it as a STAND-IN.
    SvhnStandin,
}

/// Which model to evaluate, on which data.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// The checkpoint.safetensors written by `train` (its config.yaml must sit beside it).
    #[arg(long, required_unless_present = "onnx", conflicts_with = "onnx")]
    pub checkpoint: Option<PathBuf>,
    /// An ONNX image classifier (e.g. written by torch.onnx.export) instead of a checkpoint; needs
    /// --dataset or --idx-images and --idx-labels.
    #[arg(long)]
    pub onnx: Option<PathBuf>,
    /// The test set of an ONNX model.
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetName>,
    /// Your own test images for an ONNX model: an IDX file of u8 images (N x H x W or N x C x H x W).
    #[arg(long, requires = "idx_labels", conflicts_with = "dataset")]
    pub idx_images: Option<PathBuf>,
    /// The IDX file of their labels (N, u8).
    #[arg(long, requires = "idx_images")]
    pub idx_labels: Option<PathBuf>,
    /// Evaluate a checkpoint on the validation images its run held out (the last training images its
    /// profile's `validation` names) instead of the test set: for choosing hyper-parameters.
    #[arg(long, conflicts_with = "onnx")]
    pub validation: bool,
}

impl ModelArgs {
    /// A checkpoint.
    pub fn checkpoint(path: &Path) -> Self {
        ModelArgs {
            checkpoint: Some(path.to_path_buf()),
            onnx: None,
            dataset: None,
            idx_images: None,
            idx_labels: None,
            validation: false,
        }
    }
}

/// A model ready to evaluate, with its data and what its outputs' manifests say about it.
pub struct Subject {
    /// The config's name, or the ONNX file's stem.
    pub name: String,
    /// The network.
    pub model: Box<dyn Classifier>,
    /// The profile it was trained under (`imported` for ONNX models).
    pub profile: String,
    /// Whether its training budget was reduced (false for imports: not ours to judge).
    pub reduced: bool,
    /// The resolved config, or the import's description, for manifests.
    pub config_text: String,
    /// The training seed (0 for imports).
    pub seed: u64,
    /// Where its outputs go by default.
    pub dir: PathBuf,
    /// The model file and its digest, for imports.
    pub model_file: Option<String>,
    /// SHA-256 of the checkpoint or model file: the key of every file derived from it.
    pub model_sha256: String,
    /// The data.
    pub data: Dataset,
}

impl Subject {
    /// Loads the model and its data set.
    pub fn load(m: &ModelArgs, data: &DataArgs) -> Result<Subject> {
        if let Some(ckpt) = &m.checkpoint {
            if m.dataset.is_some() || m.idx_images.is_some() {
                bail!("--dataset and --idx-images are for --onnx models; a checkpoint's config.yaml names its data set");
            }
            let t = load_trained(ckpt)?;
            let mut d = load_data(&t.config.dataset, data)?;
            if m.validation {
                d = d.validation_split(t.validation).with_context(|| {
                    format!(
                        "{}: --validation, but its run held out no validation images (a profile with `validation: N` does)",
                        ckpt.display()
                    )
                })?;
            }
            return Ok(Subject {
                name: t.config.name.clone(),
                model: t.built.model,
                profile: t.profile,
                reduced: t.reduced,
                config_text: t.config_text,
                seed: t.config.seed,
                dir: t.dir,
                model_file: None,
                model_sha256: lmt_analysis::file_sha256(ckpt)?,
                data: d,
            });
        }
        let path = m.onnx.as_ref().context("pass --checkpoint or --onnx")?;
        let imported = lmt_onnx::load(path)?;
        if !crate::device::device().is_cpu() {
            eprintln!("note: ONNX models are imported onto the CPU and run there; --device applies to checkpoints");
        }
        let d = match (&m.dataset, &m.idx_images, &m.idx_labels) {
            (_, Some(i), Some(l)) => lmt_data::load_idx_pair(i, l)
                .with_context(|| format!("loading {} and {}", i.display(), l.display()))?,
            (Some(name), _, _) => {
                let mut data = data.clone();
                let key = match name {
                    DatasetName::Mnist => "mnist",
                    DatasetName::FashionMnist => "fashion-mnist",
                    DatasetName::Svhn => "svhn",
                    DatasetName::SvhnStandin => {
                        data.svhn_stand_in = true;
                        "svhn"
                    }
                };
                load_data(key, &data)?
            }
            _ => bail!(
                "{}: an ONNX model needs its test set: --dataset mnist|fashion-mnist|svhn|svhn-standin, or --idx-images FILE --idx-labels FILE",
                path.display()
            ),
        };
        check_input(path, imported.graph.input_shape(), &d)?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "model".into());
        let g = &imported.graph;
        let mut description = format!(
            "ONNX model {} (opset {}, written by {}, {} input), {} nodes:\n{}",
            path.display(),
            imported.opset,
            if imported.producer.is_empty() {
                "an unnamed producer"
            } else {
                &imported.producer
            },
            if imported.batched {
                "batched"
            } else {
                "single-sample"
            },
            g.nodes().len(),
            g.describe()
        );
        for n in g.notes() {
            description.push_str(&format!("note: {n}\n"));
        }
        Ok(Subject {
            name: stem.clone(),
            model: Box::new(imported.graph),
            profile: "imported".into(),
            reduced: false,
            config_text: description,
            seed: 0,
            dir: PathBuf::from("results").join("onnx").join(stem),
            model_file: Some(format!(
                "onnx {} sha256 {}",
                path.display(),
                imported.sha256
            )),
            model_sha256: imported.sha256.clone(),
            data: d,
        })
    }

    /// `, REDUCED budget` for a reduced run, else nothing.
    pub fn reduced_tag(&self) -> &'static str {
        if self.reduced {
            ", REDUCED budget"
        } else {
            ""
        }
    }

    /// The manifest of an output about this subject; `step` and its points key a derived file (see
    /// `lmt_analysis::Provenance`).
    pub fn manifest(
        &self,
        experiment: String,
        reduced: bool,
        seed: u64,
        wall: f64,
        step: Option<(String, usize)>,
    ) -> lmt_analysis::Manifest {
        let mut m = manifest(
            experiment,
            &self.profile,
            reduced,
            self.config_text.clone(),
            seed,
            &self.data,
            wall,
        );
        m.model = self.model_file.clone();
        m.provenance = step.map(|(step, points)| lmt_analysis::Provenance {
            model_sha256: self.model_sha256.clone(),
            step,
            points,
        });
        m
    }
}

/// An imported model's per-sample input must be the data's images as (C, H, W), flattened, or (H, W)
/// for one channel; anything else (another size, another layout such as NHWC) is an error.
fn check_input(path: &Path, input: &[usize], d: &Dataset) -> Result<()> {
    let [c, h, w] = d.test.image_shape();
    let fits = input == [c, h, w] || input == [c * h * w] || (c == 1 && input == [h, w]);
    if !fits {
        bail!(
            "{}: the model takes inputs of shape {input:?} per sample, but {} images are {c} x {h} x {w}; pass the --dataset it was trained for (or export it for (N, {c}, {h}, {w}) or (N, {}) inputs)",
            path.display(),
            d.name,
            c * h * w
        );
    }
    Ok(())
}
