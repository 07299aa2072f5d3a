//! NVTX ranges for profiling with Nsight Systems and Nsight Compute, off unless asked for.
//!
//! [`range`] pushes a named range and pops it when the returned guard drops. It does nothing
//! (one relaxed atomic load) unless ranges are enabled, by `HYPERSEG_NVTX=1` in the environment
//! or by [`set_nvtx`], and an NVTX library can be loaded; it never panics when none can. Every
//! cuBLAS and cuDNN call of the backend runs inside a range named after its op; kernel launches
//! and the training phases use the same function.
//!
//! Which library ([`library`], checked once, only when ranges are wanted):
//! 1. the file named by `HYPERSEG_NVTX_LIB`, when set (any library exporting `nvtxRangePushA`
//!    and `nvtxRangePop`);
//! 2. `libnvToolsExt.so.1` through cudarc's NVTX bindings (CUDA 12 and older, Nsight installs);
//! 3. `libnvtx3interop.so.1`, the C-API bridge that replaces it from CUDA 13 on (in the
//!    toolkit's `lib64` and in `pip install nvidia-nvtx`), loaded with `libloading` because
//!    cudarc only knows the old name.

use std::ffi::{c_char, c_int, CString};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// The environment variable that turns ranges on (`1`, `true`, `on`).
pub const NVTX_ENV: &str = "HYPERSEG_NVTX";
/// The environment variable naming an NVTX library file to use first.
pub const NVTX_LIB_ENV: &str = "HYPERSEG_NVTX_LIB";

/// Names (and usual places) of the CUDA 13 bridge library, tried in order.
const INTEROP_CANDIDATES: [&str; 4] = [
    "libnvtx3interop.so.1",
    "libnvtx3interop.so",
    "/usr/local/cuda/lib64/libnvtx3interop.so.1",
    "/usr/local/cuda/targets/x86_64-linux/lib/libnvtx3interop.so.1",
];

const UNSET: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;

/// Whether ranges are wanted: unset until first asked, then read from the environment.
static WANTED: AtomicU8 = AtomicU8::new(UNSET);

type PushFn = unsafe extern "C" fn(*const c_char) -> c_int;
type PopFn = unsafe extern "C" fn() -> c_int;

/// A loaded NVTX library.
enum Library {
    /// `libnvToolsExt` through cudarc.
    Cudarc,
    /// A library opened here, with its two entry points.
    Loaded { name: String, push: PushFn, pop: PopFn, _lib: libloading::Library },
}

impl Library {
    /// Opens `name` (a file name or path) and resolves the two entry points.
    fn open(name: &str) -> Option<Library> {
        // SAFETY: loading runs the library's initialisers: NVTX libraries have none that
        // matter; the symbols are resolved with the C signatures of nvToolsExt.h.
        unsafe {
            let lib = libloading::Library::new(name).ok()?;
            let push = *lib.get::<PushFn>(b"nvtxRangePushA\0").ok()?;
            let pop = *lib.get::<PopFn>(b"nvtxRangePop\0").ok()?;
            Some(Library::Loaded { name: name.to_string(), push, pop, _lib: lib })
        }
    }

    fn cudarc() -> Option<Library> {
        // SAFETY: only tries to dlopen the library.
        let found = std::panic::catch_unwind(|| unsafe { cudarc::nvtx::sys::is_culib_present() }).unwrap_or(false);
        // Resolving a symbol panics inside cudarc when it is missing: resolve both once here,
        // with a probe range, under catch_unwind.
        let works = found
            && std::panic::catch_unwind(|| {
                cudarc::nvtx::result::range_push("hyperseg-nvtx-probe");
                cudarc::nvtx::result::range_pop();
            })
            .is_ok();
        works.then_some(Library::Cudarc)
    }

    fn push(&self, name: &CString) {
        match self {
            Library::Cudarc => {
                cudarc::nvtx::result::range_push(name.to_str().unwrap_or("?"));
            }
            // SAFETY: a NUL-terminated string that outlives the call.
            Library::Loaded { push, .. } => unsafe {
                push(name.as_ptr());
            },
        }
    }

    fn pop(&self) {
        match self {
            Library::Cudarc => {
                cudarc::nvtx::result::range_pop();
            }
            // SAFETY: pops the range this thread pushed last (the guard's).
            Library::Loaded { pop, .. } => unsafe {
                pop();
            },
        }
    }
}

/// The NVTX library ranges go to, loaded on first use (see the module doc for the order).
fn loaded() -> Option<&'static Library> {
    static LIB: OnceLock<Option<Library>> = OnceLock::new();
    LIB.get_or_init(|| {
        let from_env = std::env::var(NVTX_LIB_ENV).ok().filter(|p| !p.trim().is_empty()).and_then(|p| {
            let lib = Library::open(p.trim());
            if lib.is_none() {
                eprintln!(
                    "warning: {NVTX_LIB_ENV}={p}: not an NVTX library that loads (nvtxRangePushA, nvtxRangePop); trying the usual names"
                );
            }
            lib
        });
        from_env.or_else(Library::cudarc).or_else(|| INTEROP_CANDIDATES.iter().find_map(|c| Library::open(c)))
    })
    .as_ref()
}

/// Which NVTX library can be loaded, if any: `libnvToolsExt` (through cudarc) or the name or
/// path of the file opened.
pub fn library() -> Option<String> {
    loaded().map(|l| match l {
        Library::Cudarc => "libnvToolsExt (cudarc)".to_string(),
        Library::Loaded { name, .. } => name.clone(),
    })
}

/// Turns NVTX ranges on or off for the whole process (overrides `HYPERSEG_NVTX`).
pub fn set_nvtx(on: bool) {
    WANTED.store(if on { ON } else { OFF }, Ordering::Relaxed);
}

/// Whether ranges are pushed: wanted, and a library is loaded.
pub fn enabled() -> bool {
    let mut w = WANTED.load(Ordering::Relaxed);
    if w == UNSET {
        let on =
            std::env::var(NVTX_ENV).map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "on" | "yes")).unwrap_or(false);
        w = if on { ON } else { OFF };
        // A concurrent set_nvtx wins over the environment.
        let _ = WANTED.compare_exchange(UNSET, w, Ordering::Relaxed, Ordering::Relaxed);
        w = WANTED.load(Ordering::Relaxed);
    }
    w == ON && loaded().is_some()
}

/// An open NVTX range; dropping it ends the range.
#[must_use = "the range ends when the guard drops"]
pub struct RangeGuard {
    lib: &'static Library,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for RangeGuard {
    fn drop(&mut self) {
        self.lib.pop();
    }
}

/// Opens a range named `name` on this thread when ranges are enabled; `None` otherwise.
/// Keep the guard alive for the extent of the range: `let _r = nvtx::range("gemm");`.
pub fn range(name: &str) -> Option<RangeGuard> {
    if !enabled() {
        return None;
    }
    // A name with an interior NUL cannot be passed to C; such names are not ours.
    let name = CString::new(name).ok()?;
    let lib = loaded()?;
    lib.push(&name);
    Some(RangeGuard { lib, _not_send: std::marker::PhantomData })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a library ranges are simply off; with one (CI installs the CUDA 13 bridge from
    /// pip and names it in HYPERSEG_NVTX_LIB) they must load and open.
    #[test]
    fn ranges_open_when_a_library_loads_and_never_panic() {
        set_nvtx(false);
        assert!(range("gemm").is_none());
        set_nvtx(true);
        let named = std::env::var(NVTX_LIB_ENV).ok().filter(|p| !p.trim().is_empty());
        if let Some(path) = &named {
            assert!(library().is_some(), "{NVTX_LIB_ENV}={path} but no NVTX library loaded");
        }
        let r = range("gemm");
        assert_eq!(r.is_some(), library().is_some());
        let inner = range("inner\0name");
        assert!(inner.is_none(), "a name with a NUL is refused");
        drop(r);
        set_nvtx(false);
    }
}
