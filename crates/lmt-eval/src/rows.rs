//! Per-input results as typed rows, read and written as CSV by the `csv` crate (quoted where needed, so
//! no cell can shift a column). The column names are the field names.

use std::io::{Read, Write};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};

/// The certificate of one test input (`certificates.csv`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificateRow {
    /// Index in the test set.
    pub index: usize,
    /// True label.
    pub label: usize,
    /// Predicted class; empty when a logit was not finite.
    pub prediction: Option<usize>,
    /// `z_t - max_{i != t} z_i` (NaN when a logit was not finite).
    pub margin: f64,
    /// A bound on the L2 distance between the computed logits and the exact ones (f64 rounding); every
    /// margin is guarded by `sqrt(2)` times it.
    pub logit_error: f64,
    /// Certified radius: a guaranteed lower bound on the L2 distance to any input classified otherwise.
    pub radius: f64,
    /// `prop1` or `prop2`.
    pub proposition: String,
    /// How the Lipschitz bound was computed (`dense`, `fft`, `power`, `mixed`, ...).
    pub bound_method: String,
}

/// What an attack found for one test input (`attack_<label>.csv`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackRow {
    /// Index in the test set.
    pub index: usize,
    /// True label.
    pub label: usize,
    /// Whether the attack found an input classified otherwise (strictly).
    pub success: bool,
    /// L2 distance of that input from the original, as fed to the model: an empirical upper bound on the
    /// input's minimal adversarial distance; empty on failure.
    pub distance: Option<f64>,
    /// Gradient steps used.
    pub iterations: usize,
    /// The input's certified radius, when certificates were given.
    pub certified_radius: Option<f64>,
}

/// Writes `rows` as CSV (header from the field names) to `w`.
pub fn write_csv<T: Serialize, W: Write>(w: W, rows: &[T]) -> Result<()> {
    let mut wr = csv::Writer::from_writer(w);
    for r in rows {
        wr.serialize(r)
            .map_err(|e| csv_error(Path::new("<output>"), e))?;
    }
    wr.flush().map_err(|e| EvalError::Csv {
        path: "<output>".into(),
        detail: e.to_string(),
    })
}

/// `rows` as CSV bytes.
pub fn to_csv<T: Serialize>(rows: &[T]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    write_csv(&mut out, rows)?;
    Ok(out)
}

/// Reads rows of `T` from CSV; `origin` names the source in errors (the row number is added).
pub fn read_csv<T: DeserializeOwned, R: Read>(r: R, origin: &Path) -> Result<Vec<T>> {
    csv::Reader::from_reader(r)
        .deserialize()
        .map(|row| row.map_err(|e| csv_error(origin, e)))
        .collect()
}

/// Reads rows of `T` from the CSV file at `path`.
pub fn read_csv_file<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let f = std::fs::File::open(path).map_err(|e| EvalError::Csv {
        path: path.to_path_buf(),
        detail: format!("cannot open: {e}"),
    })?;
    read_csv(std::io::BufReader::new(f), path)
}

fn csv_error(path: &Path, e: csv::Error) -> EvalError {
    let at = e
        .position()
        .map(|p| format!("line {}: ", p.line()))
        .unwrap_or_default();
    EvalError::Csv {
        path: path.to_path_buf(),
        detail: format!("{at}{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_with_empty_options_nan_and_quoting() {
        let certs = vec![
            CertificateRow {
                index: 0,
                label: 3,
                prediction: None,
                margin: f64::NAN,
                logit_error: f64::INFINITY,
                radius: 0.0,
                proposition: "prop2".into(),
                bound_method: "a, quoted \"method\"".into(),
            },
            CertificateRow {
                index: 1,
                label: 4,
                prediction: Some(4),
                margin: 0.25,
                logit_error: 3e-15,
                radius: 1.5e-3,
                proposition: "prop1".into(),
                bound_method: "dense".into(),
            },
        ];
        let bytes = to_csv(&certs).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(
            "index,label,prediction,margin,logit_error,radius,proposition,bound_method\n"
        ));
        assert!(
            text.contains("0,3,,NaN,inf,0.0,prop2,\"a, quoted \"\"method\"\"\""),
            "{text}"
        );
        let back: Vec<CertificateRow> = read_csv(bytes.as_slice(), Path::new("c.csv")).unwrap();
        assert_eq!(back[1], certs[1]);
        assert!(back[0].margin.is_nan() && back[0].prediction.is_none());
        assert_eq!(back[0].bound_method, certs[0].bound_method);
    }

    #[test]
    fn a_bad_row_names_the_file_and_line() {
        let text = "index,label,success,distance,iterations,certified_radius\n0,1,true,0.5,3,\n1,2,maybe,,4,\n";
        let e = read_csv::<AttackRow, _>(text.as_bytes(), Path::new("attack_cw.csv"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("attack_cw.csv") && e.contains("line 3"), "{e}");
    }
}
