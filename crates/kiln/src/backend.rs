//! Backend selection at the edge of a program.
//!
//! Library code is generic over `B: Backend`; a binary picks a [`DeviceKind`] (e.g. from a
//! `--device cpu|wgpu|cuda` flag) and hands a [`BackendJob`] to [`run_on`], which
//! instantiates the job for the matching backend type. Adding a backend is one feature, one
//! alias and one match arm here.
//!
//! The CPU default is Flex (burn's default features: SIMD + rayon): on the 2-core development
//! machine it ran MiniLM forward+backward 8–11% faster than NdArray+SIMD with ~10% less
//! memory, forward alike, and square matmul 1.3–2.5× faster (`docs/backends.md`).

use burn::tensor::backend::AutodiffBackend;

/// The default CPU backend: Flex (`flex` feature, the default).
#[cfg(feature = "flex")]
pub type Cpu = burn::backend::Flex;
/// The CPU backend when only `ndarray` is enabled.
#[cfg(all(feature = "ndarray", not(feature = "flex")))]
pub type Cpu = burn::backend::NdArray;

/// Name of the default CPU backend.
#[cfg(feature = "flex")]
pub const CPU_NAME: &str = "flex";
/// Name of the default CPU backend.
#[cfg(all(feature = "ndarray", not(feature = "flex")))]
pub const CPU_NAME: &str = "ndarray";

/// Flex, burn's portable CPU backend (`flex` feature).
#[cfg(feature = "flex")]
pub type Flex = burn::backend::Flex;
/// NdArray (`ndarray` feature).
#[cfg(feature = "ndarray")]
pub type NdArray = burn::backend::NdArray;
/// WGPU (Vulkan/Metal/DX12; `wgpu` feature).
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::Wgpu;
/// CUDA through CubeCL, kernels compiled with NVRTC at run time (`cuda` feature).
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;

/// Which device family to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceKind {
    /// The default CPU backend ([`Cpu`]).
    #[default]
    Cpu,
    /// Flex explicitly (needs the `flex` feature).
    Flex,
    /// NdArray explicitly (needs the `ndarray` feature).
    NdArray,
    /// WGPU (needs the `wgpu` feature).
    Wgpu,
    /// CUDA (needs the `cuda` feature).
    Cuda,
}

impl std::str::FromStr for DeviceKind {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "flex" => Ok(Self::Flex),
            "ndarray" => Ok(Self::NdArray),
            "wgpu" | "gpu" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda),
            other => Err(BackendError::Unknown(other.to_string())),
        }
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Flex => "flex",
            Self::NdArray => "ndarray",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        })
    }
}

/// Errors of backend selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendError {
    /// The name is not a device kind.
    Unknown(String),
    /// The backend exists but this binary was built without its feature.
    NotCompiled(DeviceKind, &'static str),
    /// The backend is compiled in but its device could not be started (no driver, no adapter).
    Unavailable(DeviceKind, String),
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unknown(s) => {
                write!(f, "unknown device {s:?} (expected cpu, flex, ndarray, wgpu or cuda)")
            }
            Self::Unavailable(kind, why) => write!(f, "device {kind} could not be started: {why}"),
            Self::NotCompiled(kind, feature) => {
                write!(f, "device {kind} needs kiln built with `--features {feature}`")
            }
        }
    }
}

impl std::error::Error for BackendError {}

/// Work that can run on any autodiff backend. Implement it once; [`run_on`] picks the type.
pub trait BackendJob {
    /// What the job returns.
    type Output;
    /// Runs on backend `B` (an autodiff decorator over the chosen backend) and `device`.
    fn run<B: AutodiffBackend>(self, device: B::Device, kind: DeviceKind) -> Self::Output;
}

/// Runs `job` on the backend named by `kind`.
///
/// ```
/// use burn::prelude::*;
/// use burn::tensor::backend::AutodiffBackend;
/// use kiln::backend::{run_on, BackendJob, DeviceKind};
///
/// /// Generic code, instantiated for whichever backend the user picked.
/// struct SumOfSquares(Vec<f32>);
/// impl BackendJob for SumOfSquares {
///     type Output = f32;
///     fn run<B: AutodiffBackend>(self, device: B::Device, _: DeviceKind) -> f32 {
///         let x = Tensor::<B, 1>::from_floats(self.0.as_slice(), &device);
///         x.powi_scalar(2).sum().into_scalar().elem()
///     }
/// }
/// let kind: DeviceKind = "cpu".parse()?;
/// assert_eq!(run_on(kind, SumOfSquares(vec![1.0, 2.0, 3.0]))?, 14.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// Starts a GPU backend's default device with one tiny operation. Their runtimes report a
/// missing driver or adapter by panicking (cudarc, on a device thread, when `libcuda.so` is not
/// found), so the probe turns that panic into [`BackendError::Unavailable`] before any work
/// starts.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn probe<B: burn::tensor::backend::Backend>(kind: DeviceKind) -> Result<(), BackendError> {
    catch_device_panic(kind, || {
        let device = Default::default();
        drop(burn::tensor::Tensor::<B, 1>::zeros([1], &device).into_data());
    })
}

/// Runs `start`; a panic on any thread meanwhile becomes [`BackendError::Unavailable`] with
/// the first panic's message (the default hook is silenced meanwhile and restored after).
pub fn catch_device_panic(kind: DeviceKind, start: impl FnOnce()) -> Result<(), BackendError> {
    use std::sync::{Arc, Mutex};
    let first: Arc<Mutex<Option<String>>> = Arc::default();
    let seen = first.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        seen.lock().map(|mut m| m.get_or_insert(message).clone()).ok();
    }));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(start));
    std::panic::set_hook(previous);
    outcome.map_err(|_| {
        let why = first.lock().ok().and_then(|m| m.clone()).unwrap_or_default();
        BackendError::Unavailable(kind, why)
    })
}

/// [`BackendError::NotCompiled`] when the backend's feature is off.
#[allow(unreachable_code, unused_variables)]
pub fn run_on<J: BackendJob>(kind: DeviceKind, job: J) -> Result<J::Output, BackendError> {
    use burn::backend::Autodiff;
    match kind {
        DeviceKind::Cpu => {
            #[cfg(any(feature = "ndarray", feature = "flex"))]
            return Ok(job.run::<Autodiff<Cpu>>(Default::default(), kind));
            Err(BackendError::NotCompiled(kind, "flex"))
        }
        DeviceKind::Flex => {
            #[cfg(feature = "flex")]
            return Ok(job.run::<Autodiff<Flex>>(Default::default(), kind));
            Err(BackendError::NotCompiled(kind, "flex"))
        }
        DeviceKind::NdArray => {
            #[cfg(feature = "ndarray")]
            return Ok(job.run::<Autodiff<NdArray>>(Default::default(), kind));
            Err(BackendError::NotCompiled(kind, "ndarray"))
        }
        DeviceKind::Wgpu => {
            #[cfg(feature = "wgpu")]
            {
                probe::<Wgpu>(kind)?;
                return Ok(job.run::<Autodiff<Wgpu>>(Default::default(), kind));
            }
            Err(BackendError::NotCompiled(kind, "wgpu"))
        }
        DeviceKind::Cuda => {
            #[cfg(feature = "cuda")]
            {
                probe::<Cuda>(kind)?;
                return Ok(job.run::<Autodiff<Cuda>>(Default::default(), kind));
            }
            Err(BackendError::NotCompiled(kind, "cuda"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_that_panics_while_starting_is_a_typed_error_with_the_first_message() {
        // As cudarc does without libcuda.so: a device thread panics, then the caller's
        // channel read fails.
        let err = catch_device_panic(DeviceKind::Cuda, || {
            let worker = std::thread::spawn(|| panic!("Unable to dynamically load the \"cuda\" shared library"));
            assert!(worker.join().is_ok(), "RecvError");
        })
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("device cuda could not be started: Unable to dynamically load"),
            "{text}"
        );
        assert!(catch_device_panic(DeviceKind::Cuda, || {}).is_ok());
        // The previous hook is back: a later panic is still caught by catch_unwind as usual.
        assert!(std::panic::catch_unwind(|| panic!("after")).is_err());
    }
}
