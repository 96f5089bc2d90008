//! ftlab's training protocol against llmft's, on the same pattern-based fine-tuning: ftlab pads
//! each batch only to its longest prompt and computes the LM head only at the answer position;
//! llmft pads every sequence to `max_length` and computes logits at every position.

use tch::{Device, Kind, Tensor};

use super::{random_model, seconds, Shape};
use crate::data::batch::{self, Batch, BatchOrder};
use crate::error::Result;
use crate::model::{ForwardInput, LogitsAt, Model};
use crate::run::data::RunData;
use crate::run::optim::AdamW;
use crate::run::RunConfig;

/// Seconds of `epochs` epochs of `shots` examples in batches of 16: `[ftlab, llmft]`.
pub fn epoch_seconds(shape: &Shape, shots: usize, epochs: usize) -> Result<[f64; 2]> {
    let (_, config) = shape.load()?;
    let run_config = RunConfig { shots, ..Default::default() };
    let mut times = [0.0; 2];
    for (padded, time) in [false, true].into_iter().zip(&mut times) {
        let model = random_model(&config, Device::Cpu)?;
        let data = RunData::load(&run_config, &model.tokenizer)?;
        let mut optimizer = AdamW::new(model.vs.variables().into_iter().collect(), &run_config.train)?;
        let mut examples = data.encoded.clone();
        if padded {
            // llmft pads every sequence to max_length; padding sits on the right.
            for e in &mut examples {
                e.ids.resize(run_config.train.max_length, model.tokenizer.pad_id());
            }
        }
        *time = seconds(|| {
            for epoch in 0..epochs {
                let order = BatchOrder::Shuffled { seed: epoch as u64 };
                for mut b in
                    batch::batches(&model.tokenizer, &examples, &data.prompt.word_ids, 16, order, model.device())
                {
                    if padded {
                        // The padded rows' real tokens are the unpadded encodings' lengths.
                        b.attention_mask = real_tokens(&b, &data);
                    }
                    let loss = answer_logits(&model, &b, padded)?.cross_entropy_for_logits(&b.label_token_ids);
                    optimizer.zero_grad();
                    loss.backward();
                    optimizer.clip_grad_norm(1.0);
                    optimizer.step(1e-5)?;
                }
            }
            Ok(())
        })?;
    }
    Ok(times)
}

/// The attention mask of a batch padded to full length: ones over each row's real tokens.
fn real_tokens(b: &Batch, data: &RunData) -> Tensor {
    let device = b.input_ids.device();
    let length = |p: usize| data.encoded.iter().find(|e| e.position == p).map_or(0, |e| e.ids.len() as i64);
    let lengths: Vec<i64> = b.positions.iter().map(|&p| length(p)).collect();
    let arange = Tensor::arange(b.input_ids.size()[1], (Kind::Int64, device)).unsqueeze(0);
    arange.lt_tensor(&Tensor::from_slice(&lengths).to_device(device).unsqueeze(1)).to_kind(Kind::Int64)
}

/// Logits `[B, V]` at each row's answer position: computed only there, or (`everywhere`, as
/// llmft does) at every position and then gathered.
fn answer_logits(model: &Model, b: &Batch, everywhere: bool) -> Result<Tensor> {
    let logits = if everywhere { LogitsAt::All } else { LogitsAt::LastToken };
    let input = ForwardInput {
        input_ids: Some(&b.input_ids),
        attention_mask: Some(&b.attention_mask),
        logits,
        train: true,
        ..Default::default()
    };
    let out = model.net.forward(input)?;
    let logits = out.logits.expect("LogitsAt::All and LastToken return logits");
    if !everywhere {
        return Ok(logits);
    }
    let v = logits.size()[2];
    Ok(logits.gather(1, &out.last_token.view([-1, 1, 1]).expand([-1, 1, v], false), false).squeeze_dim(1))
}
