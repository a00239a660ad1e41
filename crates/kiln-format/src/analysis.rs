//! `analysis/analysis.json` (and `analysis-<checkpoint>.json`): what `cargo xtask lens
//! analyse` (`kiln_lens::pipeline::analyse`) computed on a run's dev examples and the report
//! shows. Numbers are rounded by the writer (4–6 digits) to keep the file small; fields are
//! documented where they are not self-explanatory. docs/run-directory.md describes the
//! analyses themselves.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{read_json, FormatError};

/// The format version this kiln writes and reads, stored in [`Analysis::format`].
pub const ANALYSIS_FORMAT: &str = "kiln.analysis.v1";

/// One analysis of one checkpoint of a run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Analysis {
    /// [`ANALYSIS_FORMAT`].
    pub format: String,
    /// The task's short name (`sst2`, `stsb`, `demo` …).
    pub task: String,
    /// The tuning strategy's name.
    pub strategy: String,
    /// The checkpoint analysed (`best`, `last` …).
    pub checkpoint: String,
    /// Whether the task is a regression (one output, no probabilities).
    pub regression: bool,
    /// Outputs of the head (classes, or 1 for a regression).
    pub num_labels: usize,
    /// The split the examples come from (`dev`).
    pub split: String,
    /// One row per analysed example, in file order.
    pub examples: Vec<ExampleRow>,
    /// Projections of each layer's pooled hidden state.
    pub projection: Projection,
    /// Head importance and pruning; `None` where the heads are not the backbone's alone
    /// (side networks, soft prompts).
    pub heads: Option<Heads>,
    /// Token-level views of the first few examples.
    pub instances: Vec<Instance>,
}

impl Default for Analysis {
    /// An analysis of nothing in the current format: writers and tests fill in what they have.
    fn default() -> Self {
        Self {
            format: ANALYSIS_FORMAT.into(),
            task: String::new(),
            strategy: String::new(),
            checkpoint: "best".into(),
            regression: false,
            num_labels: 0,
            split: "dev".into(),
            examples: Vec::new(),
            projection: Projection::default(),
            heads: None,
            instances: Vec::new(),
        }
    }
}

impl Analysis {
    /// Reads an analysis file back, refusing another format version with a message naming
    /// both versions.
    ///
    /// # Errors
    /// [`FormatError`] naming `path`.
    pub fn read(path: &Path) -> Result<Self, FormatError> {
        #[derive(Deserialize)]
        struct Version {
            format: Option<String>,
        }
        let version: Version = read_json(path, "analysis file")?;
        let found = version.format.unwrap_or_else(|| "(none)".into());
        if found != ANALYSIS_FORMAT {
            return Err(FormatError::Version {
                path: path.to_path_buf(),
                found,
                expected: ANALYSIS_FORMAT,
            });
        }
        read_json(path, "analysis file")
    }
}

/// An example's text: one sentence, or a pair.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum ExampleText {
    /// A single sentence.
    Single(String),
    /// A sentence pair, written as a two-element array.
    Pair(String, String),
}

/// A gold label or a prediction: a class index, or a regression score.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(untagged)]
pub enum Target {
    /// A class index (written as an integer).
    Class(usize),
    /// A score (written as a float).
    Score(f64),
}

/// One analysed example.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExampleRow {
    /// The example's text.
    pub text: ExampleText,
    /// Its gold label.
    pub label: Target,
    /// The model's prediction (argmax class, or the score).
    pub prediction: Target,
    /// Softmax probability of the gold class; `None` for a regression.
    pub p_gold: Option<f64>,
    /// The example's loss (cross-entropy, or squared error).
    pub loss: f64,
}

/// Projections of the pooled hidden state of every layer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Projection {
    /// What was projected (`[CLS] hidden state`, or the mean over real tokens).
    pub of: String,
    /// The neighbourhood size of the distortion scores.
    pub k: usize,
    /// One entry per layer (the embedding layer is left out at `[CLS]`: one point for all).
    pub layers: Vec<LayerProjection>,
}

/// One layer's projections.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LayerProjection {
    /// 0 = embeddings, l = after block l.
    pub layer: usize,
    /// Principal components.
    pub pca: Pca,
    /// t-SNE.
    pub tsne: Map2d,
    /// UMAP.
    pub umap: Map2d,
}

/// PCA to two components.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pca {
    /// The points.
    pub coords: Coords,
    /// Share of the variance along each component.
    pub explained_variance_ratio: Vec<f64>,
    /// Distortion scores.
    pub scores: ProjectionScores,
}

/// A nonlinear map to two dimensions (t-SNE, UMAP).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Map2d {
    /// The points.
    pub coords: Coords,
    /// Distortion scores.
    pub scores: ProjectionScores,
}

/// 2-D points, example by example.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum Coords {
    /// `[x0, y0, x1, y1, …]`, as the analysis writes them.
    Points(Vec<f64>),
    /// The same numbers as little-endian f32 bytes, base64: what the report embeds (a quarter
    /// of the text, decoded without parsing numbers).
    Packed {
        /// Always `f32`.
        dtype: PackedDtype,
        /// The bytes.
        base64: String,
    },
}

/// The element type of [`Coords::Packed`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackedDtype {
    /// Little-endian IEEE single precision.
    #[serde(rename = "f32")]
    F32,
}

/// How well a projection keeps neighbourhoods (at `k` neighbours).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ProjectionScores {
    /// Share of each point's k nearest neighbours that stay its neighbours.
    pub neighbourhood_preservation: f64,
    /// Venna & Kaski's trustworthiness.
    pub trustworthiness: f64,
}

/// Head importance, the pruning curve and single-head masking.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Heads {
    /// Gate-gradient importance (Michel et al. 2019), `[layer][head]`, normalised per layer.
    pub gate: Vec<Vec<f64>>,
    /// First-order Taylor importance (T3-Vis), `[layer][head]`.
    pub taylor: Vec<Vec<f64>>,
    /// Dev examples the importance was computed on.
    pub examples: usize,
    /// The dev metric with the least important heads masked, share by share.
    pub pruning: Vec<PruningPoint>,
    /// The dev metric with each head masked alone, `[layer][head]`, when computed.
    pub masked_metric: Option<Vec<Vec<f64>>>,
    /// The metric's name.
    pub metric: String,
}

/// One point of the pruning curve.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PruningPoint {
    /// Heads masked.
    pub pruned: usize,
    /// Share of all heads masked.
    pub share: f64,
    /// The dev metric.
    pub metric: f64,
}

/// One example's token-level views.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// Index into [`Analysis::examples`].
    pub example: usize,
    /// The tokens, special tokens included.
    pub tokens: Vec<String>,
    /// Every head's attention map.
    pub attention: AttentionMaps,
    /// Attention rollout (Abnar & Zuidema) from the position the model reads out, per token:
    /// `[CLS]` for an encoder, the last token (whose next token is predicted) for a decoder.
    pub rollout: Vec<f64>,
    /// Value-zeroing rollout (Mohebbi et al.) from `[CLS]`; empty (absent from the file)
    /// where not computed (decoders).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub value_zeroing_rollout: Vec<f64>,
    /// Rollout of the norm-based mixing ratios with residual and LayerNorm (Kobayashi et al.,
    /// post-LN encoders); empty (absent) where not computed (decoders).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mixing_rollout: Vec<f64>,
    /// Per layer: the mean share of the token itself in its update (weights and norms); empty
    /// (absent) where not computed (decoders).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mixing: Vec<Mixing>,
    /// Gradient attributions; `None` where the heads are not the backbone's alone.
    pub saliency: Option<Saliency>,
}

/// Attention probabilities, quantised.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AttentionMaps {
    /// Layers.
    pub layers: usize,
    /// Heads per layer.
    pub heads: usize,
    /// Tokens.
    pub seq: usize,
    /// How `data` is laid out (`u8 base64, value/255, [layer][head][query][key]`).
    pub encoding: String,
    /// The bytes, base64.
    pub data: String,
}

/// One layer's mean mixing ratios over real tokens (Kobayashi et al. 2021).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Mixing {
    /// From attention weights alone.
    pub attn_w: f64,
    /// From the norms of the weighted vectors.
    pub attn_n: f64,
    /// With the residual connection.
    pub attnres_n: f64,
    /// With the residual connection and LayerNorm.
    pub attnresln_n: f64,
}

/// Gradient × input and integrated gradients of the predicted output, and of every output.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Saliency {
    /// The predicted output's attributions (flattened into this object).
    #[serde(flatten)]
    pub predicted: ClassSaliency,
    /// Every output's attributions, by output index.
    pub per_class: Vec<ClassSaliency>,
}

/// Attributions of one output (a class logit, or the regression score) to each token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassSaliency {
    /// The output.
    pub class: usize,
    /// Gradient × input summed over the hidden dimension.
    pub grad_x_input: Vec<f64>,
    /// Its L2 norm over the hidden dimension.
    pub grad_x_input_l2: Vec<f64>,
    /// Integrated gradients (PAD-embedding baseline) summed over the hidden dimension.
    pub integrated_gradients: Vec<f64>,
    /// Its L2 norm over the hidden dimension.
    pub integrated_gradients_l2: Vec<f64>,
    /// The completeness check of integrated gradients.
    pub ig_completeness: Completeness,
}

/// Integrated gradients' completeness: `sum` should equal `f_x − f_baseline` up to the
/// Riemann error of `steps`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Completeness {
    /// Sum of all attributions.
    pub sum: f32,
    /// The output at the input.
    pub f_x: f32,
    /// The output at the baseline.
    pub f_baseline: f32,
    /// Riemann steps.
    pub steps: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Analysis {
        let scores = ProjectionScores {
            neighbourhood_preservation: 0.5,
            trustworthiness: 0.9,
        };
        let saliency = |class| ClassSaliency {
            class,
            grad_x_input: vec![0.1, -0.2],
            grad_x_input_l2: vec![0.1, 0.2],
            integrated_gradients: vec![0.3, 0.4],
            integrated_gradients_l2: vec![0.3, 0.4],
            ig_completeness: Completeness {
                sum: 0.7,
                f_x: 1.0,
                f_baseline: 0.3,
                steps: 16,
            },
        };
        Analysis {
            format: ANALYSIS_FORMAT.into(),
            task: "mrpc".into(),
            strategy: "lora".into(),
            checkpoint: "best".into(),
            regression: false,
            num_labels: 2,
            split: "dev".into(),
            examples: vec![ExampleRow {
                text: ExampleText::Pair("a".into(), "b".into()),
                label: Target::Class(1),
                prediction: Target::Class(0),
                p_gold: Some(0.25),
                loss: 1.3863,
            }],
            projection: Projection {
                of: "[CLS] hidden state".into(),
                k: 10,
                layers: vec![LayerProjection {
                    layer: 1,
                    pca: Pca {
                        coords: Coords::Points(vec![0.5, -1.0]),
                        explained_variance_ratio: vec![0.6, 0.2],
                        scores,
                    },
                    tsne: Map2d {
                        coords: Coords::Points(vec![1.0, 2.0]),
                        scores,
                    },
                    umap: Map2d {
                        coords: Coords::Packed {
                            dtype: PackedDtype::F32,
                            base64: "AAAAAA==".into(),
                        },
                        scores,
                    },
                }],
            },
            heads: None,
            instances: vec![Instance {
                example: 0,
                tokens: vec!["[CLS]".into(), "[SEP]".into()],
                attention: AttentionMaps {
                    layers: 1,
                    heads: 1,
                    seq: 2,
                    encoding: "u8 base64, value/255, [layer][head][query][key]".into(),
                    data: "AAAAAA==".into(),
                },
                rollout: vec![0.5, 0.5],
                value_zeroing_rollout: vec![0.5, 0.5],
                mixing_rollout: vec![0.5, 0.5],
                mixing: vec![Mixing {
                    attn_w: 0.1,
                    attn_n: 0.2,
                    attnres_n: 0.6,
                    attnresln_n: 0.7,
                }],
                saliency: Some(Saliency {
                    predicted: saliency(0),
                    per_class: vec![saliency(0), saliency(1)],
                }),
            }],
        }
    }

    #[test]
    fn the_written_layout_is_the_one_the_report_reads() {
        let v = serde_json::to_value(sample()).unwrap();
        // The JSON paths the report's JavaScript reads (assets/analysis.js, report.js).
        assert_eq!(v["examples"][0]["text"], serde_json::json!(["a", "b"]));
        assert_eq!(v["examples"][0]["label"], 1);
        assert_eq!(v["projection"]["layers"][0]["pca"]["coords"][1], -1.0);
        assert_eq!(v["projection"]["layers"][0]["umap"]["coords"]["dtype"], "f32");
        assert_eq!(v["instances"][0]["saliency"]["class"], 0);
        assert_eq!(v["instances"][0]["saliency"]["per_class"][1]["class"], 1);
        assert_eq!(v["instances"][0]["saliency"]["ig_completeness"]["steps"], 16);
        assert!(v["heads"].is_null());
    }

    #[test]
    fn a_file_reads_back_to_the_same_value_and_other_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("analysis.json");
        std::fs::write(&path, serde_json::to_string(&sample()).unwrap()).unwrap();
        assert_eq!(Analysis::read(&path).unwrap(), sample());

        let mut old = serde_json::to_value(sample()).unwrap();
        old["format"] = "kiln.analysis.v0".into();
        std::fs::write(&path, old.to_string()).unwrap();
        let e = Analysis::read(&path).unwrap_err().to_string();
        assert!(e.contains("kiln.analysis.v0") && e.contains(ANALYSIS_FORMAT), "{e}");

        let mut extra = serde_json::to_value(sample()).unwrap();
        extra["examples"][0]["confidence"] = 0.5.into();
        std::fs::write(&path, extra.to_string()).unwrap();
        let e = Analysis::read(&path).unwrap_err().to_string();
        assert!(e.contains("analysis.json") && e.contains("confidence"), "{e}");
    }
}
