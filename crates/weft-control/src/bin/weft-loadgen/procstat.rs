//! CPU time and memory of a process, from `/proc`.

/// A reading of one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// User + system CPU seconds so far.
    pub cpu_s: f64,
    /// Resident set size now, MiB.
    pub rss_mib: f64,
    /// Peak resident set size, MiB.
    pub peak_mib: f64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status` (`self` for this process).
pub fn read(pid: &str) -> Usage {
    let mut u = Usage::default();
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Fields after the command name (which may contain spaces) start at ") ".
        if let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) {
            let f: Vec<&str> = rest.split(' ').collect();
            let ticks = clock_ticks();
            let utime: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let stime: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            u.cpu_s = (utime + stime) / ticks;
        }
    }
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        for line in status.lines() {
            let kib = |l: &str| -> f64 {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
                    / 1024.0
            };
            if line.starts_with("VmRSS:") {
                u.rss_mib = kib(line);
            } else if line.starts_with("VmHWM:") {
                u.peak_mib = kib(line);
            }
        }
    }
    u
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}
