//! Time, throughput and memory of one phase of a run (training or evaluation).
//!
//! Wall time is measured with a monotonic clock; tokens/s counts non-padding tokens the phase
//! processed. Peak memory on the CPU is the process's peak resident set size, `VmHWM` in
//! `/proc/self/status`, which is reset at the start of the phase by writing `5` to
//! `/proc/self/clear_refs` (Linux ≥ 4.0), so it is the phase's own peak; when the reset is not
//! permitted the value is the peak since the process started, and `rss_peak_is_phase_only`
//! says so. On CUDA the peak is the caching allocator's peak of allocated bytes
//! (`torch.cuda.max_memory_allocated`, read through `ftlab-torch-ext`), reset at the phase
//! start as `torch.cuda.reset_peak_memory_stats` does; the host RSS is reported too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::Device;

/// What a phase cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

impl PhaseResources {
    /// The cost of this phase and `later` together (e.g. a run's training epochs): times and
    /// tokens add up, peaks are the larger.
    pub fn then(self, later: PhaseResources) -> PhaseResources {
        let (wall_seconds, tokens) = (self.wall_seconds + later.wall_seconds, self.tokens + later.tokens);
        let max = |a: Option<u64>, b: Option<u64>| a.max(b);
        PhaseResources {
            wall_seconds,
            tokens,
            tokens_per_s: if wall_seconds > 0.0 { tokens as f64 / wall_seconds } else { 0.0 },
            peak_rss_bytes: max(self.peak_rss_bytes, later.peak_rss_bytes),
            rss_peak_is_phase_only: self.rss_peak_is_phase_only && later.rss_peak_is_phase_only,
            cuda_peak_bytes: max(self.cuda_peak_bytes, later.cuda_peak_bytes),
            device: later.device,
        }
    }
}

/// The process's RSS peak as it stood before the last phase reset it: resetting forgets the
/// old peak, so each reset first folds it in here for [`process_peak_rss_bytes`].
static PEAK_BEFORE_RESETS: AtomicU64 = AtomicU64::new(0);

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
        if let Device::Cuda(index) = device {
            if let Err(e) = ftlab_torch_ext::reset_cuda_peak(index) {
                tracing::warn!("cannot reset the CUDA memory peak: {e}");
            }
        }
        if let Some(peak) = peak_rss_bytes() {
            PEAK_BEFORE_RESETS.fetch_max(peak, Ordering::Relaxed);
        }
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
            cuda_peak_bytes: cuda_peak_bytes(self.device),
            device: format!("{:?}", self.device),
        }
    }
}

/// The CUDA allocator's peak allocated bytes on `device` since the last reset (`None` on other
/// devices, or when libtorch cannot say).
pub fn cuda_peak_bytes(device: Device) -> Option<u64> {
    let Device::Cuda(index) = device else { return None };
    ftlab_torch_ext::cuda_allocated_bytes(index).map(|(_, peak)| peak).map_err(|e| tracing::warn!("{e}")).ok()
}

/// The process's peak resident memory since it started, across the phases' resets.
pub fn process_peak_rss_bytes() -> Option<u64> {
    let before = PEAK_BEFORE_RESETS.load(Ordering::Relaxed);
    match peak_rss_bytes() {
        Some(now) => Some(now.max(before)),
        None => (before > 0).then_some(before),
    }
}

/// `VmHWM` of this process in bytes (since the last phase reset it), from `/proc/self/status`.
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

    /// The peak is process-wide: tests that measure it take turns.
    fn measuring() -> std::sync::MutexGuard<'static, ()> {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Each phase starts from a reset peak (the next phase does not see a freed 128 MiB block),
    /// and the reset does not lose the earlier peak from the process's.
    #[test]
    fn phases_reset_the_peak_and_the_process_keeps_it() {
        let _turn = measuring();
        let meter = PhaseMeter::start(Device::Cpu);
        let block = vec![1u8; 128 << 20];
        std::hint::black_box(&block);
        drop(block);
        let first = meter.finish();
        let second = PhaseMeter::start(Device::Cpu).finish();
        if cfg!(target_os = "linux") {
            let (first, second) = (first.peak_rss_bytes.unwrap(), second.peak_rss_bytes.unwrap());
            assert!(first >= 128 << 20, "{first}");
            assert!(second + (96 << 20) < first, "the second phase saw the first's block: {second} vs {first}");
            assert!(process_peak_rss_bytes().unwrap() >= 128 << 20);
        }
    }

    /// A GPU-only check (`cargo test -- --ignored` on a CUDA machine): the phase's CUDA peak
    /// covers a 256 MiB tensor made inside it, and a new phase starts from a reset peak.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn the_cuda_peak_covers_what_a_phase_allocates() {
        let device = Device::Cuda(0);
        let meter = PhaseMeter::start(device);
        let block = tch::Tensor::zeros([64 << 20], (tch::Kind::Float, device));
        drop(block);
        let peak = meter.finish().cuda_peak_bytes.unwrap();
        assert!(peak >= 256 << 20, "{peak}");
        let again = PhaseMeter::start(device).finish().cuda_peak_bytes.unwrap();
        assert!(again < 256 << 20, "the peak was reset: {again}");
    }

    #[test]
    fn a_phase_sees_the_memory_it_touches() {
        let _turn = measuring();
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
