//! Three AdamW steps of kiln vs PyTorch + transformers on the real MiniLM
//! (`fixtures/reference/minilm-train-step`): losses, pre-clip gradient norms, parameters.

use burn::backend::{Autodiff, Flex};
use kiln_model::hub::{locate_or_fetch, DEFAULT_MODEL_ID};
use kiln_model::parity::ReferenceFile;
use kiln_tune::train_parity::{train_step_parity, TrainParityConfig};

#[test]
fn three_adamw_steps_match_pytorch() {
    let model = locate_or_fetch(DEFAULT_MODEL_ID, None, true).unwrap_or_else(|e| panic!("{e}"));
    let reference = ReferenceFile::open(kiln_testkit::reference("minilm-train-step/reference.safetensors")).unwrap();
    let rows =
        train_step_parity::<Autodiff<Flex>>(&model, &reference, TrainParityConfig::default(), &Default::default())
            .unwrap();
    for r in &rows {
        println!(
            "{:<60} {:>10.3e} <= {:.0e} {}",
            r.tensor,
            r.value,
            r.tolerance,
            if r.ok { "ok" } else { "FAIL" }
        );
    }
    // 3 losses, 3 gradient norms, the 9 parameters the reference lists.
    assert_eq!(rows.len(), 15);
    assert!(rows.iter().all(|r| r.ok), "train-step parity failed");
}
