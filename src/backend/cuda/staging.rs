//! Host-to-device copies through a pinned staging buffer, so that queuing a copy (a training
//! batch's images) does not wait for the device.
//!
//! A copy from pageable host memory goes through the driver's own staging and may wait for the
//! stream to reach it, which in a training loop is the end of the previous step: the host would
//! stop queuing work while the device drains. [`CudaDevice::upload`] instead copies values of
//! [`MIN_STAGED_BYTES`] to [`MAX_STAGED_BYTES`] into one pinned buffer per device and queues an
//! asynchronous copy from it; the next staged upload waits only until that copy has read the
//! buffer (an event recorded after it), which in the training loop happened long before.
//! Smaller copies gain nothing (the driver queues them inline); larger ones (checkpoint loads)
//! would pin too much host memory.

use cudarc::driver::{CudaEvent, PinnedHostSlice};

use super::device::lock;
use super::error::CudaResultExt;
use super::{CudaDevice, CudaStorage};
use crate::error::Result;

/// Uploads from this size on go through the staging buffer.
pub const MIN_STAGED_BYTES: usize = 64 << 10;
/// Uploads above this size are copied from pageable memory.
pub const MAX_STAGED_BYTES: usize = 64 << 20;

/// The pinned buffer and the event recorded after the last copy out of it.
pub(crate) struct Staging {
    buf: PinnedHostSlice<f32>,
    copied: CudaEvent,
}

/// Whether an upload of `len` f32 goes through the staging buffer.
pub fn is_staged(len: usize) -> bool {
    (MIN_STAGED_BYTES..=MAX_STAGED_BYTES).contains(&(len * 4))
}

impl CudaDevice {
    /// Copies `data` into `dst` (at least `data.len()` elements) through the pinned staging
    /// buffer, queued on the stream.
    pub(crate) fn upload_staged(&self, data: &[f32], dst: &mut CudaStorage) -> Result<()> {
        let mut staging = lock(&self.0.staging);
        if staging.as_ref().is_none_or(|s| s.buf.len() < data.len()) {
            if let Some(old) = staging.take() {
                old.copied.synchronize().ctx("staging buffer")?;
            }
            let ctx = self.context();
            // SAFETY: the buffer is written below before any copy reads it.
            let buf = unsafe { ctx.alloc_pinned::<f32>(data.len().next_power_of_two()) }.ctx("allocating a pinned staging buffer")?;
            let copied = ctx.new_event(None).ctx("staging event")?;
            *staging = Some(Staging { buf, copied });
        }
        let s = staging.as_mut().expect("set above");
        // The previous copy out of the buffer has read it.
        s.copied.synchronize().ctx("staging buffer")?;
        let ptr = s.buf.as_mut_ptr().ctx("staging buffer")?;
        // SAFETY: the buffer holds at least data.len() f32, and no copy reads it any more.
        let host = unsafe { std::slice::from_raw_parts_mut(ptr, data.len()) };
        host.copy_from_slice(data);
        self.count_call();
        // SAFETY: `dst` holds at least data.len() f32; the pinned buffer stays alive and
        // unwritten until `copied` has passed this copy.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst.raw_ptr(), &*host, self.stream().cu_stream()) }
            .ctx("upload (host to device copy)")?;
        s.copied.record(self.stream()).ctx("staging event")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mid_sized_uploads_are_staged() {
        assert!(!is_staged(1000));
        assert!(is_staged(MIN_STAGED_BYTES / 4));
        assert!(is_staged(5 * 3 * 224 * 224), "a paper batch of images");
        assert!(!is_staged(4096 * 512 * 7 * 7), "fc6's weight comes from a checkpoint unstaged");
    }
}
