//! `--device`: where the f32 work of a run happens (training, attacks, the analyses' forward passes):
//! `cpu` (the default), `cuda` or `cuda:N`. Certificates are computed in f64 on the CPU whatever the
//! device, from host copies of the weights, so they do not depend on it.

use std::sync::OnceLock;

use anyhow::{bail, Result};
use candle_core::Device;

static DEVICE: OnceLock<Device> = OnceLock::new();
static SPEC: OnceLock<String> = OnceLock::new();

/// The device of `spec` (`cpu`, `cuda`, `cuda:N`).
pub fn parse(spec: &str) -> Result<Device> {
    let ordinal = match spec.trim().to_ascii_lowercase().as_str() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" | "gpu" => 0,
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => bail!("--device {spec}: expected cpu, cuda or cuda:N (N the GPU's index, from 0)"),
        },
    };
    open_cuda(spec, ordinal)
}

#[cfg(feature = "cuda")]
fn open_cuda(spec: &str, ordinal: usize) -> Result<Device> {
    // candle's message without the backtrace it carries.
    Device::new_cuda(ordinal).map_err(|e| {
        let why = e.to_string();
        let why = why.lines().next().unwrap_or_default().to_string();
        anyhow::anyhow!("--device {spec}: cannot open CUDA device {ordinal} (is the NVIDIA driver loaded, and does `nvidia-smi` list the GPU?): {why}")
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(spec: &str, _ordinal: usize) -> Result<Device> {
    bail!("--device {spec}: this binary was built without CUDA; build the GPU binary with `make gpu` (README, section GPU)")
}

/// Chooses the device of this process once, before any model is built.
pub fn set(spec: &str) -> Result<()> {
    let dev = parse(spec)?;
    if let Some(old) = DEVICE.get() {
        if !old.same_device(&dev) {
            bail!("--device {spec}: the device was already chosen as {old:?}");
        }
        return Ok(());
    }
    let _ = DEVICE.set(dev);
    let _ = SPEC.set(spec.trim().to_ascii_lowercase());
    Ok(())
}

/// The `--device` spec this process runs on, for child processes (`table1 --jobs`) to run on the same.
pub fn spec() -> String {
    SPEC.get().cloned().unwrap_or_else(|| "cpu".into())
}

/// The device this process trains and attacks on (the CPU unless `--device` said otherwise).
pub fn device() -> Device {
    DEVICE.get().cloned().unwrap_or(Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_parse_or_name_the_fix() {
        assert!(parse("cpu").unwrap().is_cpu());
        assert!(parse(" CPU ").unwrap().is_cpu());
        let bad = parse("tpu").unwrap_err().to_string();
        assert!(bad.contains("expected cpu, cuda or cuda:N"), "{bad}");
        assert!(parse("cuda:x").is_err());
        #[cfg(not(feature = "cuda"))]
        {
            let e = parse("cuda:1").unwrap_err().to_string();
            assert!(e.contains("without CUDA") && e.contains("make gpu"), "{e}");
        }
    }
}
