//! The committed references (`fixtures/reference`) are what `scripts/slice_reference_fixtures.py`
//! says they are: every tensor equals, bit for bit, the recorded slice (`kiln.rows`,
//! `kiln.seq`, `kiln.after_rows` in the file's metadata) of the full PyTorch output in
//! `shared/reference`, and the sliced texts are those rows of the full text lists. Where
//! `shared/` is absent (a fresh clone) only the fixtures' own consistency is checked; CI has it.

use std::collections::HashMap;
use std::path::Path;

use kiln_model::parity::{RefData, ReferenceFile};

const FILES: [&str; 4] = [
    "minilm/reference.safetensors",
    "minilm/reference_pairs.safetensors",
    "gpt2-tiny/reference.safetensors",
    "minilm-train-step/reference.safetensors",
];

fn metadata(path: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap_or_default()
}

/// Source index along each axis for a fixture index (axis 0 through `rows` for batch tensors,
/// every other axis a prefix).
fn source_offset(index: &[usize], rows: Option<&[usize]>, src_shape: &[usize]) -> usize {
    let mut offset = 0;
    for (axis, (&i, &dim)) in index.iter().zip(src_shape).enumerate() {
        let i = match (axis, rows) {
            (0, Some(rows)) => rows[i],
            _ => i,
        };
        assert!(i < dim);
        offset = offset * dim + i;
    }
    offset
}

fn for_each_index(shape: &[usize], mut f: impl FnMut(usize, &[usize])) {
    let total: usize = shape.iter().product();
    let mut index = vec![0; shape.len()];
    for flat in 0..total {
        f(flat, &index);
        for axis in (0..shape.len()).rev() {
            index[axis] += 1;
            if index[axis] < shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
}

#[test]
fn fixtures_record_their_slice_and_hold_real_rows() {
    for rel in FILES {
        let path = kiln_testkit::reference(rel);
        let meta = metadata(&path);
        assert!(
            meta.contains_key("kiln.sliced_from"),
            "{rel}: no provenance in its metadata"
        );
        let fixture = ReferenceFile::open(&path).unwrap();
        let (shape, mask) = fixture.i64("attention_mask").unwrap();
        // Right padding cut to the longest kept row: some row is all ones.
        let seq = shape[1];
        assert!(
            (0..shape[0]).any(|r| mask[r * seq..(r + 1) * seq].iter().all(|&m| m == 1)),
            "{rel}"
        );
        if let Some(s) = meta.get("kiln.seq") {
            assert_eq!(s.parse::<usize>().unwrap(), seq, "{rel}");
        }
    }
}

#[test]
fn fixtures_are_exact_slices_of_the_shared_references() {
    let Some(shared) = kiln_model::hub::shared_dir() else {
        eprintln!("shared/reference absent: provenance not checked here (CI checks it)");
        return;
    };
    for rel in FILES {
        let fixture_path = kiln_testkit::reference(rel);
        let meta = metadata(&fixture_path);
        let fixture = ReferenceFile::open(&fixture_path).unwrap();
        let full = ReferenceFile::open(shared.join("reference").join(rel)).unwrap();
        let rows: Option<Vec<usize>> = meta
            .get("kiln.rows")
            .map(|r| r.split(',').map(|x| x.parse().unwrap()).collect());
        assert_eq!(
            fixture.tensors.keys().collect::<Vec<_>>(),
            full.tensors.keys().collect::<Vec<_>>(),
            "{rel}: the fixture keeps every tensor"
        );
        let batch = full.i64("input_ids").unwrap().0[0];
        for (name, t) in &fixture.tensors {
            let src = &full.tensors[name];
            let batch_rows = rows
                .as_deref()
                .filter(|_| src.shape[0] == batch && !name.starts_with("after."));
            assert_eq!(t.shape.len(), src.shape.len(), "{rel}:{name}");
            let mut compared = 0usize;
            for_each_index(&t.shape, |flat, index| {
                let at = source_offset(index, batch_rows, &src.shape);
                match (&t.data, &src.data) {
                    (RefData::F32(a), RefData::F32(b)) => {
                        assert_eq!(a[flat].to_bits(), b[at].to_bits(), "{rel}:{name}{index:?}")
                    }
                    (RefData::I64(a), RefData::I64(b)) => assert_eq!(a[flat], b[at], "{rel}:{name}{index:?}"),
                    _ => panic!("{rel}:{name}: dtype changed"),
                }
                compared += 1;
            });
            assert!(compared > 0, "{rel}:{name} is empty");
        }
        if let (Some(rows), Some(texts)) = (&rows, texts_of(rel)) {
            let full: Vec<serde_json::Value> =
                serde_json::from_str(&std::fs::read_to_string(shared.join("reference").join(texts)).unwrap()).unwrap();
            let kept: Vec<serde_json::Value> =
                serde_json::from_str(&std::fs::read_to_string(kiln_testkit::reference(texts)).unwrap()).unwrap();
            assert_eq!(
                kept,
                rows.iter().map(|&r| full[r].clone()).collect::<Vec<_>>(),
                "{texts}"
            );
        }
    }
    for copied in [
        "gpt2-tiny/config.json",
        "gpt2-tiny/model.safetensors",
        "minilm-train-step/sentences.json",
    ] {
        assert_eq!(
            std::fs::read(kiln_testkit::reference(copied)).unwrap(),
            std::fs::read(shared.join("reference").join(copied)).unwrap(),
            "{copied}"
        );
    }
}

fn texts_of(rel: &str) -> Option<&'static str> {
    match rel {
        "minilm/reference.safetensors" => Some("minilm/sentences.json"),
        "minilm/reference_pairs.safetensors" => Some("minilm/pairs.json"),
        _ => None,
    }
}
