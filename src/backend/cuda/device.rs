//! [`CudaDevice`]: one GPU, opened once per process, with everything the backend keeps on it.
//!
//! Owns the CUDA context (the device's primary context), the one stream every operation is
//! queued on (so no event tracking is needed: cudarc's is switched off), the cuBLAS and cuDNN
//! handles bound to that stream, the caching allocator and the cache of JIT-loaded PTX
//! modules. Opening checks that every library can be loaded *before* touching cudarc (which
//! panics when a library is missing), and any leftover panic is caught: the result is always
//! an error that says why and suggests `--device cpu`.
//!
//! Devices are kept in a process-wide registry: `CudaDevice::new(0)` twice gives the same
//! device (same stream, same pool), so tensors made through different calls can be mixed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};

use super::allocator::{self, Block, MemoryStats, Pool, RawError, RawMemory};
use super::blas::Blas;
use super::cudnn::Dnn;
use super::error::{catch_panic, cuda_error, driver_message, is_driver_oom, CudaResultExt, IntoCudaError};
use super::graph::Capture;
use super::staging::{is_staged, Staging};
use super::storage::CudaStorage;
use crate::error::{Error, Result};

/// The cuBLAS workspace taken from the pool at start-up (NVIDIA's recommendation for Hopper).
const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// Locks a mutex, ignoring poisoning (a panic elsewhere never leaves these maps half-updated
/// in a way that matters).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The PTX modules loaded so far and the kernels looked up in them.
#[derive(Default)]
struct ModuleCache {
    modules: HashMap<&'static str, Arc<CudaModule>>,
    functions: HashMap<&'static str, CudaFunction>,
}

/// The state behind a [`CudaDevice`] handle. Fields drop in order: caches and handles before
/// the stream and the context.
pub(crate) struct Inner {
    ordinal: usize,
    name: String,
    compute_capability: (i32, i32),
    total_memory: usize,
    pub(super) pool: Mutex<Pool>,
    /// The graph capture in progress, if any (see [`super::graph`]).
    pub(super) capture: Mutex<Option<Capture>>,
    /// The pinned buffer of staged uploads (see [`super::staging`]).
    pub(super) staging: Mutex<Option<Staging>>,
    /// Work items queued on the stream so far (see [`CudaDevice::queued_calls`]).
    calls: std::sync::atomic::AtomicU64,
    modules: Mutex<ModuleCache>,
    blas: Mutex<Blas>,
    dnn: Mutex<Dnn>,
    blas_workspace: Mutex<Option<Block>>,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Every storage holds a handle, so none is alive now: return all memory.
        let mut pool = lock(&self.pool);
        if let Some(b) = lock(&self.blas_workspace).take() {
            pool.release(b);
        }
        let mut raw = Driver { ctx: &self.ctx, stream: &self.stream };
        pool.release_cached(&mut raw, usize::MAX);
    }
}

/// The driver calls behind the pool.
pub(crate) struct Driver<'a> {
    ctx: &'a Arc<CudaContext>,
    stream: &'a Arc<CudaStream>,
}

impl RawMemory for Driver<'_> {
    fn alloc(&mut self, bytes: usize) -> std::result::Result<u64, RawError> {
        self.ctx.bind_to_thread().map_err(|e| RawError::Other(e.into_cuda_error("bind context")))?;
        // SAFETY: a plain device allocation in the bound context.
        match unsafe { cudarc::driver::result::malloc_sync(bytes) } {
            Ok(p) => Ok(p),
            Err(e) if is_driver_oom(&e) => Err(RawError::OutOfMemory),
            Err(e) => Err(RawError::Other(e.into_cuda_error("cuMemAlloc"))),
        }
    }

    fn free(&mut self, blocks: &[Block]) {
        // Queued work may still read a cached block: wait for it before returning memory.
        let _ = self.ctx.bind_to_thread();
        let _ = self.stream.synchronize();
        for b in blocks {
            // SAFETY: the block came from malloc_sync and no storage refers to it any more.
            let _ = unsafe { cudarc::driver::result::free_sync(b.ptr) };
        }
    }
}

/// One CUDA GPU: a cheap, clonable handle.
#[derive(Clone)]
pub struct CudaDevice(pub(crate) Arc<Inner>);

fn registry() -> &'static Mutex<HashMap<usize, CudaDevice>> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, CudaDevice>>> = OnceLock::new();
    DEVICES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Whether a library can be loaded; a panic while trying counts as absent.
fn present(check: unsafe fn() -> bool) -> bool {
    // SAFETY: the checks only try to dlopen the library.
    std::panic::catch_unwind(|| unsafe { check() }).unwrap_or(false)
}

/// Checks the driver and the libraries, in the order a user would fix them.
pub(crate) fn check_libraries() -> Result<()> {
    if !present(cudarc::driver::sys::is_culib_present) {
        return Err(Error::CudaUnavailable("no CUDA driver found (libcuda.so.1); use --device cpu".into()));
    }
    let hint = "add its directory to LD_LIBRARY_PATH (for CUDA 13: /usr/local/cuda-13.0/targets/x86_64-linux/lib), or use --device cpu";
    if !present(cudarc::cublas::sys::is_culib_present) {
        return Err(Error::CudaUnavailable(format!("cuBLAS not found (libcublas.so.13); {hint}")));
    }
    if !present(cudarc::cublaslt::sys::is_culib_present) {
        return Err(Error::CudaUnavailable(format!("cuBLASLt not found (libcublasLt.so.13); {hint}")));
    }
    if !present(cudarc::cudnn::sys::is_culib_present) {
        return Err(Error::CudaUnavailable(
            "cuDNN not found (libcudnn.so.9); install cuDNN 9 or add its directory to LD_LIBRARY_PATH, or use --device cpu".into(),
        ));
    }
    Ok(())
}

/// The number of CUDA devices, once the driver is known to be present.
pub(crate) fn device_count() -> Result<usize> {
    cudarc::driver::result::init()
        .map_err(|e| Error::CudaUnavailable(format!("the CUDA driver could not start ({}); use --device cpu", driver_message(&e))))?;
    let n = cudarc::driver::result::device::get_count().ctx("cuDeviceGetCount")?;
    Ok(n.max(0) as usize)
}

impl CudaDevice {
    /// Opens CUDA device `ordinal` (or returns the already open one). Errors, never panics:
    /// [`Error::CudaUnavailable`] when the driver, cuBLAS or cuDNN is missing or there is no
    /// such device, [`Error::Cuda`] when the driver fails while setting up.
    pub fn new(ordinal: usize) -> Result<CudaDevice> {
        let mut reg = lock(registry());
        if let Some(d) = reg.get(&ordinal) {
            return Ok(d.clone());
        }
        check_libraries()?;
        let d = catch_panic("opening the CUDA device", || Self::open(ordinal))?;
        reg.insert(ordinal, d.clone());
        Ok(d)
    }

    fn open(ordinal: usize) -> Result<CudaDevice> {
        let count = device_count()?;
        if count == 0 {
            return Err(Error::CudaUnavailable("the CUDA driver reports no GPU; use --device cpu".into()));
        }
        if ordinal >= count {
            return Err(Error::CudaUnavailable(format!(
                "no CUDA device {ordinal}: {count} device(s) found (ordinals 0..{}); use another ordinal or --device cpu",
                count - 1
            )));
        }
        let ctx = CudaContext::new(ordinal).ctx("creating the CUDA context")?;
        // SAFETY: all work is queued on the one stream made below, so cudarc's per-buffer
        // events are not needed; no buffer exists yet.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().ctx("creating the CUDA stream")?;
        let name = ctx.name().ctx("cuDeviceGetName")?;
        let compute_capability = ctx.compute_capability().ctx("reading the compute capability")?;
        let total_memory = ctx.total_mem().ctx("cuDeviceTotalMem")?;
        let cap = allocator::default_cap(total_memory)?;
        let blas = Blas::new(stream.clone())?;
        let dnn = Dnn::new(&stream)?;
        let dev = CudaDevice(Arc::new(Inner {
            ordinal,
            name,
            compute_capability,
            total_memory,
            pool: Mutex::new(Pool::new(cap)),
            modules: Mutex::new(ModuleCache::default()),
            blas: Mutex::new(blas),
            dnn: Mutex::new(dnn),
            blas_workspace: Mutex::new(None),
            capture: Mutex::new(None),
            staging: Mutex::new(None),
            calls: std::sync::atomic::AtomicU64::new(0),
            stream,
            ctx,
        }));
        // Give cuBLAS a workspace from the pool, so that its memory is counted under the cap.
        let ws = dev.alloc_block(CUBLAS_WORKSPACE_BYTES)?;
        lock(&dev.0.blas).set_workspace(ws.ptr, ws.bytes)?;
        *lock(&dev.0.blas_workspace) = Some(ws);
        Ok(dev)
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> String {
        self.0.name.clone()
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.0.ordinal
    }

    /// Whether two handles refer to the same device (and so the same stream and pool).
    pub fn same_device(&self, o: &CudaDevice) -> bool {
        Arc::ptr_eq(&self.0, &o.0)
    }

    /// Waits until all queued work has finished; reports any asynchronous error.
    pub fn synchronize(&self) -> Result<()> {
        self.0.stream.synchronize().ctx("synchronize")
    }

    /// `(major, minor)`, e.g. `(9, 0)` for an H100 or H200.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.0.compute_capability
    }

    /// Total memory on the card, in bytes.
    pub fn total_memory(&self) -> usize {
        self.0.total_memory
    }

    /// The stream every operation is queued on. Launch kernels here, and nowhere else.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.0.stream
    }

    /// The CUDA context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.0.ctx
    }

    /// A block of at least `bytes` bytes from the pool (returned with [`CudaDevice::free_block`]).
    pub(crate) fn alloc_block(&self, bytes: usize) -> Result<Block> {
        let mut raw = Driver { ctx: &self.0.ctx, stream: &self.0.stream };
        lock(&self.0.pool).allocate(&mut raw, bytes)
    }

    /// Returns a block to the pool's cache.
    pub(crate) fn free_block(&self, block: Block) {
        lock(&self.0.pool).release(block);
    }

    /// The bytes of `len` f32, or the out-of-memory error a request that large gets.
    fn f32_bytes(&self, len: usize) -> Result<usize> {
        len.checked_mul(4).ok_or_else(|| {
            let stats = self.memory_stats();
            Error::OutOfMemory { requested: usize::MAX, cap: stats.cap_bytes, in_use: stats.current_bytes }
        })
    }

    /// An uninitialised buffer of `len` f32 from the capped caching allocator.
    pub fn alloc(&self, len: usize) -> Result<CudaStorage> {
        let bytes = self.f32_bytes(len)?;
        let block = self.alloc_block(bytes)?;
        Ok(CudaStorage::from_block(self.clone(), block, len))
    }

    /// A buffer of `len` f32 for a graph feed ([`super::allocator::Pool::allocate_feed`]).
    pub(crate) fn alloc_feed(&self, len: usize) -> Result<CudaStorage> {
        let bytes = self.f32_bytes(len)?;
        let mut raw = Driver { ctx: &self.0.ctx, stream: &self.0.stream };
        let block = lock(&self.0.pool).allocate_feed(&mut raw, bytes)?;
        Ok(CudaStorage::from_block(self.clone(), block, len))
    }

    /// A zero-filled buffer of `len` f32.
    pub fn zeros(&self, len: usize) -> Result<CudaStorage> {
        let mut s = self.alloc(len)?;
        if len > 0 {
            self.count_call();
            self.0.stream.memset_zeros(s.slice_mut()).ctx("memset zeros")?;
        }
        Ok(s)
    }

    /// A buffer holding a copy of `data`; mid-sized copies (a batch of images) go through the
    /// pinned staging buffer so that queuing them does not wait for the device
    /// ([`super::staging`]). Values that vary cannot be frozen into a graph, so this fails
    /// during a capture (ops use [`CudaDevice::upload_words`] with a feed kind instead).
    pub fn upload(&self, data: &[f32]) -> Result<CudaStorage> {
        self.refuse_capture("a copy of host values (Tensor::from_vec)")?;
        let mut s = self.alloc(data.len())?;
        if is_staged(data.len()) {
            self.upload_staged(data, &mut s)?;
        } else if !data.is_empty() {
            self.count_call();
            self.0.stream.memcpy_htod(data, s.slice_mut()).ctx("upload (host to device copy)")?;
        }
        Ok(s)
    }

    /// The kernel `entry`, from the PTX module that defines it (looked up with
    /// `kernels::module_for_entry`, JIT-compiled by the driver on first use, then cached).
    pub fn function(&self, entry: &'static str) -> Result<CudaFunction> {
        let mut cache = lock(&self.0.modules);
        if let Some(f) = cache.functions.get(entry) {
            return Ok(f.clone());
        }
        let (module_name, ptx) = super::kernels::module_for_entry(entry)
            .ok_or_else(|| cuda_error("loading a kernel", format!("no PTX module defines the kernel {entry:?}")))?;
        let module = match cache.modules.get(module_name) {
            Some(m) => m.clone(),
            None => {
                let m = self.load_ptx(module_name, ptx)?;
                cache.modules.insert(module_name, m.clone());
                m
            }
        };
        let f = module.load_function(entry).ctx(&format!("finding kernel {entry} in PTX module {module_name}"))?;
        cache.functions.insert(entry, f.clone());
        Ok(f)
    }

    /// JIT-loads one PTX module; on failure, the error carries the driver's JIT log.
    fn load_ptx(&self, module_name: &str, ptx: &'static str) -> Result<Arc<CudaModule>> {
        let _r = super::nvtx::range("load_ptx");
        if ptx.as_bytes().contains(&0) {
            return Err(cuda_error(format!("loading PTX module {module_name}"), "the PTX text contains a NUL byte"));
        }
        match self.0.ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx)) {
            Ok(m) => Ok(m),
            Err(e) => {
                let log = jit_error_log(ptx);
                let mut msg = driver_message(&e);
                if !log.is_empty() {
                    msg = format!("{msg}; JIT log: {log}");
                }
                Err(cuda_error(format!("loading PTX module {module_name}"), msg))
            }
        }
    }

    /// Work items the host has queued on the stream so far: kernel launches, cuBLAS and cuDNN
    /// calls, copies and fills, and graph launches (one each). The host's share of a training
    /// step's cost grows with it; a CUDA graph replaces most of them with one launch.
    pub fn queued_calls(&self) -> u64 {
        self.0.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts one work item queued on the stream ([`CudaDevice::queued_calls`]).
    pub(crate) fn count_call(&self) {
        self.0.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The allocator's counters.
    pub fn memory_stats(&self) -> MemoryStats {
        lock(&self.0.pool).stats()
    }

    /// Restarts the peak counter from the bytes in use now.
    pub fn reset_peak(&self) {
        lock(&self.0.pool).reset_peak();
    }

    /// Sets the cap on reserved device memory, in bytes.
    pub fn set_memory_cap(&self, bytes: usize) {
        lock(&self.0.pool).set_cap(bytes);
    }

    /// Returns every cached free block to the driver (waits for queued work first).
    pub fn empty_cache(&self) {
        let mut raw = Driver { ctx: &self.0.ctx, stream: &self.0.stream };
        lock(&self.0.pool).release_cached(&mut raw, usize::MAX);
    }

    /// Bytes a cuDNN workspace may take now: the room left under the cap, at most `limit`.
    pub(crate) fn workspace_budget(&self, limit: usize) -> usize {
        let s = self.memory_stats();
        s.cap_bytes.saturating_sub(s.current_bytes).min(limit)
    }

    /// Binds the context to the calling thread (raw cuBLAS, cuDNN and driver calls need it).
    pub(crate) fn bind(&self) -> Result<()> {
        self.0.ctx.bind_to_thread().ctx("binding the CUDA context to this thread")
    }

    /// The cuBLAS state, locked.
    pub(crate) fn blas(&self) -> MutexGuard<'_, Blas> {
        lock(&self.0.blas)
    }

    /// The cuDNN state, locked.
    pub(crate) fn dnn(&self) -> MutexGuard<'_, Dnn> {
        lock(&self.0.dnn)
    }
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice({}: {})", self.0.ordinal, self.0.name)
    }
}

/// Loads the PTX once more through `cuModuleLoadDataEx` to collect the JIT error log.
fn jit_error_log(ptx: &str) -> String {
    use cudarc::driver::sys;
    let Ok(src) = std::ffi::CString::new(ptx) else { return String::new() };
    let mut buf = vec![0u8; 16 * 1024];
    let mut options = [sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER, sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES];
    let mut values = [buf.as_mut_ptr() as *mut std::ffi::c_void, buf.len() as *mut std::ffi::c_void];
    let mut module: sys::CUmodule = std::ptr::null_mut();
    // SAFETY: the option values are a buffer and its size, as the driver API specifies; a
    // module loaded by accident is unloaded at once.
    unsafe {
        let r = sys::cuModuleLoadDataEx(
            &mut module,
            src.as_ptr() as *const std::ffi::c_void,
            options.len() as u32,
            options.as_mut_ptr(),
            values.as_mut_ptr(),
        );
        if r == sys::CUresult::CUDA_SUCCESS && !module.is_null() {
            let _ = sys::cuModuleUnload(module);
        }
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).trim().to_string()
}
