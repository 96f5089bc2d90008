//! The few libtorch calls tch 0.26 does not expose, through a small C++ file (`csrc/ext.cpp`)
//! compiled against the same libtorch:
//!
//! - autocast in a chosen dtype on any device: `tch::autocast` only toggles CUDA autocast in its
//!   default fp16, so bf16, and autocast on CPU, need `at::autocast::set_autocast_dtype`;
//! - PyTorch's fused AdamW kernel (`torch.optim.AdamW(fused=True)`): tch has no foreach or
//!   fused optimizer ops, and a per-tensor update costs a dozen passes over every weight;
//! - the CUDA caching allocator's peak allocated bytes (`torch.cuda.max_memory_allocated`),
//!   the memory a GPU run really needs, which the process's RSS does not show;
//! - activation checkpointing (`torch.utils.checkpoint`): a custom autograd function, which
//!   tch cannot define, that recomputes a block in the backward pass instead of keeping its
//!   activations;
//! - the CPU kernel set libtorch dispatches to (`torch.backends.cpu.get_cpu_capability()`),
//!   which decides the last bits of CPU results and so belongs in every run record.
//!
//! Each C++ call catches exceptions and reports them as an error string.

use std::ffi::{c_char, c_int, c_void, CStr};

use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn ftlab_autocast_state(
        device_type: c_int,
        enabled: *mut bool,
        dtype: *mut c_int,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn ftlab_autocast_set(
        device_type: c_int,
        enabled: bool,
        dtype: c_int,
        entering: bool,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn ftlab_cuda_allocated(device: c_int, current: *mut i64, peak: *mut i64, err: *mut c_char, len: usize) -> c_int;
    fn ftlab_fused_adamw(
        params: *const *const C_tensor,
        grads: *const *const C_tensor,
        exp_avgs: *const *const C_tensor,
        exp_avg_sqs: *const *const C_tensor,
        n: usize,
        step: *const C_tensor,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn ftlab_cuda_reset_peak(device: c_int, err: *mut c_char, len: usize) -> c_int;
    fn ftlab_checkpoint(
        input: *const C_tensor,
        extras: *const *const C_tensor,
        n_extras: usize,
        closure: *mut c_void,
        run: BlockFn,
        drop: DropFn,
        output: *mut *mut C_tensor,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn ftlab_cpu_capability(out: *mut c_char, out_len: usize, err: *mut c_char, len: usize) -> c_int;
}

/// A libtorch error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchError(pub String);

impl std::fmt::Display for TorchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TorchError {}

/// Calls `f` with an error buffer; a non-zero status becomes the buffer's message.
fn checked(f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), TorchError> {
    let mut buffer = [0 as c_char; 1024];
    if f(buffer.as_mut_ptr(), buffer.len()) == 0 {
        return Ok(());
    }
    // SAFETY: the C++ side always NUL-terminates within the buffer on failure.
    let message = unsafe { CStr::from_ptr(buffer.as_ptr()) }.to_string_lossy().into_owned();
    Err(TorchError(message))
}

/// c10::DeviceType of a tch device (CPU = 0, CUDA = 1, MPS = 13, Vulkan = 10).
fn device_type(device: Device) -> c_int {
    match device {
        Device::Cpu => 0,
        Device::Cuda(_) => 1,
        Device::Mps => 13,
        Device::Vulkan => 10,
    }
}

/// c10::ScalarType codes of the float kinds autocast deals in.
const SCALAR_TYPES: [(Kind, c_int); 4] = [(Kind::Half, 5), (Kind::Float, 6), (Kind::Double, 7), (Kind::BFloat16, 15)];

fn scalar_type(kind: Kind) -> Result<c_int, TorchError> {
    (SCALAR_TYPES.iter().find(|(k, _)| *k == kind).map(|(_, code)| *code))
        .ok_or_else(|| TorchError(format!("autocast computes in a float dtype, not {kind:?}")))
}

/// Runs `f` with autocast on for `device`'s type, computing eligible ops (matmuls, linear
/// layers) in `dtype` (`Kind::BFloat16` or `Kind::Half`) while weights stay in their own dtype,
/// as `with torch.autocast(device_type, dtype):` does. The previous state is restored after `f`,
/// also when it panics.
pub fn autocast<T>(device: Device, dtype: Kind, f: impl FnOnce() -> T) -> Result<T, TorchError> {
    let (device, dtype) = (device_type(device), scalar_type(dtype)?);
    let (mut enabled, mut previous) = (false, 0);
    checked(|err, len| unsafe { ftlab_autocast_state(device, &mut enabled, &mut previous, err, len) })?;
    checked(|err, len| unsafe { ftlab_autocast_set(device, true, dtype, true, err, len) })?;
    /// Restores the state found on entry when dropped.
    struct Restore {
        device: c_int,
        enabled: bool,
        dtype: c_int,
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            // Restoring a state libtorch reported cannot fail; nothing useful to do if it did.
            let _ = checked(|err, len| unsafe {
                ftlab_autocast_set(self.device, self.enabled, self.dtype, false, err, len)
            });
        }
    }
    let _restore = Restore { device, enabled, dtype: previous };
    Ok(f())
}

/// Whether autocast is on for `device`'s type, and its dtype.
pub fn autocast_state(device: Device) -> Result<(bool, Kind), TorchError> {
    let (mut enabled, mut dtype) = (false, 0);
    checked(|err, len| unsafe { ftlab_autocast_state(device_type(device), &mut enabled, &mut dtype, err, len) })?;
    let kind = (SCALAR_TYPES.iter().find(|(_, code)| *code == dtype).map(|(k, _)| *k))
        .ok_or_else(|| TorchError(format!("autocast reports an unexpected dtype code {dtype}")))?;
    Ok((enabled, kind))
}

/// AdamW's hyperparameters for one fused update.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f64,
    /// β₁, β₂.
    pub betas: (f64, f64),
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// ε.
    pub eps: f64,
}

/// One AdamW update of `params` in place with PyTorch's fused kernel, given their gradients
/// and both moments (updated in place too) and `step`, the step count after this update as a
/// float scalar tensor on the parameters' device. Bias correction, decoupled decay and ε are
/// `torch.optim.AdamW`'s.
pub fn fused_adamw(
    params: &[&Tensor],
    grads: &[&Tensor],
    exp_avgs: &[&Tensor],
    exp_avg_sqs: &[&Tensor],
    step: &Tensor,
    hyper: AdamWStep,
) -> Result<(), TorchError> {
    let n = params.len();
    if [grads.len(), exp_avgs.len(), exp_avg_sqs.len()] != [n; 3] {
        return Err(TorchError(format!(
            "fused AdamW: {n} parameters but {} gradients, {} and {} moments",
            grads.len(),
            exp_avgs.len(),
            exp_avg_sqs.len()
        )));
    }
    let pointers = |tensors: &[&Tensor]| tensors.iter().map(|t| t.as_ptr()).collect::<Vec<_>>();
    let (p, g, m, v) = (pointers(params), pointers(grads), pointers(exp_avgs), pointers(exp_avg_sqs));
    let (b1, b2) = hyper.betas;
    // SAFETY: every pointer is a live tch tensor borrowed for the duration of the call; the C++
    // side reads `n` of each and copies the handles.
    checked(|err, len| unsafe {
        ftlab_fused_adamw(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            n,
            step.as_ptr(),
            hyper.lr,
            b1,
            b2,
            hyper.weight_decay,
            hyper.eps,
            err,
            len,
        )
    })
}

/// A block checkpointed by [`checkpoint`]: its output from its input and the further tensors
/// it reads whose gradients the graph needs (e.g. keys/values of a prompt), or an error message.
pub type Block<'a> = Box<dyn Fn(&Tensor, &[Tensor]) -> Result<Tensor, String> + 'a>;

type BlockFn = unsafe extern "C" fn(
    *mut c_void,
    *const C_tensor,
    *const *const C_tensor,
    usize,
    *mut *mut C_tensor,
    *mut c_char,
    usize,
) -> c_int;
type DropFn = unsafe extern "C" fn(*mut c_void);

/// Runs the boxed [`Block`] at `closure` on `input` and `extras` for the C++ side: a new tensor
/// in `*output`, or 1 and the error (or panic) message in `err`.
unsafe extern "C" fn run_block(
    closure: *mut c_void,
    input: *const C_tensor,
    extras: *const *const C_tensor,
    n_extras: usize,
    output: *mut *mut C_tensor,
    err: *mut c_char,
    len: usize,
) -> c_int {
    // SAFETY: `closure` is the `Box<Block>` leaked by `checkpoint`, alive until `drop_block`;
    // `input` and the `n_extras` pointers at `extras` are live tensors lent for this call
    // (shallow-cloned, not freed here).
    let (block, input, extras) = unsafe {
        let extras = (0..n_extras).map(|i| Tensor::clone_from_ptr(*extras.add(i) as *mut C_tensor)).collect::<Vec<_>>();
        (&*(closure as *const Block), Tensor::clone_from_ptr(input as *mut C_tensor), extras)
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| block(&input, &extras)))
        .unwrap_or_else(|panic| Err(panic.downcast_ref::<String>().cloned().unwrap_or_else(|| "a panic".into())));
    match result {
        Ok(mut tensor) => {
            // SAFETY: hands the handle to the C++ side, which takes ownership of it.
            unsafe { *output = tensor.as_mut_ptr() };
            std::mem::forget(tensor);
            0
        }
        Err(message) => {
            let bytes = message.into_bytes();
            let n = bytes.len().min(len.saturating_sub(1));
            // SAFETY: `err` holds `len` bytes; at most `len - 1` are written, then the NUL.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, err, n);
                *err.add(n) = 0;
            }
            1
        }
    }
}

unsafe extern "C" fn drop_block(closure: *mut c_void) {
    // SAFETY: called once, by the C++ side, when nothing will run the block again.
    drop(unsafe { Box::from_raw(closure as *mut Block) });
}

/// `block(input, extras)` with activation checkpointing, as `torch.utils.checkpoint`
/// (reentrant): the autograd graph keeps only `input` and `extras`, and the backward pass runs
/// `block` again — with the random generator and autocast state of this call, so dropout masks
/// and dtypes repeat — and back-propagates through it, accumulating the gradients of the
/// parameters it uses and passing those of `input` and `extras` on to the graphs they came
/// from. Activation memory falls from every block's intermediates to their inputs, for one
/// more forward pass. The output requires grad only if an input does.
///
/// # Safety
/// The graph of the returned tensor calls `block` when it is back-propagated, which must
/// happen while whatever `block` borrows is alive: back-propagate it (or drop it) within `'a`.
pub unsafe fn checkpoint<'a>(input: &Tensor, extras: &[Tensor], block: Block<'a>) -> Result<Tensor, TorchError> {
    // SAFETY (lifetime): erased for the C++ side; the caller keeps the borrows alive (above).
    let block: Block<'static> = unsafe { std::mem::transmute::<Block<'a>, Block<'static>>(block) };
    let closure = Box::into_raw(Box::new(block)) as *mut c_void;
    let mut output: *mut C_tensor = std::ptr::null_mut();
    let extras: Vec<*const C_tensor> = extras.iter().map(|t| t.as_ptr()).collect();
    // SAFETY: `input` and `extras` are lent for the call; the C++ side owns `closure` from here on (it calls
    // `drop_block` exactly once) and returns a new handle in `output` on success.
    checked(|err, len| unsafe {
        ftlab_checkpoint(
            input.as_ptr(),
            extras.as_ptr(),
            extras.len(),
            closure,
            run_block,
            drop_block,
            &mut output,
            err,
            len,
        )
    })?;
    // SAFETY: a new, owned tensor handle from the C++ side.
    Ok(unsafe { Tensor::from_ptr(output) })
}

/// The CUDA caching allocator's `(current, peak)` allocated bytes on GPU `index`. An error when
/// libtorch's CUDA part is not loaded (no GPU).
pub fn cuda_allocated_bytes(index: usize) -> Result<(u64, u64), TorchError> {
    let (mut current, mut peak) = (0i64, 0i64);
    checked(|err, len| unsafe { ftlab_cuda_allocated(index as c_int, &mut current, &mut peak, err, len) })?;
    Ok((current.max(0) as u64, peak.max(0) as u64))
}

/// Starts a new peak on GPU `index` (`torch.cuda.reset_peak_memory_stats`).
pub fn reset_cuda_peak(index: usize) -> Result<(), TorchError> {
    checked(|err, len| unsafe { ftlab_cuda_reset_peak(index as c_int, err, len) })
}

/// The CPU kernel set libtorch's dispatcher uses: `DEFAULT`, `AVX2` or `AVX512` on x86 (chosen
/// from the CPU, capped by `ATEN_CPU_CAPABILITY`), as `torch.backends.cpu.get_cpu_capability()`.
pub fn cpu_capability() -> Result<String, TorchError> {
    let mut out = [0 as c_char; 64];
    checked(|err, len| unsafe { ftlab_cpu_capability(out.as_mut_ptr(), out.len(), err, len) })?;
    // SAFETY: on success the C++ side NUL-terminated `out` within its length.
    Ok(unsafe { CStr::from_ptr(out.as_ptr()) }.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    /// libtorch's default generator is one per process: tests that draw from it take turns.
    static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn cpu_autocast_computes_matmuls_in_bf16_and_restores_the_state() {
        let _turn = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
        let (a, b) = (Tensor::randn([4, 8], tch::kind::FLOAT_CPU), Tensor::randn([8, 3], tch::kind::FLOAT_CPU));
        let before = autocast_state(Device::Cpu).unwrap();
        let inside = autocast(Device::Cpu, Kind::BFloat16, || {
            assert_eq!(autocast_state(Device::Cpu).unwrap(), (true, Kind::BFloat16));
            a.matmul(&b)
        })
        .unwrap();
        assert_eq!(inside.kind(), Kind::BFloat16);
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
        assert_eq!(autocast_state(Device::Cpu).unwrap(), before);
        let error = (inside.to_kind(Kind::Float) - a.matmul(&b)).abs().max().double_value(&[]);
        assert!(error > 0.0 && error < 0.1, "bf16 rounding, not another result: {error}");
    }

    /// The fused update equals AdamW written out: m, v, bias correction, decoupled decay.
    #[test]
    fn fused_adamw_equals_the_update_written_out() {
        let param = Tensor::from_slice(&[1.0f32, -2.0, 0.5]);
        let grad = Tensor::from_slice(&[3.0f32, -0.5, 0.0]);
        let (m, v) = (Tensor::from_slice(&[0.1f32, 0.2, -0.3]), Tensor::from_slice(&[0.01f32, 0.04, 0.09]));
        let hyper = AdamWStep { lr: 0.01, betas: (0.9, 0.999), weight_decay: 0.1, eps: 1e-8 };
        let t = 3;
        let (c1, c2) = (1.0 - 0.9f64.powi(t), 1.0 - 0.999f64.powi(t));
        let m_new = &m * 0.9 + &grad * 0.1;
        let v_new = &v * 0.999 + grad.square() * 0.001;
        let expected = &param * (1.0 - 0.01 * 0.1) - (&m_new / c1) / ((&v_new / c2).sqrt() + 1e-8) * 0.01;
        let step = Tensor::from(t as f32);
        fused_adamw(&[&param], &[&grad], &[&m], &[&v], &step, hyper).unwrap();
        assert!(param.allclose(&expected, 1e-6, 1e-7, false), "{param} vs {expected}");
        assert!(m.allclose(&m_new, 1e-6, 1e-7, false) && v.allclose(&v_new, 1e-6, 1e-9, false));
    }

    /// The capability follows ATEN_CPU_CAPABILITY (read once per process: the test runs the
    /// value it finds, and checks it is one libtorch names).
    #[test]
    fn the_cpu_capability_is_a_kernel_set_libtorch_names() {
        let capability = cpu_capability().unwrap();
        assert!(
            ["DEFAULT", "AVX2", "AVX512", "NO AVX", "ZVECTOR", "VSX", "SVE256"].contains(&capability.as_str()),
            "{capability}"
        );
        if let Ok(forced) = std::env::var("ATEN_CPU_CAPABILITY") {
            if cfg!(target_arch = "x86_64") && forced.eq_ignore_ascii_case("default") {
                assert!(["DEFAULT", "NO AVX"].contains(&capability.as_str()), "{capability}");
            }
        }
    }

    /// Checkpointed, a block with dropout gives the same output and the same gradients (of
    /// its input, of an extra input computed from a leaf, and of a parameter inside) as run
    /// plainly from the same random state, runs again in the backward pass, and leaves the
    /// random stream where the forward left it.
    #[test]
    fn a_checkpointed_block_gives_the_plain_gradients() {
        let _turn = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
        let weight = Tensor::randn([6, 6], tch::kind::FLOAT_CPU).set_requires_grad(true);
        let source = Tensor::randn([4, 6], tch::kind::FLOAT_CPU).set_requires_grad(true);
        let runs = std::cell::Cell::new(0);
        let block = |x: &Tensor, extras: &[Tensor]| -> Result<Tensor, String> {
            runs.set(runs.get() + 1);
            Ok((x.matmul(&weight).relu().dropout(0.5, true) * &extras[0]).tanh())
        };
        let x = Tensor::randn([4, 6], tch::kind::FLOAT_CPU).set_requires_grad(true);
        let grads = || [&x, &weight, &source].map(|t| t.grad().copy());
        tch::manual_seed(7);
        let plain = block(&x, &[source.exp()]).unwrap();
        plain.sum(Kind::Float).backward();
        let after_plain = Tensor::rand([3], tch::kind::FLOAT_CPU);
        let plain_grads = grads();
        for t in [&x, &weight, &source] {
            let _ = t.grad().zero_();
        }

        tch::manual_seed(7);
        // SAFETY: back-propagated below, while `weight` and `runs` live.
        let checkpointed = unsafe { checkpoint(&x, &[source.exp()], Box::new(block)) }.unwrap();
        assert!(checkpointed.equal(&plain), "the forward is the block's");
        checkpointed.sum(Kind::Float).backward();
        assert!(Tensor::rand([3], tch::kind::FLOAT_CPU).equal(&after_plain), "the random stream goes on as without");
        assert_eq!(runs.get(), 3, "once plainly, once checkpointed, once again in the backward pass");
        for (ours, plain) in grads().iter().zip(&plain_grads) {
            assert!(ours.equal(plain), "the same dropout mask, the same gradients");
        }

        let failing = |_: &Tensor, _: &[Tensor]| -> Result<Tensor, String> { Err("no".into()) };
        // SAFETY: nothing borrowed.
        let err = unsafe { checkpoint(&x, &[], Box::new(failing)) }.unwrap_err();
        assert!(err.0.contains("no"), "{err}");
    }

    #[test]
    fn cuda_statistics_without_cuda_are_an_error_not_a_crash() {
        if !tch::Cuda::is_available() {
            assert!(cuda_allocated_bytes(0).is_err());
        }
    }
}
