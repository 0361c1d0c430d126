//! Choosing the compute device: `cpu`, `cuda[:N]` or `metal[:N]`.
//!
//! The default build is CPU only; `cuda` and `metal` need the crate features of the same
//! name, and asking for one that was not compiled in is a clear error, not a silent CPU run.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

/// Why a device could not be chosen or opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The device name is none of `cpu`, `cuda[:N]` (or `gpu[:N]`), `metal[:N]`, or its
    /// ordinal is not a number. Holds the name as given.
    #[error("unknown device {0:?}: expected cpu, cuda, cuda:N, metal or metal:N")]
    Unknown(String),
    /// The device's back-end was not compiled in; holds the device and the crate feature
    /// it needs (`cuda` or `metal`).
    #[error("device {0} needs agff-lens built with `--features {1}`")]
    NotCompiled(DeviceChoice, &'static str),
    /// The back-end is compiled in but candle could not open the device (no such device,
    /// driver error).
    #[error("could not open device {0}: {1}")]
    Open(DeviceChoice, candle_core::Error),
    /// The back-end is compiled in but this machine cannot run it: a library it loads at
    /// run time (the CUDA driver's `libcuda.so.1`, cuBLAS, cuRAND) is missing or broken.
    /// Holds the device and what the loader said.
    #[error("device {0} is not usable on this machine: {1}")]
    Unusable(DeviceChoice, String),
}

/// A device named by the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The CPU (the default).
    #[default]
    Cpu,
    /// The CUDA GPU with this ordinal (needs the `cuda` feature).
    Cuda(usize),
    /// The Metal GPU with this ordinal (needs the `metal` feature).
    Metal(usize),
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceChoice::Metal(i) => write!(f, "metal:{i}"),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let (kind, ordinal) = match lower.split_once(':') {
            Some((kind, n)) => {
                let n = n.parse().map_err(|_| DeviceError::Unknown(s.to_string()))?;
                (kind, n)
            }
            None => (lower.as_str(), 0),
        };
        match kind {
            "cpu" if !lower.contains(':') => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(ordinal)),
            "metal" => Ok(DeviceChoice::Metal(ordinal)),
            _ => Err(DeviceError::Unknown(s.to_string())),
        }
    }
}

impl DeviceChoice {
    /// The weights dtype a model runs in on this device unless the user says otherwise:
    /// bf16 on CUDA (half the memory and the tensor cores' format, as Qwen3-VL-Embedding
    /// ships its weights), f32 on the CPU and on Metal.
    pub fn default_dtype(self) -> candle_core::DType {
        match self {
            DeviceChoice::Cuda(_) => candle_core::DType::BF16,
            DeviceChoice::Cpu | DeviceChoice::Metal(_) => candle_core::DType::F32,
        }
    }

    /// Opens the device, failing clearly when its back-end was not compiled in.
    pub fn open(self) -> Result<Device, DeviceError> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(i) => {
                if !cfg!(feature = "cuda") {
                    return Err(DeviceError::NotCompiled(self, "cuda"));
                }
                // cudarc loads the CUDA libraries at run time and panics when one is
                // missing: turn that into an error, without the panic's message on stderr.
                let opened = quietly_catch(|| Device::new_cuda(i))
                    .map_err(|why| DeviceError::Unusable(self, why))?;
                opened.map_err(|e| DeviceError::Open(self, e))
            }
            DeviceChoice::Metal(i) => {
                if !cfg!(feature = "metal") {
                    return Err(DeviceError::NotCompiled(self, "metal"));
                }
                Device::new_metal(i).map_err(|e| DeviceError::Open(self, e))
            }
        }
    }
}

/// Runs `f`, returning a panic's message as an error instead of unwinding; the panic hook
/// is silenced meanwhile (device opening happens once, before any worker thread runs
/// model code).
fn quietly_catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
            .unwrap_or_else(|| "the back-end panicked while opening the device".into())
    })
}

/// Every device this build can run on here: the CPU, then CUDA device 0 and Metal
/// device 0 when their features are compiled in and the device opens. The parity and core
/// tests run on each ([`crate::test_devices!`]).
pub fn available_devices() -> Vec<Device> {
    let mut out = vec![Device::Cpu];
    for choice in [DeviceChoice::Cuda(0), DeviceChoice::Metal(0)] {
        if let Ok(device) = choice.open() {
            out.push(device);
        }
    }
    out
}

/// Runs a block once per device of [`available_devices`], with the device bound to the
/// given name: `test_devices!(dev => { ... })`. A failure names the device.
#[macro_export]
macro_rules! test_devices {
    ($dev:ident => $body:block) => {
        for $dev in $crate::model::device::available_devices() {
            let name = format!("{:?}", $dev.location());
            let run = || $body;
            if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
                eprintln!("failed on device {name}");
                std::panic::resume_unwind(panic);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_while_opening_becomes_an_error() {
        let e = quietly_catch(|| -> u32 {
            panic!("Unable to dynamically load the \"cuda\" shared library")
        });
        assert!(e.unwrap_err().contains("cuda"));
        assert_eq!(quietly_catch(|| 7), Ok(7));
        // The hook is back: a later panic is still reported (and caught here).
        assert!(std::panic::catch_unwind(|| panic!("later")).is_err());
    }

    #[test]
    fn cuda_defaults_to_bf16_and_the_cpu_to_f32() {
        use candle_core::DType;
        assert_eq!(DeviceChoice::Cuda(1).default_dtype(), DType::BF16);
        assert_eq!(DeviceChoice::Cpu.default_dtype(), DType::F32);
        assert_eq!(DeviceChoice::Metal(0).default_dtype(), DType::F32);
    }

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "CUDA".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert_eq!(
            "cuda:3".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(3)
        );
        assert_eq!(
            "metal:1".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Metal(1)
        );
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert!("cpu:1".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn the_cpu_is_always_available_and_first() {
        let devices = available_devices();
        assert!(matches!(devices.first(), Some(Device::Cpu)));
        // Without a GPU back-end compiled in, the CPU is all there is.
        if !cfg!(any(feature = "cuda", feature = "metal")) {
            assert_eq!(devices.len(), 1);
        }
    }

    #[test]
    fn uncompiled_backend_is_a_clear_error() {
        if cfg!(feature = "cuda") {
            return;
        }
        let err = DeviceChoice::Cuda(0).open().unwrap_err();
        assert!(err.to_string().contains("--features cuda"), "{err}");
    }
}
