//! What head-level analyses (importance, masking, pruning) need of a model, for any family:
//! per layer, the number of heads, the [`LayerInserts`] that hold the head gate, and the
//! linears whose output columns (queries, keys, values) and input rows (the output projection)
//! belong to heads. BERT and GPT-2 implement it; `kiln_lens::heads` works on either.

use burn::nn::Linear;
use burn::prelude::*;

use crate::bert::BertModel;
use crate::gpt2::Gpt2Model;
use crate::peft::LayerInserts;

/// One layer's attention heads, as analyses see them.
pub struct HeadLayer<'a, B: Backend> {
    /// Heads in the layer.
    pub heads: usize,
    /// Projections whose output columns are laid out `[blocks][heads][d_head]` (BERT: the
    /// query, key and value linears, one block each; GPT-2: the fused `c_attn`, three blocks).
    pub head_columns: Vec<&'a Linear<B>>,
    /// The output projection, whose input rows are laid out `[heads][d_head]`.
    pub head_rows: &'a Linear<B>,
    /// Where the layer's head gate lives (`head_gate`, applied to the per-head context before
    /// the output projection).
    pub inserts: &'a LayerInserts<B>,
}

/// A model whose attention heads can be gated and scored.
pub trait AttentionHeads<B: Backend> {
    /// Every layer, bottom first.
    fn head_layers(&self) -> Vec<HeadLayer<'_, B>>;
    /// Every layer's inserts with its number of heads, bottom first (to install gates).
    fn head_inserts_mut(&mut self) -> Vec<(usize, &mut LayerInserts<B>)>;
}

impl<B: Backend> AttentionHeads<B> for BertModel<B> {
    fn head_layers(&self) -> Vec<HeadLayer<'_, B>> {
        self.encoder
            .layer
            .iter()
            .map(|layer| {
                let sa = &layer.attention.self_attention;
                HeadLayer {
                    heads: sa.num_heads,
                    head_columns: vec![&sa.query, &sa.key, &sa.value],
                    head_rows: &layer.attention.output.dense,
                    inserts: &layer.inserts,
                }
            })
            .collect()
    }

    fn head_inserts_mut(&mut self) -> Vec<(usize, &mut LayerInserts<B>)> {
        self.encoder
            .layer
            .iter_mut()
            .map(|layer| (layer.attention.self_attention.num_heads, &mut layer.inserts))
            .collect()
    }
}

impl<B: Backend> AttentionHeads<B> for Gpt2Model<B> {
    fn head_layers(&self) -> Vec<HeadLayer<'_, B>> {
        self.h
            .iter()
            .map(|block| HeadLayer {
                heads: block.attn.num_heads,
                head_columns: vec![&block.attn.c_attn],
                head_rows: &block.attn.c_proj,
                inserts: &block.inserts,
            })
            .collect()
    }

    fn head_inserts_mut(&mut self) -> Vec<(usize, &mut LayerInserts<B>)> {
        self.h
            .iter_mut()
            .map(|block| (block.attn.num_heads, &mut block.inserts))
            .collect()
    }
}
