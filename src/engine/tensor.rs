//! Tensors: a shape and a dtype over a pooled GPU buffer.
//!
//! A tensor is always contiguous and row-major, from the start of its buffer or from an
//! aligned offset into it ([`Tensor::view`]: the optimiser keeps parameters, gradients and
//! moments in flat buffers). `reshape` is a view (shares the buffer); transpose, slice and
//! concat make copies (see `ops::copy`).

use super::dtype::DType;
use super::error::{shape_err, Error, Result};
use super::{BufRef, Gpu};
use std::sync::Arc;

/// A pooled device buffer; goes back to the pool when the last tensor using it is dropped.
pub struct Storage {
    buffer: Option<wgpu::Buffer>,
    slot: super::pool::Slot,
    gpu: Gpu,
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            self.gpu.release(b, self.slot);
        }
    }
}

/// An n-dimensional array on the GPU.
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    /// Byte offset of element 0 in the buffer (a multiple of the device's offset alignment).
    offset: u64,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?})", self.shape, self.dtype)
    }
}

impl Tensor {
    /// An uninitialised tensor (contents are whatever the pooled buffer held).
    pub fn uninit(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        Tensor::with_buffer(gpu, shape, dtype, gpu.alloc((n * dtype.size()) as u64)?)
    }

    /// A tensor of f32 zeros in a buffer of exactly its size (not rounded up to a pool size
    /// class): for large buffers that live as long as a run.
    pub fn zeros_exact(gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let t = Tensor::with_buffer(gpu, shape, DType::F32, gpu.alloc_exact(n as u64 * 4)?)?;
        gpu.zero(t.buffer(), t.bytes())?;
        Ok(t)
    }

    fn with_buffer(
        gpu: &Gpu,
        shape: &[usize],
        dtype: DType,
        (buffer, slot): (wgpu::Buffer, super::pool::Slot),
    ) -> Result<Tensor> {
        Ok(Tensor {
            storage: Arc::new(Storage {
                buffer: Some(buffer),
                slot,
                gpu: gpu.clone(),
            }),
            offset: 0,
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// A tensor of zeros.
    pub fn zeros(gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
        let t = Tensor::uninit(gpu, shape, DType::F32)?;
        gpu.zero(t.buffer(), t.bytes())?;
        Ok(t)
    }

    fn upload<T: bytemuck::Pod>(
        op: &'static str,
        gpu: &Gpu,
        data: &[T],
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return shape_err(
                op,
                format!("{} values for shape {shape:?} ({n} elements)", data.len()),
            );
        }
        let t = Tensor::uninit(gpu, shape, dtype)?;
        gpu.write(t.buffer(), bytemuck::cast_slice(data))?;
        Ok(t)
    }

    /// Uploads host data.
    pub fn from_slice(gpu: &Gpu, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Tensor::upload("from_slice", gpu, data, shape, DType::F32)
    }

    /// Uploads integers (labels, lengths).
    pub fn from_u32(gpu: &Gpu, data: &[u32], shape: &[usize]) -> Result<Tensor> {
        Tensor::upload("from_u32", gpu, data, shape, DType::U32)
    }

    /// A one-element tensor of shape `[]`.
    pub fn scalar(gpu: &Gpu, v: f32) -> Result<Tensor> {
        Tensor::from_slice(gpu, &[v], &[])
    }

    /// Downloads the values (submits pending work and waits for it).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.expect_f32("to_vec")?;
        let bytes = self
            .gpu()
            .read_many(&[(self.buffer(), self.offset, self.bytes())])?;
        Ok(bytemuck::pod_collect_to_vec(&bytes[0]))
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        Ok(Tensor::items(&[self])?[0])
    }

    /// The values of several one-element tensors (of one device), read back with one wait.
    pub fn items(scalars: &[&Tensor]) -> Result<Vec<f32>> {
        let Some(first) = scalars.first() else {
            return Ok(Vec::new());
        };
        for t in scalars {
            t.expect_f32("items")?;
            if t.numel() != 1 {
                return shape_err(
                    "items",
                    format!("tensor of shape {:?} is not a scalar", t.shape),
                );
            }
        }
        let srcs: Vec<_> = scalars.iter().map(|t| (t.buffer(), t.offset, 4)).collect();
        let bytes = first.gpu().read_many(&srcs)?;
        Ok(bytes
            .iter()
            .map(|b| bytemuck::pod_read_unaligned(b))
            .collect())
    }

    /// The device this tensor lives on.
    pub fn gpu(&self) -> &Gpu {
        &self.storage.gpu
    }

    /// Its shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Its element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Size of its data in bytes.
    pub fn bytes(&self) -> u64 {
        (self.numel() * self.dtype.size()) as u64
    }

    /// Byte offset of its first element in [`Tensor::buffer`].
    pub fn byte_offset(&self) -> u64 {
        self.offset
    }

    /// Size of dim `d` (negative counts from the end).
    pub fn dim(&self, d: isize) -> usize {
        let r = self.shape.len() as isize;
        self.shape[if d < 0 { r + d } else { d } as usize]
    }

    /// The underlying buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.storage.buffer.as_ref().expect("live storage")
    }

    /// Whether two tensors share one buffer.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// Whether two tensors are the same elements of the same buffer (in any shape).
    pub fn same_data(&self, other: &Tensor) -> bool {
        self.same_storage(other)
            && self.offset == other.offset
            && self.numel() == other.numel()
            && self.dtype == other.dtype
    }

    /// `shape`'s worth of elements starting at element `start`, sharing this buffer. `start`
    /// must be a multiple of the device's storage offset alignment (in elements).
    pub fn view(&self, start: usize, shape: &[usize]) -> Result<Tensor> {
        let es = self.dtype.size() as u64;
        let n: usize = shape.iter().product();
        let offset = self.offset + start as u64 * es;
        if start + n > self.numel() || !offset.is_multiple_of(self.gpu().offset_align()) {
            return shape_err(
                "view",
                format!(
                    "elements {start}..{} of {:?} (byte offset {offset} must be a multiple of {})",
                    start + n,
                    self.shape,
                    self.gpu().offset_align()
                ),
            );
        }
        Ok(Tensor {
            storage: self.storage.clone(),
            offset,
            shape: shape.to_vec(),
            dtype: self.dtype,
        })
    }

    /// `parts` as one tensor along dim 0 without a copy, when they lie back to back in one
    /// buffer (the optimiser packs q, k and v's weights so); `None` otherwise.
    pub fn join(parts: &[&Tensor]) -> Option<Tensor> {
        let first = parts.first()?;
        let rest = first.shape.get(1..)?;
        let mut end = first.offset;
        let mut rows = 0;
        for t in parts {
            let adjacent = t.same_storage(first) && t.offset == end && t.dtype == first.dtype;
            if !adjacent || t.shape.get(1..) != Some(rest) {
                return None;
            }
            end += t.bytes();
            rows += t.shape[0];
        }
        let mut shape = vec![rows];
        shape.extend_from_slice(rest);
        Some(Tensor {
            storage: first.storage.clone(),
            offset: first.offset,
            shape,
            dtype: first.dtype,
        })
    }

    /// Copies `src`'s elements (same count and dtype) over this tensor's, on the GPU.
    pub fn copy_from(&self, src: &Tensor) -> Result<()> {
        if src.numel() != self.numel() || src.dtype != self.dtype {
            return shape_err(
                "copy_from",
                format!(
                    "{:?} {:?} into {:?} {:?}",
                    src.shape, src.dtype, self.shape, self.dtype
                ),
            );
        }
        let bytes = self.bytes().next_multiple_of(4);
        self.gpu().with_encoder(|e| {
            e.copy_buffer_to_buffer(src.buffer(), src.offset, self.buffer(), self.offset, bytes)
        });
        Ok(())
    }

    /// Overwrites the elements with host data of the same length (ordered after everything
    /// already recorded).
    pub fn write(&self, data: &[f32]) -> Result<()> {
        self.expect_f32("write")?;
        if data.len() != self.numel() {
            return shape_err(
                "write",
                format!("{} values for shape {:?}", data.len(), self.shape),
            );
        }
        self.gpu()
            .write_at(self.buffer(), self.offset, bytemuck::cast_slice(data))
    }

    /// The whole tensor as a kernel binding.
    pub fn bind(&self) -> BufRef<'_> {
        self.bind_range(0, self.numel())
    }

    /// Elements `start..start+len` as a kernel binding (start must be offset-aligned).
    pub fn bind_range(&self, start: usize, len: usize) -> BufRef<'_> {
        let es = self.dtype.size() as u64;
        // Whole 4-byte words: an f16 range of odd length still binds its last element's word
        // (pooled buffers are at least that long).
        BufRef {
            buffer: self.buffer(),
            offset: self.offset + start as u64 * es,
            size: (len as u64 * es).next_multiple_of(4).max(4),
        }
    }

    /// Elements `start..start+len` bound from the aligned offset at or below `start`; returns
    /// the binding and the element shift the kernel must add to its indices.
    pub fn bind_shifted(&self, start: usize, len: usize) -> (BufRef<'_>, u32) {
        let align = (self.gpu().offset_align() as usize / self.dtype.size()).max(1);
        let shift = start % align;
        (self.bind_range(start - shift, len + shift), shift as u32)
    }

    /// A view with another shape of the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            return shape_err(
                "reshape",
                format!("cannot view {:?} as {shape:?}", self.shape),
            );
        }
        Ok(Tensor {
            storage: self.storage.clone(),
            offset: self.offset,
            shape: shape.to_vec(),
            dtype: self.dtype,
        })
    }

    /// Fails with a dtype error unless the tensor is f32.
    pub fn expect_f32(&self, op: &'static str) -> Result<()> {
        if self.dtype != DType::F32 {
            return Err(Error::DType {
                op,
                found: self.dtype,
                expected: DType::F32,
            });
        }
        Ok(())
    }
}
