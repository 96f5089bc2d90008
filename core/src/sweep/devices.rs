//! Which device each of a local sweep's concurrent cells runs on (`--devices`, `--jobs`,
//! `--per-device`): every GPU of a node busy, none shared by two cells unless asked. A sweep has
//! `jobs` worker slots; each slot is pinned to one device for the whole sweep, and its cells run
//! there with their share of the CPU cores. On a machine without GPUs, `--devices cpu` splits
//! the cores among the jobs instead.
//!
//! Pure functions of the device list and counts, so they are tested without a GPU.

use serde::Serialize;

use crate::error::{Error, Result};

/// One worker slot: the device its cells run on and their libtorch threads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Slot {
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Intra-op threads of each cell (`OMP_NUM_THREADS`).
    pub threads: usize,
}

/// The CPU cores this process may use (at least 1): what the jobs of a sweep share.
pub fn machine_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The devices of `--devices`: `cpu`, `all` (every GPU of `gpus`, or the CPU without any), or a
/// comma-separated list such as `cuda:0,cuda:1` (each named once, each below `gpus`).
pub fn parse(spec: &str, gpus: usize) -> Result<Vec<String>> {
    let bad = |why: String| Error::Device(format!("--devices `{spec}`: {why}"));
    match spec.trim() {
        "cpu" => return Ok(vec!["cpu".into()]),
        "all" if gpus == 0 => return Ok(vec!["cpu".into()]),
        "all" => return Ok((0..gpus).map(|i| format!("cuda:{i}")).collect()),
        _ => {}
    }
    let mut devices: Vec<String> = Vec::new();
    for part in spec.split(',').map(str::trim) {
        let index = part
            .strip_prefix("cuda:")
            .and_then(|i| i.parse::<usize>().ok())
            .ok_or_else(|| bad(format!("`{part}` is not cpu, all or cuda:N")))?;
        if index >= gpus {
            return Err(bad(format!("`{part}`: this machine has {gpus} CUDA device(s)")));
        }
        if devices.iter().any(|d| d == part) {
            return Err(bad(format!("`{part}` is listed twice (use --per-device to share a GPU)")));
        }
        devices.push(part.to_string());
    }
    Ok(devices)
}

/// The slots of `jobs` concurrent cells on `devices`, at most `per_device` cells on one GPU at
/// once; GPUs are dealt round-robin, so `--jobs 2` on two GPUs uses both. The CPU is one device
/// whatever the jobs: its `cores` are split among them (at least one thread each).
pub fn slots(devices: &[String], jobs: usize, per_device: usize, cores: usize) -> Result<Vec<Slot>> {
    let jobs = jobs.max(1);
    let threads = (cores / jobs).max(1);
    if devices.iter().any(|d| d == "cpu") {
        if devices.len() > 1 {
            return Err(Error::Device("--devices: `cpu` cannot be mixed with GPUs".into()));
        }
        return Ok(vec![Slot { device: "cpu".into(), threads }; jobs]);
    }
    let room = devices.len() * per_device.max(1);
    if jobs > room {
        return Err(Error::Device(format!(
            "--jobs {jobs} needs {jobs} device slots but {} GPU(s) × --per-device {} give {room}",
            devices.len(),
            per_device.max(1)
        )));
    }
    Ok((0..jobs).map(|i| Slot { device: devices[i % devices.len()].clone(), threads }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(slots: &[Slot]) -> Vec<&str> {
        slots.iter().map(|s| s.device.as_str()).collect()
    }

    #[test]
    fn gpus_are_dealt_round_robin_and_shared_only_when_asked() {
        let two = parse("cuda:0,cuda:1", 2).unwrap();
        assert_eq!(names(&slots(&two, 4, 2, 8).unwrap()), ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]);
        assert_eq!(names(&slots(&two, 2, 1, 8).unwrap()), ["cuda:0", "cuda:1"]);
        assert_eq!(slots(&two, 2, 1, 8).unwrap()[0].threads, 4);
        let err = slots(&two, 3, 1, 8).unwrap_err().to_string();
        assert!(err.contains("--jobs 3") && err.contains("--per-device 1 give 2"), "{err}");
        assert_eq!(parse("all", 3).unwrap(), ["cuda:0", "cuda:1", "cuda:2"]);
    }

    #[test]
    fn the_cpu_splits_its_cores() {
        let cpu = parse("cpu", 0).unwrap();
        let four = slots(&cpu, 4, 1, 8).unwrap();
        assert_eq!((four.len(), four[0].threads, four[3].device.as_str()), (4, 2, "cpu"));
        assert_eq!(slots(&cpu, 3, 1, 2).unwrap()[0].threads, 1, "at least one thread each");
        assert_eq!(parse("all", 0).unwrap(), ["cpu"], "no GPU: all is the CPU");
    }

    #[test]
    fn bad_device_lists_are_named() {
        for (spec, why) in [("cuda:2", "has 2 CUDA"), ("cuda:0,cuda:0", "listed twice"), ("gpu0", "not cpu, all")] {
            let err = parse(spec, 2).unwrap_err().to_string();
            assert!(err.contains(why), "{spec}: {err}");
        }
        assert!(slots(&["cpu".into(), "cuda:0".into()], 2, 1, 4).is_err());
    }
}
