//! PLACEHOLDER (being replaced by the CUDA backend work): a CUDA device that is never
//! available, so that the crate builds and the CPU backend can be developed.

use crate::backend::*;
use crate::dtype::DType;
use crate::error::{Error, Result};

/// A CUDA device handle.
#[derive(Clone)]
pub struct CudaDevice {
    never: std::convert::Infallible,
}

impl CudaDevice {
    pub fn new(_ordinal: usize) -> Result<CudaDevice> {
        Err(Error::CudaUnavailable("the CUDA backend is not built yet; use --device cpu".into()))
    }
    pub fn name(&self) -> String {
        match self.never {}
    }
    pub fn ordinal(&self) -> usize {
        match self.never {}
    }
    pub fn same_device(&self, _o: &CudaDevice) -> bool {
        match self.never {}
    }
    pub fn synchronize(&self) -> Result<()> {
        match self.never {}
    }
    pub fn upload(&self, _d: &[f32]) -> Result<CudaStorage> {
        match self.never {}
    }
    pub fn zeros(&self, _len: usize) -> Result<CudaStorage> {
        match self.never {}
    }
}

/// A buffer on a CUDA device.
pub struct CudaStorage {
    never: std::convert::Infallible,
}

impl CudaStorage {
    pub fn device(&self) -> &CudaDevice {
        match self.never {}
    }
}

macro_rules! never {
    ($($name:ident ( $($arg:ident : $t:ty),* ) -> $ret:ty;)*) => {
        $(fn $name(&self, $($arg: $t),*) -> $ret { match self.never {} })*
    };
}

impl BackendStorage for CudaStorage {
    never! {
        dtype() -> DType;
        len() -> usize;
        to_host_f32() -> Result<Vec<f32>>;
        try_clone() -> Result<Self>;
        zeros_like_len(_l: usize) -> Result<Self>;
        unary(_o: UnaryOp) -> Result<Self>;
        affine(_m: f32, _a: f32) -> Result<Self>;
        binary(_r: &Self, _o: BinaryOp) -> Result<Self>;
        relu_backward(_g: &Self) -> Result<Self>;
        sum_all() -> Result<Self>;
        broadcast_add(_v: &Self, _s: BroadcastSpec) -> Result<Self>;
        broadcast_mul(_v: &Self, _s: BroadcastSpec) -> Result<Self>;
        reduce_to_mid(_s: BroadcastSpec) -> Result<Self>;
        gemm(_b: &Self, _g: GemmSpec) -> Result<Self>;
        conv2d(_w: &Self, _s: &ConvSpec) -> Result<Self>;
        conv2d_backward_input(_w: &Self, _s: &ConvSpec) -> Result<Self>;
        conv2d_backward_weight(_d: &Self, _s: &ConvSpec) -> Result<Self>;
        batch_norm_train(_g: &Self, _b: &Self, _d: Nchw, _e: f32) -> Result<BatchNormForward<Self>>;
        batch_norm_backward(_dy: &Self, _g: &Self, _m: &Self, _i: &Self, _d: Nchw) -> Result<BatchNormBackward<Self>>;
        max_pool2x2(_d: Nchw) -> Result<Self>;
        max_pool2x2_backward(_dy: &Self, _d: Nchw) -> Result<Self>;
        upsample_bilinear(_d: Nchw, _h: usize, _w: usize) -> Result<Self>;
        upsample_bilinear_backward(_d: Nchw, _h: usize, _w: usize) -> Result<Self>;
        gather_hypercolumns_backward(_p: &[SamplePoint], _g: &GatherSpec, _d: bool) -> Result<Vec<Self>>;
        softmax_cross_entropy(_l: &[u32], _c: usize, _w: Option<&[f32]>) -> Result<(Self, Self)>;
        dropout_mask(_l: usize, _k: f32, _s: u32) -> Result<Self>;
    }
    fn fill(&mut self, _v: f32) -> Result<()> {
        match self.never {}
    }
    fn add_scaled_assign(&mut self, _r: &Self, _a: f32) -> Result<()> {
        match self.never {}
    }
    fn copy_blocks_into(&self, _d: &mut Self, _c: BlockCopy) -> Result<()> {
        match self.never {}
    }
    fn gather_hypercolumns(taps: &[&Self], _p: &[SamplePoint], _g: &GatherSpec) -> Result<Self> {
        match taps[0].never {}
    }
    fn adam_step(&mut self, _g: &Self, _m: &mut Self, _v: &mut Self, _h: &AdamStep) -> Result<()> {
        match self.never {}
    }
}
