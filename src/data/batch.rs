//! The unit the loader hands to training: N images (NCHW `f32`) with their label masks and ids.

/// A mini-batch of `n` samples at `size x size`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Model inputs, NCHW, `n*3*size*size` values on 0-255 minus the ImageNet means.
    pub images: Vec<f32>,
    /// Labels, `n*size*size` values in {0, 1} (1 = lesion).
    pub masks: Vec<u8>,
    /// The sample ids, in batch order.
    pub ids: Vec<String>,
    /// Side of the square, in pixels.
    pub size: usize,
}

impl Batch {
    /// An empty batch of capacity `n`.
    pub fn with_capacity(n: usize, size: usize) -> Batch {
        Batch {
            images: Vec::with_capacity(n * 3 * size * size),
            masks: Vec::with_capacity(n * size * size),
            ids: Vec::with_capacity(n),
            size,
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the batch holds no sample.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Appends one sample (CHW image of `3*size*size`, mask of `size*size`).
    pub fn push(&mut self, id: String, image: &[f32], mask: &[u8]) {
        debug_assert_eq!(image.len(), 3 * self.size * self.size);
        debug_assert_eq!(mask.len(), self.size * self.size);
        self.images.extend_from_slice(image);
        self.masks.extend_from_slice(mask);
        self.ids.push(id);
    }

    /// The CHW image of sample `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        let n = 3 * self.size * self.size;
        &self.images[i * n..(i + 1) * n]
    }

    /// The mask of sample `i`.
    pub fn mask(&self, i: usize) -> &[u8] {
        let n = self.size * self.size;
        &self.masks[i * n..(i + 1) * n]
    }

    /// The shape of [`Batch::images`]: `[n, 3, size, size]`.
    pub fn image_shape(&self) -> [usize; 4] {
        [self.len(), 3, self.size, self.size]
    }
}
