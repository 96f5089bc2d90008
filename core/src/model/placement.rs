//! Spreading one model's decoder layers over several devices (`--device cuda:0,cuda:1`), for
//! models whose weights do not fit one GPU (opt-30b in fp32, opt-66b): the plan transformers'
//! `device_map="auto"` makes through accelerate. Layers are never split; consecutive layers share
//! a device, so hidden states cross devices only where the plan changes device; the token
//! embeddings and the LM head (tied to them in OPT) stay on the first device, with the final
//! layer norm, so logits come back where the inputs started.
//!
//! The plan is a pure function of sizes and capacities, so it is tested without a GPU.

use crate::error::{Error, Result};

/// Which device (an index into the run's device list) holds each part of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The device of the embeddings, the final layer norm and the (tied) LM head.
    pub embeddings: usize,
    /// The device of each decoder layer, in order.
    pub layers: Vec<usize>,
}

impl Placement {
    /// Everything on one device.
    pub fn single(layers: usize) -> Self {
        Self { embeddings: 0, layers: vec![0; layers] }
    }

    /// How many times hidden states change device in one forward pass: at every layer whose
    /// device differs from the previous one's, and back to the head's device at the end.
    pub fn transfers(&self) -> usize {
        let mut at = self.embeddings;
        let mut moves = 0;
        for &device in self.layers.iter().chain(std::iter::once(&self.embeddings)) {
            moves += usize::from(device != at);
            at = device;
        }
        moves
    }

    /// The devices' indices in use, in order of first use.
    pub fn devices(&self) -> Vec<usize> {
        let mut used = vec![self.embeddings];
        for &d in &self.layers {
            if !used.contains(&d) {
                used.push(d);
            }
        }
        used
    }
}

/// Plans where each layer goes: `embeddings` bytes (embeddings, final layer norm, LM head) on
/// the first device, then the layers of `layer_bytes` in order, each device taking an even share
/// of the total (accelerate's "balanced" map) but never more than its `capacities` entry.
/// Devices may be left unused when the model fits fewer. An error says how much is missing.
pub fn plan(embeddings: u64, layer_bytes: &[u64], capacities: &[u64]) -> Result<Placement> {
    if capacities.is_empty() {
        return Err(Error::Device("no device to place the model on".into()));
    }
    let total = embeddings + layer_bytes.iter().sum::<u64>();
    let room: u64 = capacities.iter().sum();
    if total > room {
        return Err(Error::Device(format!(
            "the model's weights need {} but the devices hold {} in all ({})",
            gib(total),
            gib(room),
            capacities.iter().map(|&c| gib(c)).collect::<Vec<_>>().join(" + ")
        )));
    }
    let share = total.div_ceil(capacities.len() as u64);
    let mut layers = Vec::with_capacity(layer_bytes.len());
    let (mut device, mut used) = (0, embeddings);
    if used > capacities[0] {
        return Err(Error::Device(format!(
            "the embeddings and LM head alone ({}) exceed the first device's {}",
            gib(used),
            gib(capacities[0])
        )));
    }
    for (i, &bytes) in layer_bytes.iter().enumerate() {
        // Move on when this device has its share (or no room), unless it is the last.
        while device + 1 < capacities.len() && (used + bytes > capacities[device] || used >= share) {
            device += 1;
            used = 0;
        }
        if used + bytes > capacities[device] {
            return Err(Error::Device(format!(
                "decoder layer {i} ({}) does not fit: the devices hold {} in all, but layers cannot be split",
                gib(bytes),
                gib(room)
            )));
        }
        used += bytes;
        layers.push(device);
    }
    Ok(Placement { embeddings: 0, layers })
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1 << 30;

    #[test]
    fn layers_are_balanced_in_order_and_never_split() {
        // 4 equal layers + the head on 2 roomy devices: each takes its even share of the
        // 9 GB (5 GB, whole layers), the first holding the head too.
        let placement = plan(GB, &[2 * GB; 4], &[16 * GB, 16 * GB]).unwrap();
        assert_eq!(placement.layers, [0, 0, 1, 1]);
        assert_eq!(placement.transfers(), 2, "to device 1 after layer 1, back for the head");
        // A small model on two devices still fills the first device's share first.
        assert_eq!(plan(GB, &[GB; 2], &[16 * GB, 16 * GB]).unwrap().layers, [0, 1]);
        // One device: no transfers.
        assert_eq!(plan(GB, &[GB; 3], &[8 * GB]).unwrap(), Placement::single(3));
        assert_eq!(Placement::single(3).transfers(), 0);
    }

    #[test]
    fn capacity_beats_balance_and_too_little_room_is_named() {
        // The first device is small: it takes the head and one layer, the second the rest.
        let placement = plan(GB, &[2 * GB; 4], &[3 * GB, 40 * GB]).unwrap();
        assert_eq!(placement.layers, [0, 1, 1, 1]);
        // Three devices, whole layers: each device fills to its share (20/3 GB) with whole
        // 5 GB layers, so the model fits on two and the third stays free.
        assert_eq!(plan(0, &[5 * GB; 4], &[10 * GB, 10 * GB, 10 * GB]).unwrap().layers, [0, 0, 1, 1]);
        let err = plan(GB, &[4 * GB; 4], &[8 * GB, 8 * GB]).unwrap_err().to_string();
        assert!(err.contains("17.00 GiB") && err.contains("16.00 GiB"), "{err}");
        // Enough bytes in all, but a layer larger than any free remainder.
        let err = plan(0, &[6 * GB, 6 * GB], &[7 * GB, 4 * GB, 4 * GB]).unwrap_err().to_string();
        assert!(err.contains("decoder layer 1"), "{err}");
    }

    #[test]
    fn a_plan_naming_one_device_twice_moves_at_its_boundaries() {
        let placement = Placement { embeddings: 0, layers: vec![0, 1, 1, 0] };
        assert_eq!(placement.transfers(), 2);
        assert_eq!(placement.devices(), [0, 1]);
    }
}
