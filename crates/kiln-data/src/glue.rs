//! GLUE task files as published (tab-separated, no quoting), with each task's layout.
//!
//! Quirks handled (see `shared/data/README.md`): CoLA has no header; MRPC's header starts
//! with a UTF-8 BOM; fields contain literal `"` (no CSV quoting — split on tabs only); RTE
//! and QNLI have string labels; STS-B has a float score in the last column; CoLA's dev file
//! has no final newline.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tokenize::TextInput;

/// A GLUE task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GlueTask {
    /// Corpus of Linguistic Acceptability (MCC).
    Cola,
    /// Stanford Sentiment Treebank, binary (accuracy).
    #[serde(rename = "sst2", alias = "sst-2")]
    Sst2,
    /// Microsoft Research Paraphrase Corpus (F1, accuracy).
    Mrpc,
    /// Quora Question Pairs (F1, accuracy).
    Qqp,
    /// Semantic Textual Similarity Benchmark (Pearson, Spearman).
    #[serde(rename = "stsb", alias = "sts-b")]
    Stsb,
    /// Multi-Genre NLI (accuracy; 3 classes).
    Mnli,
    /// Question NLI (accuracy).
    Qnli,
    /// Recognising Textual Entailment (accuracy).
    Rte,
    /// Winograd NLI (accuracy).
    Wnli,
}

/// A label: a class index or a regression target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Label {
    /// Class index.
    Class(usize),
    /// Real-valued target (STS-B).
    Score(f32),
}

/// One example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The text (single or pair).
    pub input: TextInput,
    /// Its label.
    pub label: Label,
}

/// Errors reading a task file.
#[derive(Debug, thiserror::Error)]
pub enum GlueError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A row does not fit the task's layout.
    #[error("{path}:{line}: {message}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The task name is unknown.
    #[error("unknown GLUE task {0:?} (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli)")]
    UnknownTask(String),
    /// A split holds no usable example.
    #[error("{path}: no examples ({skipped} malformed rows skipped)")]
    Empty {
        /// The file.
        path: PathBuf,
        /// Rows skipped as malformed.
        skipped: usize,
    },
}

/// What to do with a malformed row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMalformed {
    /// Stop with [`GlueError::Malformed`] (default).
    #[default]
    Error,
    /// Skip the row and count it.
    Skip,
}

/// A loaded split.
#[derive(Debug, Clone)]
pub struct GlueSplit {
    /// The examples, in file order.
    pub examples: Vec<Example>,
    /// Rows skipped under [`OnMalformed::Skip`].
    pub skipped: usize,
}

struct Layout {
    header: bool,
    min_columns: usize,
    a: Col,
    b: Option<Col>,
    label: Col,
}

/// A column index, counted from the start or from the end.
#[derive(Clone, Copy)]
enum Col {
    At(usize),
    FromEnd(usize),
}

impl Col {
    fn get<'a>(self, fields: &[&'a str]) -> &'a str {
        match self {
            Col::At(i) => fields[i],
            Col::FromEnd(i) => fields[fields.len() - 1 - i],
        }
    }
}

impl GlueTask {
    /// All tasks.
    pub const ALL: [GlueTask; 9] = [
        Self::Cola,
        Self::Sst2,
        Self::Mrpc,
        Self::Qqp,
        Self::Stsb,
        Self::Mnli,
        Self::Qnli,
        Self::Rte,
        Self::Wnli,
    ];

    /// Parses a task name (`cola`, `sst2`/`sst-2`, `sts-b`, ...; case-insensitive).
    ///
    /// # Errors
    /// [`GlueError::UnknownTask`].
    pub fn parse(name: &str) -> Result<Self, GlueError> {
        let n = name.to_ascii_lowercase().replace(['-', '_'], "");
        Self::ALL
            .into_iter()
            .find(|t| t.short_name().replace('-', "") == n)
            .ok_or_else(|| GlueError::UnknownTask(name.to_string()))
    }

    /// Lower-case name (`sst2`, `stsb`, ...).
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Cola => "cola",
            Self::Sst2 => "sst2",
            Self::Mrpc => "mrpc",
            Self::Qqp => "qqp",
            Self::Stsb => "stsb",
            Self::Mnli => "mnli",
            Self::Qnli => "qnli",
            Self::Rte => "rte",
            Self::Wnli => "wnli",
        }
    }

    /// Directory name in the GLUE distribution (`CoLA`, `SST-2`, `STS-B`, ...).
    pub fn dir_name(self) -> &'static str {
        match self {
            Self::Cola => "CoLA",
            Self::Sst2 => "SST-2",
            Self::Mrpc => "MRPC",
            Self::Qqp => "QQP",
            Self::Stsb => "STS-B",
            Self::Mnli => "MNLI",
            Self::Qnli => "QNLI",
            Self::Rte => "RTE",
            Self::Wnli => "WNLI",
        }
    }

    /// Number of output units: classes, or 1 for regression (STS-B).
    pub fn num_labels(self) -> usize {
        match self {
            Self::Stsb => 1,
            Self::Mnli => 3,
            _ => 2,
        }
    }

    /// Whether the task is regression.
    pub fn is_regression(self) -> bool {
        self == Self::Stsb
    }

    /// File name of the dev split (`dev_matched.tsv` for MNLI).
    pub fn dev_file(self) -> &'static str {
        if self == Self::Mnli {
            "dev_matched.tsv"
        } else {
            "dev.tsv"
        }
    }

    fn layout(self) -> Layout {
        use Col::*;
        match self {
            Self::Cola => Layout {
                header: false,
                min_columns: 4,
                a: At(3),
                b: None,
                label: At(1),
            },
            Self::Sst2 => Layout {
                header: true,
                min_columns: 2,
                a: At(0),
                b: None,
                label: At(1),
            },
            Self::Mrpc => Layout {
                header: true,
                min_columns: 5,
                a: At(3),
                b: Some(At(4)),
                label: At(0),
            },
            Self::Qqp => Layout {
                header: true,
                min_columns: 6,
                a: At(3),
                b: Some(At(4)),
                label: At(5),
            },
            Self::Stsb => Layout {
                header: true,
                min_columns: 10,
                a: At(7),
                b: Some(At(8)),
                label: At(9),
            },
            Self::Mnli => Layout {
                header: true,
                min_columns: 11,
                a: At(8),
                b: Some(At(9)),
                label: FromEnd(0),
            },
            Self::Qnli | Self::Rte | Self::Wnli => Layout {
                header: true,
                min_columns: 4,
                a: At(1),
                b: Some(At(2)),
                label: At(3),
            },
        }
    }

    fn parse_label(self, raw: &str) -> Result<Label, String> {
        let raw = raw.trim();
        match self {
            Self::Stsb => match raw.parse::<f32>() {
                // STS-B similarity is graded 0–5; NaN/inf or a score outside would train a
                // regression towards nonsense (or stop it with a non-finite loss).
                Ok(v) if (0.0..=5.0).contains(&v) => Ok(Label::Score(v)),
                Ok(v) => Err(format!("score {v} is outside STS-B's range 0–5")),
                Err(_) => Err(format!("score {raw:?} is not a number")),
            },
            Self::Rte | Self::Qnli => match raw {
                "entailment" => Ok(Label::Class(0)),
                "not_entailment" => Ok(Label::Class(1)),
                _ => Err(format!("label {raw:?} is not entailment/not_entailment")),
            },
            Self::Mnli => match raw {
                "entailment" => Ok(Label::Class(0)),
                "neutral" => Ok(Label::Class(1)),
                "contradiction" => Ok(Label::Class(2)),
                _ => Err(format!("label {raw:?} is not entailment/neutral/contradiction")),
            },
            _ => match raw {
                "0" => Ok(Label::Class(0)),
                "1" => Ok(Label::Class(1)),
                _ => Err(format!("label {raw:?} is not 0 or 1")),
            },
        }
    }

    /// Parses the text of a task file.
    ///
    /// # Errors
    /// [`GlueError::Malformed`] naming `path` and the line, unless `on_malformed` is
    /// [`OnMalformed::Skip`].
    pub fn parse_tsv(self, text: &str, path: &Path, on_malformed: OnMalformed) -> Result<GlueSplit, GlueError> {
        let layout = self.layout();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut examples = Vec::new();
        let mut skipped = 0;
        for (i, line) in text.split('\n').enumerate() {
            let line_no = i + 1;
            if (layout.header && i == 0) || line.is_empty() {
                continue;
            }
            let line = line.strip_suffix('\r').unwrap_or(line);
            let fields: Vec<&str> = line.split('\t').collect();
            let parsed = if fields.len() < layout.min_columns {
                Err(format!(
                    "expected {} tab-separated columns, found {}",
                    layout.min_columns,
                    fields.len()
                ))
            } else {
                self.parse_label(layout.label.get(&fields)).map(|label| {
                    let a = layout.a.get(&fields).to_string();
                    let input = match layout.b {
                        Some(b) => TextInput::Pair(a, b.get(&fields).to_string()),
                        None => TextInput::Single(a),
                    };
                    Example { input, label }
                })
            };
            match (parsed, on_malformed) {
                (Ok(e), _) => examples.push(e),
                (Err(_), OnMalformed::Skip) => skipped += 1,
                (Err(message), OnMalformed::Error) => {
                    return Err(GlueError::Malformed {
                        path: path.to_path_buf(),
                        line: line_no,
                        message,
                    })
                }
            }
        }
        if examples.is_empty() {
            return Err(GlueError::Empty {
                path: path.to_path_buf(),
                skipped,
            });
        }
        Ok(GlueSplit { examples, skipped })
    }

    /// Reads `dir/<file>` (`dir` is the task directory, e.g. `glue/CoLA`).
    ///
    /// # Errors
    /// [`GlueError::Io`] or [`GlueError::Malformed`].
    pub fn load(self, path: impl AsRef<Path>, on_malformed: OnMalformed) -> Result<GlueSplit, GlueError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| GlueError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.parse_tsv(&text, path, on_malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(task: GlueTask, text: &str) -> Result<GlueSplit, GlueError> {
        task.parse_tsv(text, Path::new("x.tsv"), OnMalformed::Error)
    }

    #[test]
    fn mrpc_bom_header_is_skipped_and_quotes_are_literal() {
        let text = "\u{feff}Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said \"hi\t\"Hi\" he said\n";
        let split = parse(GlueTask::Mrpc, text).unwrap();
        assert_eq!(split.examples.len(), 1);
        assert_eq!(
            split.examples[0].input,
            TextInput::Pair("He said \"hi".into(), "\"Hi\" he said".into())
        );
        assert_eq!(split.examples[0].label, Label::Class(1));
    }

    #[test]
    fn cola_has_no_header_and_no_final_newline() {
        let split = parse(
            GlueTask::Cola,
            "gj04\t1\t\tThe dog barked.\ngj04\t0\t*\tDog the barked.",
        )
        .unwrap();
        let labels: Vec<Label> = split.examples.iter().map(|e| e.label).collect();
        assert_eq!(labels, vec![Label::Class(1), Label::Class(0)]);
    }

    #[test]
    fn ragged_row_is_an_error_naming_file_and_line_or_is_skipped_and_counted() {
        let text = "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tonly two\n2\tc\td\tnot_entailment\n";
        let err = parse(GlueTask::Rte, text).unwrap_err();
        assert_eq!(err.to_string(), "x.tsv:3: expected 4 tab-separated columns, found 2");
        let split = GlueTask::Rte
            .parse_tsv(text, Path::new("x.tsv"), OnMalformed::Skip)
            .unwrap();
        assert_eq!((split.examples.len(), split.skipped), (2, 1));
    }

    #[test]
    fn bad_labels_are_errors() {
        let err = parse(GlueTask::Rte, "h\th\th\th\n0\ta\tb\tmaybe\n").unwrap_err();
        assert!(err.to_string().contains("x.tsv:2: label \"maybe\""), "{err}");
        let err = parse(GlueTask::Stsb, "h\n0\tg\tf\ty\to\ts\ts\ta\tb\tfive\n").unwrap_err();
        assert!(err.to_string().contains("not a number"), "{err}");
        for bad in ["5.5", "-1", "NaN", "inf"] {
            let err = parse(GlueTask::Stsb, &format!("h\n0\tg\tf\ty\to\ts\ts\ta\tb\t{bad}\n")).unwrap_err();
            assert!(
                err.to_string().contains("x.tsv:2: score") && err.to_string().contains("0–5"),
                "{bad}: {err}"
            );
        }
        assert!(parse(GlueTask::Stsb, "h\n0\tg\tf\ty\to\ts\ts\ta\tb\t4.75\n").is_ok());
    }

    #[test]
    fn an_empty_split_names_its_file() {
        let err = parse(GlueTask::Rte, "index\tsentence1\tsentence2\tlabel\n").unwrap_err();
        assert_eq!(err.to_string(), "x.tsv: no examples (0 malformed rows skipped)");
    }

    #[test]
    fn task_names_parse_in_any_spelling() {
        assert_eq!(GlueTask::parse("SST-2").unwrap(), GlueTask::Sst2);
        assert_eq!(GlueTask::parse("sts_b").unwrap(), GlueTask::Stsb);
        assert!(GlueTask::parse("squad").is_err());
    }
}
