//! TensorBoard event files: every scalar of `metrics.jsonl` also goes to
//! `events.out.tfevents.*` in the run directory, so `tensorboard --logdir runs/` shows loss,
//! learning rate, gradient norm, throughput and dev metrics of every run side by side.
//!
//! The format is TensorFlow's: a file of TFRecords (`u64` length, masked CRC-32C of the
//! length, the bytes, masked CRC-32C of the bytes), each an `Event` protocol buffer. The
//! first event carries `file_version = "brain.Event:2"`; each scalar is an `Event` with
//! `wall_time`, `step` and a `Summary` holding one `Value { tag, simple_value }` — what
//! PyTorch's `SummaryWriter.add_scalar` writes. Written here, with the few protobuf fields
//! encoded by hand, rather than through a protobuf code generator and TensorFlow's `.proto`
//! files: three messages with five scalar fields do not justify a build-time dependency. The
//! encoding is checked byte for byte against a file written by the `tensorboard` Python
//! package (`fixtures/tensorboard/`, `scripts/make_tensorboard_fixture.py`), and [`read_scalars`]
//! decodes files back (CRCs checked) for tests and tools.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::training::MetricsLine;
use crate::FormatError;

/// The `file_version` of the first event, as TensorFlow and PyTorch write it.
pub const FILE_VERSION: &str = "brain.Event:2";

/// A scalar read back from an event file.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    /// Tag (`train/loss`, `eval/accuracy` …).
    pub tag: String,
    /// Step.
    pub step: i64,
    /// Seconds since the Unix epoch when it was written.
    pub wall_time: f64,
    /// Value.
    pub value: f32,
}

/// The scalars a `metrics.jsonl` line becomes: `train/{loss,lr,grad_norm,seq_per_s}` for a
/// training line, `eval/<metric>` for an evaluation.
pub fn scalars_of(line: &MetricsLine) -> (usize, Vec<(String, f32)>) {
    match line {
        MetricsLine::Train {
            step,
            loss,
            lr,
            grad_norm,
            seq_per_s,
            ..
        } => (
            *step,
            vec![
                ("train/loss".into(), *loss as f32),
                ("train/lr".into(), *lr as f32),
                ("train/grad_norm".into(), *grad_norm as f32),
                ("train/seq_per_s".into(), *seq_per_s as f32),
            ],
        ),
        MetricsLine::Eval { step, metrics, .. } => (
            *step,
            metrics.iter().map(|(k, v)| (format!("eval/{k}"), *v as f32)).collect(),
        ),
    }
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    varint(out, u64::from(field << 3 | 2));
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// An `Event` (proto3: `wall_time` and `step` are omitted at 0, as protobuf does).
fn event(wall_time: f64, step: i64, file_version: Option<&str>, value: Option<(&str, f32)>) -> Vec<u8> {
    let mut out = Vec::new();
    if wall_time != 0.0 {
        out.push(1 << 3 | 1);
        out.extend_from_slice(&wall_time.to_le_bytes());
    }
    if step != 0 {
        out.push(2 << 3);
        varint(&mut out, step as u64);
    }
    if let Some(v) = file_version {
        bytes_field(&mut out, 3, v.as_bytes());
    }
    if let Some((tag, x)) = value {
        let mut val = Vec::new();
        bytes_field(&mut val, 1, tag.as_bytes());
        // `simple_value` is in a oneof, so protobuf writes it even when it is 0.
        val.push(2 << 3 | 5);
        val.extend_from_slice(&x.to_le_bytes());
        let mut summary = Vec::new();
        bytes_field(&mut summary, 1, &val);
        bytes_field(&mut out, 5, &summary);
    }
    out
}

fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// Appends events to one `events.out.tfevents.*` file. Each record is written whole with one
/// `write` call, so a run killed mid-way leaves at most a truncated last record, which
/// TensorBoard skips.
///
/// ```
/// use kiln_format::tensorboard::{read_scalars, EventWriter};
///
/// let dir = tempfile::tempdir()?;
/// let events = EventWriter::create(dir.path(), 1_700_000_000.0)?;
/// events.scalar("train/loss", 0.5, 10, 1_700_000_001.0)?;
/// let back = read_scalars(events.path())?;
/// assert_eq!((back[0].tag.as_str(), back[0].step, back[0].value), ("train/loss", 10, 0.5));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    file: std::fs::File,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FormatError + '_ {
    move |source| FormatError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<unix seconds>.<host>.<pid>.kiln` and writes the
    /// version event at `wall_time`.
    ///
    /// # Errors
    /// [`FormatError::Io`].
    pub fn create(dir: &Path, wall_time: f64) -> Result<Self, FormatError> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty() && !h.contains(['/', '\\']))
            .unwrap_or_else(|| "localhost".into());
        let name = format!(
            "events.out.tfevents.{:010}.{host}.{}.kiln",
            wall_time as u64,
            std::process::id()
        );
        Self::create_file(&dir.join(name), wall_time)
    }

    /// Creates the event file at `path` and writes the version event at `wall_time`.
    ///
    /// # Errors
    /// [`FormatError::Io`].
    pub fn create_file(path: &Path, wall_time: f64) -> Result<Self, FormatError> {
        let file = std::fs::File::create(path).map_err(io(path))?;
        let w = Self {
            path: path.to_path_buf(),
            file,
        };
        w.write_event(&event(wall_time, 0, Some(FILE_VERSION), None))?;
        Ok(w)
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_event(&self, data: &[u8]) -> Result<(), FormatError> {
        (&self.file).write_all(&record(data)).map_err(io(&self.path))
    }

    /// Writes one scalar event.
    ///
    /// # Errors
    /// [`FormatError::Io`].
    pub fn scalar(&self, tag: &str, value: f32, step: i64, wall_time: f64) -> Result<(), FormatError> {
        self.write_event(&event(wall_time, step, None, Some((tag, value))))
    }

    /// Writes the scalars of a `metrics.jsonl` line ([`scalars_of`]).
    ///
    /// # Errors
    /// [`FormatError::Io`].
    pub fn metrics_line(&self, line: &MetricsLine, wall_time: f64) -> Result<(), FormatError> {
        let (step, scalars) = scalars_of(line);
        for (tag, value) in scalars {
            self.scalar(&tag, value, step as i64, wall_time)?;
        }
        Ok(())
    }
}

/// The event files (`*tfevents*`) directly in `dir`, sorted by name.
pub fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n.to_string_lossy().contains("tfevents")))
        .collect();
    files.sort();
    files
}

fn malformed(path: &Path, why: impl Into<String>) -> FormatError {
    FormatError::Malformed {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.bytes.get(self.at)?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.at..self.at + n)?;
        self.at += n;
        Some(s)
    }

    /// The next (field, wire type, payload) of a message; fixed-width payloads as bytes.
    fn field(&mut self) -> Option<(u64, u64, &'a [u8])> {
        let key = self.varint()?;
        let (field, wire) = (key >> 3, key & 7);
        let payload = match wire {
            0 => {
                let start = self.at;
                self.varint()?;
                &self.bytes[start..self.at]
            }
            1 => self.take(8)?,
            2 => {
                let n = self.varint()? as usize;
                self.take(n)?
            }
            5 => self.take(4)?,
            _ => return None,
        };
        Some((field, wire, payload))
    }
}

fn decode_varint(bytes: &[u8]) -> u64 {
    Reader { bytes, at: 0 }.varint().unwrap_or(0)
}

/// Every scalar (`simple_value`) of an event file, in file order. A truncated last record (a
/// run killed while writing) ends the list; a CRC mismatch is an error.
///
/// # Errors
/// [`FormatError::Io`], or [`FormatError::Malformed`] naming the file and the record.
pub fn read_scalars(path: &Path) -> Result<Vec<Scalar>, FormatError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let mut out = Vec::new();
    let mut at = 0;
    let mut index = 0;
    while at + 12 <= bytes.len() {
        let len_bytes = &bytes[at..at + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().expect("4 bytes"));
        if crc != masked_crc(len_bytes) {
            return Err(malformed(path, format!("record {index}: length CRC mismatch")));
        }
        let Some(data) = bytes.get(at + 12..at + 12 + len) else {
            break;
        };
        let Some(crc) = bytes.get(at + 12 + len..at + 16 + len) else {
            break;
        };
        if u32::from_le_bytes(crc.try_into().expect("4 bytes")) != masked_crc(data) {
            return Err(malformed(path, format!("record {index}: data CRC mismatch")));
        }
        at += 16 + len;
        let bad = || malformed(path, format!("record {index}: not an Event message"));
        let (mut wall_time, mut step, mut values) = (0.0, 0i64, Vec::new());
        let mut event = Reader { bytes: data, at: 0 };
        while event.at < data.len() {
            match event.field().ok_or_else(bad)? {
                (1, 1, b) => wall_time = f64::from_le_bytes(b.try_into().expect("8 bytes")),
                (2, 0, b) => step = decode_varint(b) as i64,
                (5, 2, summary) => {
                    let mut s = Reader { bytes: summary, at: 0 };
                    while s.at < summary.len() {
                        if let (1, 2, value) = s.field().ok_or_else(bad)? {
                            let mut v = Reader { bytes: value, at: 0 };
                            let (mut tag, mut x) = (String::new(), 0.0f32);
                            while v.at < value.len() {
                                match v.field().ok_or_else(bad)? {
                                    (1, 2, t) => tag = String::from_utf8_lossy(t).into_owned(),
                                    (2, 5, b) => x = f32::from_le_bytes(b.try_into().expect("4 bytes")),
                                    _ => {}
                                }
                            }
                            values.push((tag, x));
                        }
                    }
                }
                _ => {}
            }
        }
        out.extend(values.into_iter().map(|(tag, value)| Scalar {
            tag,
            step,
            wall_time,
            value,
        }));
        index += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The events `scripts/make_tensorboard_fixture.py` writes with the `tensorboard` package.
    fn fixture_events(w: &EventWriter) {
        w.scalar("train/loss", std::f32::consts::LN_2, 1, 1_700_000_001.25)
            .unwrap();
        w.scalar("train/lr", 2e-5, 1, 1_700_000_001.25).unwrap();
        w.scalar("train/loss", 0.0, 0, 1_700_000_002.5).unwrap();
        w.scalar("eval/accuracy", 0.875, 300, 1_700_000_003.0).unwrap();
        w.scalar("eval/mcc", -0.125, 1_234_567, 1_700_000_004.75).unwrap();
    }

    fn fixture() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/tensorboard/events.out.tfevents.1700000000.fixture")
    }

    #[test]
    fn encoding_matches_the_tensorboard_package_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.out.tfevents.test");
        let w = EventWriter::create_file(&path, 1_700_000_000.0).unwrap();
        fixture_events(&w);
        drop(w);
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(fixture()).unwrap());
    }

    #[test]
    fn the_reader_decodes_the_tensorboard_package_file() {
        let got = read_scalars(&fixture()).unwrap();
        let want = [
            ("train/loss", 1, 1_700_000_001.25, std::f32::consts::LN_2),
            ("train/lr", 1, 1_700_000_001.25, 2e-5),
            ("train/loss", 0, 1_700_000_002.5, 0.0),
            ("eval/accuracy", 300, 1_700_000_003.0, 0.875),
            ("eval/mcc", 1_234_567, 1_700_000_004.75, -0.125),
        ];
        assert_eq!(got.len(), want.len());
        for (g, (tag, step, wall_time, value)) in got.iter().zip(want) {
            assert_eq!(
                (g.tag.as_str(), g.step, g.wall_time, g.value),
                (tag, step, wall_time, value)
            );
        }
    }

    #[test]
    fn a_corrupted_record_is_an_error_naming_it_and_a_truncated_one_ends_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = std::fs::read(fixture()).unwrap();
        let truncated = dir.path().join("t.tfevents");
        std::fs::write(&truncated, &bytes[..bytes.len() - 3]).unwrap();
        assert_eq!(read_scalars(&truncated).unwrap().len(), 4);
        let n = bytes.len();
        bytes[n - 6] ^= 0x40;
        let corrupt = dir.path().join("c.tfevents");
        std::fs::write(&corrupt, &bytes).unwrap();
        let err = read_scalars(&corrupt).unwrap_err().to_string();
        assert!(err.contains("record 5") && err.contains("CRC"), "{err}");
    }

    #[test]
    fn metrics_lines_become_tagged_scalars() {
        let train = MetricsLine::Train {
            step: 7,
            epoch: 0,
            loss: 0.5,
            lr: 1e-4,
            grad_norm: 2.0,
            seq_per_s: 30.0,
        };
        let (step, s) = scalars_of(&train);
        assert_eq!(step, 7);
        assert_eq!(
            s.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
            ["train/loss", "train/lr", "train/grad_norm", "train/seq_per_s"]
        );
        let eval = MetricsLine::Eval {
            step: 9,
            epoch: 1,
            metrics: BTreeMap::from([("accuracy".to_string(), 0.75)]),
        };
        assert_eq!(scalars_of(&eval), (9, vec![("eval/accuracy".to_string(), 0.75)]));
    }
}
