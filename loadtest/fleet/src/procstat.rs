//! Peak RSS and CPU time of a process, from `/proc` (Linux).

/// Linux reports CPU time in ticks of 1/100 s (`USER_HZ`).
pub const TICKS_PER_SECOND: f64 = 100.0;

/// (peak RSS KiB, CPU ticks user+system) of a process; zeros when it cannot be read.
pub fn proc_stats(pid: u32) -> (u64, u64) {
    let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may contain spaces).
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    (hwm, ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let (hwm, _ticks) = proc_stats(std::process::id());
        assert!(hwm > 0);
    }
}
