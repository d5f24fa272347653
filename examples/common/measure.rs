//! What the examples read about their own process on Linux, and how they print numbers.

use std::time::Duration;

/// A field of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`); `None` where there is none.
pub fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// CPU time this process has used, user + system, all threads (from `/proc/self/stat`, in the
/// kernel's fixed 100 Hz ticks). Unlike wall time it does not grow when other processes take
/// the cores, which on a shared machine is the steadier number. `None` off Linux.
pub fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    Some(Duration::from_millis((field(11) + field(12)) * 10))
}

/// `n` with a comma every three digits.
pub fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
