//! Kernel benchmarks at wav2vec2-large shapes.
use crate::{Gpu, Result};
/// Runs the benchmarks.
pub fn run(_gpu: &Gpu, _quick: bool, _filter: Option<&str>) -> Result<()> { Ok(()) }
