//! `experiments`: the lmt-rs command line. Thin glue: parse flags, call one library function per
//! subcommand, print or write the result. No math lives here.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod attack;
mod certify;
mod data_info;
mod device;
mod export;
mod figures;
mod modern;
mod pipeline;
mod run;
mod subject;
mod summary;
mod table1;
mod tightness;
mod train;

/// Lipschitz-margin training and certification (Tsuzuku, Sato and Sugiyama, NeurIPS 2018) in Rust.
#[derive(Debug, Parser)]
#[command(name = "experiments", version, about)]
struct Cli {
    /// Where training, attacks and the analyses' forward passes run: cpu, cuda or cuda:N (a binary
    /// built by `make gpu`). Certificates are computed in f64 on the CPU whatever the device.
    #[arg(long, global = true, default_value = "cpu", env = "LMT_DEVICE")]
    device: String,
    /// How CPU matmuls deeper than 512 are reduced: host (in the gemm crate's blocks for this CPU's
    /// cache, so their last bits differ between hosts) or portable (in the blocks of a 512-block host on
    /// every host, so any x86-64 host with AVX2+FMA gives the same bits). Manifests name the choice.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "host",
        env = "LMT_NUMERICS"
    )]
    numerics: NumericsArg,
    #[command(subcommand)]
    command: Command,
}

/// Where the data sets live; shared by every subcommand that reads data.
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// Directory with the four MNIST IDX files (raw or .gz); `make data` fills the default.
    #[arg(long, default_value = lmt_data::MNIST_DEFAULT_DIR, env = "MNIST_DIR")]
    pub mnist_dir: PathBuf,
    /// Directory with the four Fashion-MNIST IDX files; Debian's `dataset-fashion-mnist` fills the default.
    #[arg(long, default_value = lmt_data::FASHION_DEFAULT_DIR, env = "FASHION_DIR")]
    pub fashion_dir: PathBuf,
    /// Directory with the official SVHN train_32x32.mat and test_32x32.mat (optional).
    #[arg(long, env = "SVHN_DIR")]
    pub svhn_dir: Option<PathBuf>,
    /// Also load SVHN's extra_32x32.mat (1.3 GB) into the training split.
    #[arg(long)]
    pub svhn_extra: bool,
    /// Map SVHN labels as the authors' code does (class = label - 1, so digit 0 is class 9) instead of
    /// class = digit.
    #[arg(long)]
    pub svhn_authors_labels: bool,
    /// Run SVHN configs on the named stand-in (--stand-in, padded to 32x32 and repeated to 3 channels)
    /// instead of SVHN; every output names the stand-in. `table1` sets this when no --svhn-dir is given.
    #[arg(long)]
    pub svhn_stand_in: bool,
    /// Which real set stands in for SVHN: fashion (the default; it separates Table 1's L2 sizes, see
    /// the README) or mnist. Without Fashion-MNIST installed, mnist is used and every run says so.
    #[arg(long, value_enum, default_value = "fashion")]
    pub stand_in: StandIn,
}

/// How deep products are reduced (`lmt_models::Numerics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum NumericsArg {
    /// gemm's blocks for this host's cache (the fastest).
    Host,
    /// A 512-block host's blocks on every host (the same bits everywhere).
    Portable,
}

/// The real data set behind the SVHN stand-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StandIn {
    /// Fashion-MNIST (Debian's dataset-fashion-mnist).
    Fashion,
    /// MNIST.
    Mnist,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print sizes, class counts, pixel statistics and checksums of every available data set.
    DataInfo {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Train one paper config (experiments/configs/*.yaml) under a profile.
    Train(train::TrainArgs),
    /// Certify every test input of a trained checkpoint or an ONNX model (per-input CSV and a summary).
    Certify(certify::CertifyArgs),
    /// Attack every test input of a checkpoint or ONNX model (C&W, DeepFool or PGD) and check the results
    /// against its certificates.
    Attack(attack::AttackArgs),
    /// Inequality (5) for one checkpoint or ONNX model: certified radius, empirical lower-bound radii and
    /// DeepFool distance per test point.
    Tightness(tightness::TightnessArgs),
    /// Write a trained checkpoint as ONNX (read back and checked against the checkpoint).
    Export(export::ExportArgs),
    /// Figure 3: per-layer bounds on conv2 of the naive and LMT MNIST models, and on pooling.
    Fig3(pipeline::AnalysisArgs),
    /// Figure 4: certified radius, gradient lower bounds and attack distances for naive, AT and LMT models.
    Fig4(pipeline::AnalysisArgs),
    /// Figure 5: images moved by exactly their certified radius, still classified correctly.
    Fig5(pipeline::AnalysisArgs),
    /// Table 1: accuracy under C&W at L2 sizes 0.2/0.5/1.0 (SVHN with --svhn-dir, else the named stand-in).
    Table1(table1::Table1Args),
    /// Certified accuracy and accuracy under attack against radius, for every run of the profile.
    Curves(pipeline::AnalysisArgs),
    /// Regenerates results/<profile>/SUMMARY.md from the CSVs.
    Summary(pipeline::AnalysisArgs),
    /// Certified accuracy at L2 0.5 / 1.0 / 1.58 on MNIST: LMT and a GloRo-style loss swept on a
    /// validation split, the chosen settings trained longer and certified on the test set.
    Modern(modern::ModernArgs),
    /// Everything for a profile: fig3, fig4, fig5, table1, curves and SUMMARY.md (resumes where it stopped).
    Reproduce(pipeline::AnalysisArgs),
}

fn main() {
    lmt_train::tune_cpu_runtime();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Every experiment of a profile, in order; each step skips what is already on disk.
fn reproduce(a: &pipeline::AnalysisArgs) -> Result<()> {
    type Step = fn(&pipeline::AnalysisArgs) -> Result<()>;
    let steps: [(&str, Step); 6] = [
        ("fig3", figures::fig3),
        ("fig4", figures::fig4),
        ("fig5", figures::fig5),
        ("table1", table1::table1),
        ("curves", figures::curves),
        ("summary", summary::summary),
    ];
    for (i, (name, step)) in steps.iter().enumerate() {
        eprintln!(
            "== reproduce ({} profile): step {}/{}: {name}",
            a.profile,
            i + 1,
            steps.len()
        );
        step(a)?;
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    device::set(&cli.device)?;
    lmt_models::set_numerics(match cli.numerics {
        NumericsArg::Host => lmt_models::Numerics::Host,
        NumericsArg::Portable => lmt_models::Numerics::Portable,
    });
    match cli.command {
        Command::DataInfo { data } => data_info::run(&data),
        Command::Train(args) => train::run(&args),
        Command::Certify(args) => certify::run(&args),
        Command::Attack(args) => attack::run(&args),
        Command::Tightness(args) => tightness::run(&args),
        Command::Export(args) => export::run(&args),
        Command::Fig3(a) => figures::fig3(&a),
        Command::Fig4(a) => figures::fig4(&a),
        Command::Fig5(a) => figures::fig5(&a),
        Command::Table1(a) => table1::table1_rows(&a),
        Command::Curves(a) => figures::curves(&a),
        Command::Summary(a) => summary::summary(&a),
        Command::Modern(a) => modern::modern(&a),
        Command::Reproduce(a) => reproduce(&a),
    }
}
