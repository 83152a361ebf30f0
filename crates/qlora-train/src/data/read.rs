//! Reading dataset files into JSON records, whatever the container: JSONL, JSON (an array of
//! objects), CSV (a header row; cells that hold JSON arrays or objects, as a `messages` column
//! exported from pandas does, are parsed) and Parquet (through parquet's record API, without
//! arrow, to keep the build small). Every record keeps where it came from, so a bad one is
//! reported with its file and line (or row).

use super::DataError;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Where a record came from: `file:line` for JSONL and CSV, `file` item/row N otherwise.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Source {
    pub file: PathBuf,
    /// 1-based line in the file (JSONL, CSV).
    pub line: Option<usize>,
    /// 0-based index of the record in its file.
    pub index: usize,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}", self.file.display()),
            None => write!(f, "{} (record {})", self.file.display(), self.index + 1),
        }
    }
}

/// One record as read, before its shape is checked.
#[derive(Debug, Clone)]
pub struct Record {
    pub source: Source,
    pub value: Value,
}

/// A line or record that could not be read, kept when bad lines are skipped.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BadRecord {
    pub source: Source,
    pub message: String,
}

/// Reads one file; `skip_bad` collects unparsable records instead of failing on the first.
pub fn read_file(path: &Path, skip_bad: bool, bad: &mut Vec<BadRecord>) -> Result<Vec<Record>, DataError> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("jsonl") | Some("ndjson") => read_jsonl(path, skip_bad, bad),
        Some("json") => read_json(path),
        Some("csv") => read_csv(path, skip_bad, bad),
        Some("parquet") => read_parquet(path),
        _ => Err(DataError::UnknownExtension { path: path.to_path_buf() }),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io { path: path.to_path_buf(), source }
}

fn read_jsonl(path: &Path, skip_bad: bool, bad: &mut Vec<BadRecord>) -> Result<Vec<Record>, DataError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let source = Source { file: path.to_path_buf(), line: Some(i + 1), index: out.len() + bad.len() };
        match serde_json::from_str::<Value>(line) {
            Ok(value) => out.push(Record { source, value }),
            Err(e) if skip_bad => bad.push(BadRecord { source, message: format!("not valid JSON: {e}") }),
            Err(e) => return Err(DataError::BadRecord { at: source, message: format!("not valid JSON: {e}") }),
        }
    }
    Ok(out)
}

fn read_json(path: &Path) -> Result<Vec<Record>, DataError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| DataError::BadRecord {
        at: Source { file: path.to_path_buf(), line: Some(e.line()), index: 0 },
        message: format!("not valid JSON: {e}"),
    })?;
    let items = match value {
        Value::Array(items) => items,
        // `{"data": [...]}` or `{"train": [...]}`, as some exports write it.
        Value::Object(mut m) if m.len() == 1 && m.values().next().is_some_and(Value::is_array) => match m.values_mut().next().map(Value::take) {
            Some(Value::Array(items)) => items,
            _ => unreachable_shape(path)?,
        },
        _ => unreachable_shape(path)?,
    };
    Ok(items.into_iter().enumerate().map(|(index, value)| Record { source: Source { file: path.to_path_buf(), line: None, index }, value }).collect())
}

fn unreachable_shape(path: &Path) -> Result<Vec<Value>, DataError> {
    Err(DataError::BadRecord {
        at: Source { file: path.to_path_buf(), line: None, index: 0 },
        message: "a .json dataset must be an array of objects (or JSONL with a .jsonl extension)".into(),
    })
}

fn read_csv(path: &Path, skip_bad: bool, bad: &mut Vec<BadRecord>) -> Result<Vec<Record>, DataError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(std::io::BufReader::new(file));
    let headers = reader
        .headers()
        .map_err(|e| DataError::BadRecord {
            at: Source { file: path.to_path_buf(), line: Some(1), index: 0 },
            message: format!("cannot read the CSV header: {e}"),
        })?
        .clone();
    let mut out = Vec::new();
    for (index, row) in reader.records().enumerate() {
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line() as usize);
                let source = Source { file: path.to_path_buf(), line, index };
                let message = format!("bad CSV row: {e}");
                if skip_bad {
                    bad.push(BadRecord { source, message });
                    continue;
                }
                return Err(DataError::BadRecord { at: source, message });
            }
        };
        let line = row.position().map(|p| p.line() as usize);
        let obj = headers.iter().zip(row.iter()).map(|(h, cell)| (h.to_string(), csv_cell(cell))).collect();
        out.push(Record { source: Source { file: path.to_path_buf(), line, index }, value: Value::Object(obj) });
    }
    Ok(out)
}

/// A CSV cell is a string, unless it holds a JSON array or object (a `messages` column).
fn csv_cell(cell: &str) -> Value {
    let t = cell.trim_start();
    if (t.starts_with('[') || t.starts_with('{'))
        && let Ok(v) = serde_json::from_str::<Value>(cell)
    {
        return v;
    }
    Value::String(cell.to_string())
}

fn read_parquet(path: &Path) -> Result<Vec<Record>, DataError> {
    use parquet::file::reader::SerializedFileReader;
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let parquet_err = |index: usize, e: parquet::errors::ParquetError| DataError::BadRecord {
        at: Source { file: path.to_path_buf(), line: None, index },
        message: format!("cannot read Parquet: {e}"),
    };
    let reader = SerializedFileReader::new(file).map_err(|e| parquet_err(0, e))?;
    let mut out = Vec::new();
    for (index, row) in reader.into_iter().enumerate() {
        let row = row.map_err(|e| parquet_err(index, e))?;
        out.push(Record { source: Source { file: path.to_path_buf(), line: None, index }, value: row.to_json_value() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn jsonl_keeps_line_numbers_and_skips_blank_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "a.jsonl", "{\"text\":\"a\"}\n\n{\"text\":\"b\"}\n");
        let r = read_file(&p, false, &mut vec![]).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].source.line, Some(3));
    }

    #[test]
    fn bad_jsonl_line_names_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "a.jsonl", "{\"text\":\"a\"}\n{oops\n");
        let e = read_file(&p, false, &mut vec![]).unwrap_err().to_string();
        assert!(e.contains("a.jsonl:2"), "{e}");
        let mut bad = vec![];
        let r = read_file(&p, true, &mut bad).unwrap();
        assert_eq!((r.len(), bad.len()), (1, 1));
    }

    #[test]
    fn json_array_and_wrapped_array() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "a.json", "[{\"text\":\"a\"},{\"text\":\"b\"}]");
        assert_eq!(read_file(&p, false, &mut vec![]).unwrap().len(), 2);
        let p = write(d.path(), "b.json", "{\"train\":[{\"text\":\"a\"}]}");
        assert_eq!(read_file(&p, false, &mut vec![]).unwrap().len(), 1);
        let p = write(d.path(), "c.json", "{\"text\":\"a\"}");
        assert!(read_file(&p, false, &mut vec![]).unwrap_err().to_string().contains("array of objects"));
    }

    #[test]
    fn csv_rows_become_objects_and_json_cells_are_parsed() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "a.csv", "instruction,output\nhi,\"hello, you\"\nm,\"[{\"\"role\"\":\"\"user\"\"}]\"\n");
        let r = read_file(&p, false, &mut vec![]).unwrap();
        assert_eq!(r[0].value["output"], "hello, you");
        assert_eq!(r[1].value["output"][0]["role"], "user");
        assert_eq!(r[1].source.line, Some(3));
    }

    #[test]
    fn csv_with_a_short_row_is_an_error_with_its_line() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "a.csv", "a,b\n1,2\n3\n");
        let e = read_file(&p, false, &mut vec![]).unwrap_err().to_string();
        assert!(e.contains("a.csv:3"), "{e}");
    }

    #[test]
    fn unknown_extension_is_an_error() {
        let e = read_file(Path::new("x.txt"), false, &mut vec![]).unwrap_err().to_string();
        assert!(e.contains("x.txt") && e.contains(".jsonl"), "{e}");
    }

    #[test]
    fn parquet_rows_are_read() {
        use parquet::data_type::{ByteArray, ByteArrayType};
        use parquet::file::writer::SerializedFileWriter;
        use std::sync::Arc;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.parquet");
        let schema = Arc::new(parquet::schema::parser::parse_message_type("message s { REQUIRED BYTE_ARRAY text (UTF8); }").unwrap());
        let props = Arc::new(parquet::file::properties::WriterProperties::builder().build());
        let mut w = SerializedFileWriter::new(std::fs::File::create(&p).unwrap(), schema, props).unwrap();
        let mut rg = w.next_row_group().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        let vals = [ByteArray::from("one"), ByteArray::from("two")];
        col.typed::<ByteArrayType>().write_batch(&vals, None, None).unwrap();
        col.close().unwrap();
        rg.close().unwrap();
        w.close().unwrap();
        let r = read_file(&p, false, &mut vec![]).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].value["text"], "two");
    }
}
