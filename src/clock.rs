//! The wall clock, a leaf every module may use (JWT `exp`, replay `since`, history
//! timestamps and replication lag are all wall-clock milliseconds).

/// Wall-clock time in unix milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
