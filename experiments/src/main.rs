//! `experiments`: the lmt-rs command line. Thin glue: parse flags, call one library function per
//! subcommand, print or write the result. No math lives here.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod attack;
mod certify;
mod data_info;
mod run;
mod train;

/// Lipschitz-margin training and certification (Tsuzuku, Sato and Sugiyama, NeurIPS 2018) in Rust.
#[derive(Debug, Parser)]
#[command(name = "experiments", version, about)]
struct Cli {
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
    /// Certify every test input of a trained checkpoint (per-input CSV and a summary).
    Certify(certify::CertifyArgs),
    /// Attack every test input of a checkpoint (C&W, DeepFool or PGD) and check against its certificates.
    Attack(attack::AttackArgs),
}

fn main() {
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

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::DataInfo { data } => data_info::run(&data),
        Command::Train(args) => train::run(&args),
        Command::Certify(args) => certify::run(&args),
        Command::Attack(args) => attack::run(&args),
    }
}
