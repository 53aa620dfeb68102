//! A plain table of strings with named columns: written as CSV atomically, read back by column name.

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

    /// The CSV text: header line, then one line per row. Cells must not contain commas or newlines.
    pub fn to_csv(&self) -> String {
        let mut s = self.header.join(",");
        s.push('\n');
        for r in &self.rows {
            s.push_str(&r.join(","));
            s.push('\n');
        }
        s
    }

    /// Writes the CSV to `path` atomically; a cell with a comma, quote or newline is an error (this
    /// writer does not quote, so such a cell would shift every later column).
    pub fn write(&self, path: &Path) -> Result<()> {
        let bad = |c: &String| c.contains([',', '"', '\n', '\r']);
        if let Some(c) = self
            .header
            .iter()
            .chain(self.rows.iter().flatten())
            .find(|c| bad(c))
        {
            return Err(csv_err(
                path,
                format!("cell `{c}` contains a comma, quote or newline"),
            ));
        }
        write_atomic(path, self.to_csv().as_bytes())
    }

    /// Reads a CSV written by [`Table::write`] (or any simple CSV without quoting).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| AnalysisError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut lines = text.lines();
        let header: Vec<String> = lines
            .next()
            .ok_or_else(|| csv_err(path, "empty file"))?
            .split(',')
            .map(str::to_string)
            .collect();
        let mut rows = Vec::new();
        for (i, line) in lines.enumerate().filter(|(_, l)| !l.is_empty()) {
            let row: Vec<String> = line.split(',').map(str::to_string).collect();
            if row.len() != header.len() {
                return Err(csv_err(
                    path,
                    format!(
                        "row {} has {} fields, the header {}",
                        i + 2,
                        row.len(),
                        header.len()
                    ),
                ));
            }
            rows.push(row);
        }
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
    fn round_trips_and_reports_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        let mut t = Table::new(&["index", "distance"]);
        t.push(vec!["0".into(), "0.5".into()]);
        t.push(vec!["1".into(), String::new()]);
        t.write(&p).unwrap();
        let back = Table::read(&p).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.numbers("distance", &p).unwrap(), [Some(0.5), None]);
        assert!(back
            .numbers("radius", &p)
            .unwrap_err()
            .to_string()
            .contains("no column `radius`"));
        let mut bad = Table::new(&["a"]);
        bad.push(vec!["x,y".into()]);
        assert!(bad
            .write(&p)
            .unwrap_err()
            .to_string()
            .contains("contains a comma"));
        std::fs::write(&p, "a,b\n1\n").unwrap();
        let e = Table::read(&p).unwrap_err().to_string();
        assert!(e.contains("row 2 has 1 fields"), "{e}");
    }
}
