//! An optional request to the kernel for short CPU wake-up latency (Linux PM QoS), held
//! while the node runs (`cpu_wakeup_latency_us`).
//!
//! An idle CPU waits in an idle state, and waking it for a packet or a finished disk write
//! takes that state's exit latency; in a virtual machine whose idle CPUs halt, each such
//! wake-up is a trip through the hypervisor. A single put wakes a sleeping thread about
//! eight times on its way (client, leader, follower, their log flushers and back), so these
//! latencies add up where a put is otherwise a few hundred microseconds. Linux lets a
//! process bound them: it writes the longest exit latency it accepts, in microseconds, to
//! `/dev/cpu_dma_latency` and keeps the file open; the bound lasts until the file is closed
//! (when the process exits, at the latest). 0 keeps idle CPUs polling instead of entering
//! any idle state.
//!
//! The cost is the machine's: idle CPUs stay busy (power, and on a virtual machine, host
//! CPU time), for every process on it. It is off unless asked for, and needs write access
//! to the file (root, normally). docs/operations.md says when to use it;
//! docs/benchmarks.md what it measured.

use std::fs::File;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

/// Where Linux takes CPU wake-up latency requests.
pub const CPU_DMA_LATENCY: &str = "/dev/cpu_dma_latency";

/// A held request; dropping it withdraws the request.
#[derive(Debug)]
pub struct CpuLatencyRequest {
    _file: File,
}

/// A request that could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cpu_wakeup_latency_us: cannot request {latency_us} us from {}: {source} (it needs write access to the file, normally root)", path.display())]
pub struct CpuLatencyError {
    pub path: PathBuf,
    pub latency_us: u32,
    #[source]
    pub source: std::io::Error,
}

/// Asks, through the file at `path` (normally [`CPU_DMA_LATENCY`]), that idle CPUs wake
/// within `latency_us` microseconds, for as long as the returned request is held.
pub fn request(path: &Path, latency_us: u32) -> Result<CpuLatencyRequest, CpuLatencyError> {
    let error = |source| CpuLatencyError { path: path.to_path_buf(), latency_us, source };
    let value = i32::try_from(latency_us).map_err(|_| {
        error(std::io::Error::new(std::io::ErrorKind::InvalidInput, "the value is too large"))
    })?;
    let mut file = OpenOptions::new().write(true).open(path).map_err(error)?;
    // The kernel reads a 4-byte value in the machine's byte order (or a hex string).
    file.write_all(&value.to_ne_bytes()).map_err(error)?;
    tracing::info!(latency_us, path = %path.display(), "holding a CPU wake-up latency request");
    Ok(CpuLatencyRequest { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_is_written_as_four_bytes_and_the_file_kept_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cpu_dma_latency");
        std::fs::write(&path, b"").expect("create");
        // Open descriptors of this process naming `path`.
        let open = || {
            std::fs::read_dir("/proc/self/fd")
                .expect("/proc/self/fd")
                .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                .filter(|target| *target == path)
                .count()
        };
        let held = request(&path, 20).expect("request");
        assert_eq!(std::fs::read(&path).expect("read"), 20i32.to_ne_bytes());
        assert_eq!(open(), 1, "the request holds the file open");
        drop(held);
        assert_eq!(open(), 0, "dropping the request closes it");
    }

    #[test]
    fn a_file_that_cannot_be_opened_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing");
        let e = request(&path, 0).expect_err("no such file");
        let text = e.to_string();
        assert!(
            text.contains("cpu_wakeup_latency_us") && text.contains(&path.display().to_string()),
            "{text}"
        );
    }
}
