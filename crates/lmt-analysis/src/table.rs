//! A plain table of strings with named columns: written as CSV atomically, read back by column name,
//! both through the `csv` crate (cells with commas, quotes or newlines are quoted).

use std::path::Path;

use crate::{write_atomic, AnalysisError, Result};

/// Named columns and rows of already formatted cells (numbers in full precision via `to_string`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    /// Column names.
    pub header: Vec<String>,
    /// Rows, each as long as the header.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these columns.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; panics only on a programming error (wrong number of cells).
    pub fn push(&mut self, row: Vec<String>) {
        assert_eq!(
            row.len(),
            self.header.len(),
            "row length differs from header"
        );
        self.rows.push(row);
    }

    /// The CSV text: header line, then one line per row.
    pub fn to_csv(&self) -> String {
        let mut w = csv::Writer::from_writer(Vec::new());
        for r in std::iter::once(&self.header).chain(&self.rows) {
            w.write_record(r).expect("writing to memory");
        }
        String::from_utf8(w.into_inner().expect("writing to memory")).expect("UTF-8 cells")
    }

    /// Writes the CSV to `path` atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, self.to_csv().as_bytes())
    }

    /// Reads a CSV with a header line.
    pub fn read(path: &Path) -> Result<Self> {
        let mut r = csv::Reader::from_path(path).map_err(|e| csv_err(path, e.to_string()))?;
        let header: Vec<String> = r
            .headers()
            .map_err(|e| csv_err(path, e.to_string()))?
            .iter()
            .map(str::to_string)
            .collect();
        let rows = r
            .records()
            .map(|rec| {
                rec.map(|r| r.iter().map(str::to_string).collect())
                    .map_err(|e| csv_err(path, e.to_string()))
            })
            .collect::<Result<Vec<Vec<String>>>>()?;
        Ok(Self { header, rows })
    }

    /// The cells of column `name`.
    pub fn column(&self, name: &str) -> Option<Vec<&str>> {
        let c = self.header.iter().position(|h| h == name)?;
        Some(self.rows.iter().map(|r| r[c].as_str()).collect())
    }

    /// Column `name` parsed as numbers; an empty cell is `None` (e.g. the distance of a failed attack).
    pub fn numbers(&self, name: &str, path: &Path) -> Result<Vec<Option<f64>>> {
        let col = self
            .column(name)
            .ok_or_else(|| csv_err(path, format!("no column `{name}` (has {:?})", self.header)))?;
        col.iter()
            .enumerate()
            .map(|(i, c)| {
                if c.is_empty() {
                    Ok(None)
                } else {
                    c.parse::<f64>().map(Some).map_err(|_| {
                        csv_err(
                            path,
                            format!("row {}: `{name}` = `{c}` is not a number", i + 2),
                        )
                    })
                }
            })
            .collect()
    }
}

fn csv_err(path: &Path, detail: impl Into<String>) -> AnalysisError {
    AnalysisError::Csv {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_quotes_and_reports_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        let mut t = Table::new(&["index", "distance", "note"]);
        t.push(vec!["0".into(), "0.5".into(), "a, b".into()]);
        t.push(vec!["1".into(), String::new(), "say \"x\"".into()]);
        t.write(&p).unwrap();
        let back = Table::read(&p).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.numbers("distance", &p).unwrap(), [Some(0.5), None]);
        assert!(back
            .numbers("radius", &p)
            .unwrap_err()
            .to_string()
            .contains("no column `radius`"));
        std::fs::write(&p, "a,b\n1\n").unwrap();
        let e = Table::read(&p).unwrap_err().to_string();
        assert!(e.contains("t.csv") && e.contains("line: 2"), "{e}");
    }
}
