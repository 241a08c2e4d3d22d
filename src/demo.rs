//! The built-in demo.
use crate::{Gpu, Result};
/// Runs the demo.
pub fn run(_gpu: &Gpu, _steps: usize) -> Result<()> { Ok(()) }
