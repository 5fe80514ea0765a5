//! The process's own CPU time, resident memory and open descriptors, read from `/proc` when the
//! metrics are scraped (Linux; elsewhere the figures read as zero).

/// One reading.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Usage {
    pub(crate) cpu_seconds: f64,
    pub(crate) resident_bytes: u64,
    pub(crate) open_fds: u64,
}

/// Linux reports CPU time in clock ticks of USER_HZ, 100 on every architecture it runs on.
const TICKS_PER_SECOND: f64 = 100.0;

impl Usage {
    pub(crate) fn read() -> Self {
        Self {
            cpu_seconds: cpu_seconds().unwrap_or(0.0),
            resident_bytes: resident_bytes().unwrap_or(0),
            open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64),
        }
    }
}

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after its closing parenthesis are plain.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / TICKS_PER_SECOND)
}

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let burn: u64 = (0..20_000_000u64).fold(0, |a, b| a ^ b.wrapping_mul(31));
        assert!(burn != 1);
        let usage = Usage::read();
        assert!(usage.resident_bytes > 1024 * 1024, "{usage:?}");
        assert!(usage.open_fds >= 3, "{usage:?}");
        assert!(usage.cpu_seconds > 0.0, "{usage:?}");
    }
}
