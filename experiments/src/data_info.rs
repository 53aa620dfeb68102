//! `experiments data-info`: what data is available, with sizes, class counts and checksums.

use anyhow::{Context, Result};
use lmt_data::{Dataset, ImageSet, SvhnLabels, SvhnOptions};

use crate::DataArgs;

/// Prints a report for MNIST (required), Fashion-MNIST and SVHN (each when present).
pub fn run(args: &DataArgs) -> Result<()> {
    let mnist = lmt_data::load_mnist(&args.mnist_dir).context("loading MNIST")?;
    report(&mnist);
    match lmt_data::load_fashion_mnist(&args.fashion_dir) {
        Ok(d) => report(&d),
        Err(e) => println!("fashion-mnist: not available ({e})\n"),
    }
    match &args.svhn_dir {
        Some(dir) => {
            let options = SvhnOptions {
                labels: if args.svhn_authors_labels {
                    SvhnLabels::AuthorsMinusOne
                } else {
                    SvhnLabels::Digit
                },
                include_extra: args.svhn_extra,
            };
            report(&lmt_data::load_svhn(dir, options).context("loading SVHN")?);
        }
        None => println!(
            "svhn: not given (pass --svhn-dir DIR or set SVHN_DIR to the official .mat files)\n"
        ),
    }
    Ok(())
}

fn report(d: &Dataset) {
    println!("{}", d.name);
    split("train", &d.train);
    split("test", &d.test);
    for f in &d.files {
        println!(
            "  {:<8} {} {} {}",
            f.status(),
            f.algorithm,
            f.digest,
            f.path.display()
        );
    }
    if !d.all_verified() {
        println!("  WARNING: some files do not match the published checksums (see above)");
    }
    println!();
}

fn split(name: &str, s: &ImageSet) {
    let [c, h, w] = s.image_shape();
    println!(
        "  {name:<5} {:>6} images {c}x{h}x{w}  mean pixel {:.5}  class counts {:?}",
        s.len(),
        s.mean_pixel(),
        s.class_counts()
    );
}
