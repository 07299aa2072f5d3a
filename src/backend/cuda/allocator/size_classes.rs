//! The size classes: the block size actually reserved for a request (multiples of 512 B up
//! to 1 MiB, above that eight classes per power of two).

/// Granularity of the small size classes.
pub const SMALL_GRANULE: usize = 512;
/// Requests up to this size use [`SMALL_GRANULE`] classes; larger ones use octave classes.
pub const LARGE_THRESHOLD: usize = 1 << 20;
/// log2 of the number of classes per power of two above [`LARGE_THRESHOLD`].
const CLASS_BITS: u32 = 3;

/// The size class of a request of `bytes` bytes: the block size actually reserved. `None`
/// when the rounding overflows `usize`.
pub fn size_class(bytes: usize) -> Option<usize> {
    let b = bytes.max(1);
    if b <= LARGE_THRESHOLD {
        return Some(b.div_ceil(SMALL_GRANULE) * SMALL_GRANULE);
    }
    let top = usize::BITS - 1 - b.leading_zeros(); // floor(log2 b) >= 20
    let step = 1usize << (top - CLASS_BITS);
    b.checked_next_multiple_of(step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_classes_round_to_512_bytes() {
        assert_eq!(size_class(0), Some(512));
        assert_eq!(size_class(1), Some(512));
        assert_eq!(size_class(512), Some(512));
        assert_eq!(size_class(513), Some(1024));
        assert_eq!(size_class(1 << 20), Some(1 << 20));
    }

    #[test]
    fn large_classes_waste_at_most_an_eighth() {
        assert_eq!(size_class((1 << 20) + 1), Some((1 << 20) + (1 << 17)));
        assert_eq!(size_class(3 << 29), Some(3 << 29));
        for b in [(1usize << 20) + 1, 5_000_000, 123_456_789, 802_816 * 4096, (1 << 33) - 1] {
            let c = size_class(b).unwrap();
            assert!(c >= b && (c - b) * 8 <= b, "{b} -> {c}");
            assert_eq!(c % SMALL_GRANULE, 0);
            assert_eq!(size_class(c), Some(c), "classes are fixed points");
        }
        assert_eq!(size_class(usize::MAX), None);
    }
}
