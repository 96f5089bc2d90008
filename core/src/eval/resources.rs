//! Time, throughput and memory of one phase of a run (training or evaluation).
//!
//! Wall time is measured with a monotonic clock; tokens/s counts non-padding tokens the phase
//! processed. Peak memory on the CPU is the process's peak resident set size, `VmHWM` in
//! `/proc/self/status`, which is reset at the start of the phase by writing `5` to
//! `/proc/self/clear_refs` (Linux ≥ 4.0), so it is the phase's own peak; when the reset is not
//! permitted the value is the peak since the process started, and `rss_peak_is_phase_only`
//! says so. On CUDA, tch 0.26 exposes none of the caching allocator's statistics, so
//! `cuda_peak_bytes` is `None` there; the host RSS is still reported.

use std::time::Instant;

use serde::Serialize;
use tch::Device;

/// What a phase cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseResources {
    /// Wall-clock seconds.
    pub wall_seconds: f64,
    /// Non-padding tokens processed.
    pub tokens: usize,
    /// `tokens / wall_seconds`.
    pub tokens_per_s: f64,
    /// Peak resident set size in bytes (`VmHWM`), when the OS reports it.
    pub peak_rss_bytes: Option<u64>,
    /// Whether the RSS peak was reset at the phase start (else it covers the whole process).
    pub rss_peak_is_phase_only: bool,
    /// Peak CUDA memory in bytes; `None` on the CPU and where it cannot be read (see above).
    pub cuda_peak_bytes: Option<u64>,
    /// The device the phase ran on, e.g. `Cpu` or `Cuda(0)`.
    pub device: String,
}

/// Measures a phase from [`PhaseMeter::start`] to [`PhaseMeter::finish`].
#[derive(Debug)]
pub struct PhaseMeter {
    started: Instant,
    device: Device,
    tokens: usize,
    rss_reset: bool,
}

impl PhaseMeter {
    /// Starts the clock and resets the process's RSS peak when the OS allows it.
    pub fn start(device: Device) -> Self {
        let rss_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        Self { started: Instant::now(), device, tokens: 0, rss_reset }
    }

    /// Counts `tokens` more processed tokens.
    pub fn add_tokens(&mut self, tokens: usize) {
        self.tokens += tokens;
    }

    /// Stops the clock and reads the peaks.
    pub fn finish(self) -> PhaseResources {
        if let Device::Cuda(index) = self.device {
            tch::Cuda::synchronize(index as i64);
        }
        let wall_seconds = self.started.elapsed().as_secs_f64();
        PhaseResources {
            wall_seconds,
            tokens: self.tokens,
            tokens_per_s: if wall_seconds > 0.0 { self.tokens as f64 / wall_seconds } else { 0.0 },
            peak_rss_bytes: peak_rss_bytes(),
            rss_peak_is_phase_only: self.rss_reset,
            cuda_peak_bytes: None,
            device: format!("{:?}", self.device),
        }
    }
}

/// `VmHWM` of this process in bytes, from `/proc/self/status`.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_peak_from_proc_status() {
        assert_eq!(parse_vm_hwm("Name:\tx\nVmHWM:\t  123456 kB\nVmRSS:\t1 kB\n"), Some(123_456 * 1024));
        assert_eq!(parse_vm_hwm("Name:\tx\n"), None);
    }

    #[test]
    fn a_phase_sees_the_memory_it_touches() {
        let mut meter = PhaseMeter::start(Device::Cpu);
        let block = vec![1u8; 64 << 20];
        std::hint::black_box(&block);
        meter.add_tokens(1000);
        let resources = meter.finish();
        assert_eq!(resources.tokens, 1000);
        assert!(resources.wall_seconds > 0.0 && resources.tokens_per_s > 0.0);
        if cfg!(target_os = "linux") {
            assert!(resources.peak_rss_bytes.unwrap() >= 64 << 20, "{resources:?}");
        }
    }
}
