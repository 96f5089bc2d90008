//! Where tensors live and in which precision they are computed.
//!
//! The PyPI torch wheel ships CUDA and CPU kernels in separate libraries. The linker drops
//! `libtorch_cuda.so` from the binary because no symbol of it is referenced directly, so CUDA
//! would silently never be found; [`DeviceSpec::resolve`] loads it on demand instead, which
//! also keeps start-up on CPU-only machines free of the ~1 GB of CUDA libraries.

use std::fmt;
use std::str::FromStr;

use tch::{Device, Kind};

use crate::error::{Error, Result};

/// A device as a user names it: `auto` (CUDA if a GPU is usable, else CPU), `cpu`, `cuda`, `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The first CUDA device when one is usable, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device `N`.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| Error::Device(format!("unknown device `{s}`: use auto, cpu, cuda or cuda:N"))),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Turns the spec into a tch device, loading libtorch's CUDA kernels when a GPU may exist.
    pub fn resolve(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => Ok(if cuda_available() { Device::Cuda(0) } else { Device::Cpu }),
            Self::Cuda(n) if cuda_available() && n < tch::Cuda::device_count() as usize => Ok(Device::Cuda(n)),
            Self::Cuda(n) => Err(Error::Device(format!(
                "device cuda:{n} requested but {} CUDA device(s) are usable (no NVIDIA driver, or libtorch_cuda could not load)",
                if cuda_available() { tch::Cuda::device_count() } else { 0 }
            ))),
        }
    }
}

/// The device a run computes on, or several (`cuda:0,cuda:1`) over which one model's decoder
/// layers are spread ([`crate::model::Model::spread`]) when its weights exceed one GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceList(pub Vec<DeviceSpec>);

impl Default for DeviceList {
    fn default() -> Self {
        Self(vec![DeviceSpec::Auto])
    }
}

impl FromStr for DeviceList {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let devices = s.split(',').map(|d| d.trim().parse()).collect::<Result<Vec<DeviceSpec>>>()?;
        Ok(Self(devices))
    }
}

impl fmt::Display for DeviceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "{}", names.join(","))
    }
}

impl From<DeviceSpec> for DeviceList {
    fn from(device: DeviceSpec) -> Self {
        Self(vec![device])
    }
}

impl DeviceList {
    /// Every device, resolved; the first holds the embeddings and LM head.
    pub fn resolve(&self) -> Result<Vec<Device>> {
        self.0.iter().map(|d| d.resolve()).collect()
    }
}

/// Whether a CUDA device is usable, loading `libtorch_cuda.so` once if an NVIDIA driver is present.
pub fn cuda_available() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        // Without the kernel driver no GPU can be used: skip loading the CUDA libraries.
        if !std::path::Path::new("/proc/driver/nvidia").exists() {
            return false;
        }
        load_torch_cuda() && tch::Cuda::is_available()
    })
}

#[cfg(unix)]
fn load_torch_cuda() -> bool {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: libtorch_cuda's initialisers only register CUDA kernels with the already-loaded
    // libtorch_cpu. The library is never unloaded (it must outlive every tensor), so it is leaked.
    // The dlopen call comes from this binary, whose RUNPATH points at the project's libtorch.
    match unsafe { Library::open(Some("libtorch_cuda.so"), RTLD_NOW | RTLD_GLOBAL) } {
        Ok(lib) => {
            std::mem::forget(lib);
            true
        }
        Err(e) => {
            tracing::warn!("an NVIDIA driver is present but libtorch_cuda.so did not load: {e}");
            false
        }
    }
}

#[cfg(not(unix))]
fn load_torch_cuda() -> bool {
    tch::Cuda::is_available()
}

/// What decides the last bits of a run's numbers besides its settings: the device, the CPU
/// kernel set libtorch dispatched to, and the thread count. The same run on an AVX2 and an
/// AVX-512 machine, or on one thread and two, rounds differently, so two records whose
/// results differ in the last digits can be told apart by this.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Platform {
    /// The device the run computed on (`cpu`, `cuda:0`; `cuda:0,cuda:1` for a spread model).
    pub device: String,
    /// libtorch's CPU kernel set (`DEFAULT`, `AVX2`, `AVX512`; see
    /// `torch.backends.cpu.get_cpu_capability()`), capped by `ATEN_CPU_CAPABILITY`.
    pub cpu_capability: String,
    /// libtorch's intra-op threads (`torch.get_num_threads()`; `OMP_NUM_THREADS` sets it).
    pub threads: usize,
    /// The host CPU's model name (`/proc/cpuinfo`), or the architecture where it is unknown.
    #[serde(default)]
    pub cpu_model: String,
    /// The libtorch version linked.
    #[serde(default)]
    pub libtorch: String,
}

impl Platform {
    /// The platform a computation on `devices` (one, or those a model is spread over) runs on
    /// in this process, now.
    pub fn of(devices: &[Device]) -> Result<Self> {
        let name = |device: &Device| match device {
            Device::Cuda(n) => format!("cuda:{n}"),
            other => format!("{other:?}").to_lowercase(),
        };
        let device = devices.iter().map(name).collect::<Vec<_>>().join(",");
        let cpu_capability =
            ftlab_torch_ext::cpu_capability().map_err(|e| Error::Device(format!("libtorch's CPU capability: {e}")))?;
        Ok(Self {
            device,
            cpu_capability,
            threads: tch::get_num_threads().max(1) as usize,
            cpu_model: cpu_model(),
            libtorch: ftlab_sdk::abi::this_abi().libtorch_version.to_string(),
        })
    }
}

/// The CPU's model name as the OS reports it.
fn cpu_model() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| l.strip_prefix("model name").and_then(|rest| rest.split_once(':')));
    model.map(|(_, name)| name.trim().to_string()).unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Serde through the names users write (`cuda:1`, `bf16`), so a run config holds typed values
/// and a bad name fails when the config is read, naming the key, before any run starts.
macro_rules! serde_by_name {
    ($type:ty) => {
        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
                let name = String::deserialize(deserializer)?;
                name.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_by_name!(DeviceSpec);
serde_by_name!(DeviceList);
serde_by_name!(Dtype);

/// Mixed precision (`torch.autocast`): eligible ops — matmuls and linear layers — compute in
/// bf16 or fp16 while weights, optimizer state and reductions (softmax, layer norm, losses) stay
/// in the model's dtype. On CUDA it is the usual way to train fast in half precision; bf16 also
/// works on CPUs. fp16 training scales the loss (see `run::optim::LossScaler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Autocast {
    /// Everything in the model's dtype.
    #[default]
    None,
    /// bfloat16 (fp32's range: no loss scaling needed).
    Bf16,
    /// IEEE half precision (needs loss scaling in training).
    Fp16,
}

impl Autocast {
    /// Runs `f` under this autocast setting for `device`.
    pub fn run<T>(self, device: Device, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let kind = match self {
            Self::None => return f(),
            Self::Bf16 => Kind::BFloat16,
            Self::Fp16 => Kind::Half,
        };
        ftlab_torch_ext::autocast(device, kind, f).map_err(|e| Error::Device(format!("autocast {self:?}: {e}")))?
    }
}

/// Compute precision: fp32, bf16 or fp16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dtype {
    /// 32-bit float (default; what parity is measured in).
    #[default]
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    F16,
}

impl FromStr for Dtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fp32" | "f32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "fp16" | "f16" | "float16" | "half" => Ok(Self::F16),
            _ => Err(Error::Device(format!("unknown dtype `{s}`: use fp32, bf16 or fp16"))),
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "fp32",
            Self::Bf16 => "bf16",
            Self::F16 => "fp16",
        })
    }
}

impl Dtype {
    /// The tch kind.
    pub fn kind(self) -> Kind {
        match self {
            Self::F32 => Kind::Float,
            Self::Bf16 => Kind::BFloat16,
            Self::F16 => Kind::Half,
        }
    }

    /// The dtype of a tch kind (`None` for non-float kinds).
    pub fn of_kind(kind: Kind) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.kind() == kind)
    }

    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 | Self::F16 => 2,
        }
    }

    /// All dtypes, for memory tables.
    pub const ALL: [Dtype; 3] = [Dtype::F32, Dtype::Bf16, Dtype::F16];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        let err = "gpu".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(err.contains("`gpu`"), "{err}");
    }

    #[test]
    fn cpu_only_machine_resolves_auto_to_cpu() {
        if !std::path::Path::new("/proc/driver/nvidia").exists() {
            assert_eq!(DeviceSpec::Auto.resolve().unwrap(), Device::Cpu);
            assert!(DeviceSpec::Cuda(0).resolve().unwrap_err().to_string().contains("cuda:0"));
        }
    }

    #[test]
    fn parses_dtypes() {
        assert_eq!("bf16".parse::<Dtype>().unwrap().kind(), Kind::BFloat16);
        assert!("int8".parse::<Dtype>().is_err());
    }
}
