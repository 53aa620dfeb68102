//! `ImageSet`: images stored as u8 NCHW with their labels, plus summary statistics.
//!
//! Images stay u8 in memory (SVHN `extra` alone is 1.6 GB as u8, 6.5 GB as f32) and are converted to f32
//! in [0, 1] one batch at a time by [`ImageSet::batch_f32`].

/// A set of labelled images, u8 pixels in NCHW order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSet {
    /// Pixels, `len() * channels * height * width` bytes, image-major then channel, row, column.
    pub pixels: Vec<u8>,
    /// Class index of each image, in `0..num_classes`.
    pub labels: Vec<u8>,
    /// Channels per image (1 for MNIST, 3 for SVHN).
    pub channels: usize,
    /// Rows per image.
    pub height: usize,
    /// Columns per image.
    pub width: usize,
    /// Number of classes the labels range over.
    pub num_classes: usize,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image, `channels * height * width`.
    pub fn image_size(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The shape of one image as `[channels, height, width]`.
    pub fn image_shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    /// The u8 pixels of image `i` (CHW). Panics if `i >= len()`, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let s = self.image_size();
        &self.pixels[i * s..(i + 1) * s]
    }

    /// Images per class, indexed by class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// Mean pixel value scaled to [0, 1] (MNIST train: 0.1307).
    pub fn mean_pixel(&self) -> f64 {
        if self.pixels.is_empty() {
            return f64::NAN;
        }
        let sum: u64 = self.pixels.iter().map(|&p| p as u64).sum();
        sum as f64 / (self.pixels.len() as f64 * 255.0)
    }

    /// The images at `indices` as f32 in [0, 1] (NCHW, flattened) and their labels.
    pub fn batch_f32(&self, indices: &[usize]) -> (Vec<f32>, Vec<u8>) {
        let mut x = Vec::with_capacity(indices.len() * self.image_size());
        let mut y = Vec::with_capacity(indices.len());
        for &i in indices {
            x.extend(self.image(i).iter().map(|&p| p as f32 / 255.0));
            y.push(self.labels[i]);
        }
        (x, y)
    }

    /// The first `n` images (all if `n >= len()`), for reduced profiles and tests.
    pub fn take(&self, n: usize) -> ImageSet {
        let n = n.min(self.len());
        ImageSet {
            pixels: self.pixels[..n * self.image_size()].to_vec(),
            labels: self.labels[..n].to_vec(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            num_classes: self.num_classes,
        }
    }

    /// The images from `start` on (none if `start >= len()`): the held-out tail of a validation split.
    pub fn skip(&self, start: usize) -> ImageSet {
        let start = start.min(self.len());
        ImageSet {
            pixels: self.pixels[start * self.image_size()..].to_vec(),
            labels: self.labels[start..].to_vec(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            num_classes: self.num_classes,
        }
    }

    /// Zero-pads every image to `size x size` (centred) and repeats the channel to `channels`.
    ///
    /// Builds the named stand-in for SVHN (MNIST as 3x32x32) so the WRN pipeline runs on real images;
    /// callers must label outputs as the stand-in, never as SVHN. Panics unless the set is single-channel
    /// and no larger than `size` (a programming error, not a user input).
    pub fn pad_and_repeat(&self, size: usize, channels: usize) -> ImageSet {
        assert!(size >= self.height && size >= self.width && self.channels == 1);
        let (top, left) = ((size - self.height) / 2, (size - self.width) / 2);
        let mut pixels = vec![0u8; self.len() * channels * size * size];
        for n in 0..self.len() {
            let src = self.image(n);
            for c in 0..channels {
                let base = (n * channels + c) * size * size;
                for i in 0..self.height {
                    let dst = base + (i + top) * size + left;
                    pixels[dst..dst + self.width]
                        .copy_from_slice(&src[i * self.width..(i + 1) * self.width]);
                }
            }
        }
        ImageSet {
            pixels,
            labels: self.labels.clone(),
            channels,
            height: size,
            width: size,
            num_classes: self.num_classes,
        }
    }
}
