//! Log sequence numbers.

use std::fmt;
use std::str::FromStr;

/// A WAL position, printed by Postgres as `X/X` (high/low 32 bits in hex).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Lsn, String> {
        let (hi, lo) = s.split_once('/').ok_or_else(|| format!("not an LSN: {s:?}"))?;
        let hi = u64::from_str_radix(hi, 16).map_err(|e| format!("not an LSN: {s:?}: {e}"))?;
        let lo = u64::from_str_radix(lo, 16).map_err(|e| format!("not an LSN: {s:?}: {e}"))?;
        if hi > u64::from(u32::MAX) || lo > u64::from(u32::MAX) {
            return Err(format!("not an LSN: {s:?}"));
        }
        Ok(Lsn((hi << 32) | lo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_postgres_notation() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l, Lsn(0x16_B374_D848));
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert!("x".parse::<Lsn>().is_err());
        assert!("1/100000000".parse::<Lsn>().is_err());
    }
}
