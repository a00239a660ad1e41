//! Helpers shared by kiln-tune's integration tests.

use std::collections::HashMap;

use burn::prelude::*;
use kiln_model::roles::ModelRoles;
use kiln_tune::strategy::Tuning;

/// Every float parameter of `m` by path, as f32 values (through the full-fine-tuning tuned
/// part, which holds everything).
pub fn snapshot<B: Backend, M: Module<B> + ModelRoles>(m: &M) -> HashMap<String, Vec<f32>> {
    let bytes = kiln_tune::strategy::tuned_bytes(m, &Tuning::new(&[]).unwrap());
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            let d = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (n, d)
        })
        .collect()
}
