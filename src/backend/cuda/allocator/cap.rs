//! The cap's default: the smaller of the card's memory and 12 GiB, unless `HYPERSEG_MEM_LIMIT`
//! gives a byte count (parsed with its unit by [`parse_bytes`]).

use crate::error::{Error, Result};

/// The largest cap applied by default.
pub const DEFAULT_CAP_LIMIT: usize = 12 << 30;
/// The environment variable that overrides the cap.
pub const MEM_LIMIT_ENV: &str = "HYPERSEG_MEM_LIMIT";

/// Parses a byte count: a plain integer (`12884901888`), or a number with a unit: `KiB`,
/// `MiB`, `GiB`, `TiB` (and `K`, `M`, `G`, `T`) are powers of 1024; `KB`, `MB`, `GB`, `TB` are
/// powers of 1000; `B` is bytes. Case-insensitive, spaces allowed, decimals allowed
/// (`1.5GiB`).
pub fn parse_bytes(s: &str) -> Option<usize> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return None;
    }
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => return None,
    };
    if unit.is_empty() {
        return num.parse::<usize>().ok();
    }
    let v: f64 = num.parse().ok()?;
    let bytes = (v * mult).round();
    (bytes.is_finite() && bytes >= 0.0 && bytes < usize::MAX as f64).then_some(bytes as usize)
}

/// The cap to apply on a card with `total_mem` bytes: `HYPERSEG_MEM_LIMIT` when set (an error
/// when it cannot be parsed), else the smaller of the card's memory and 12 GiB.
pub fn default_cap(total_mem: usize) -> Result<usize> {
    match std::env::var(MEM_LIMIT_ENV) {
        Ok(v) => parse_bytes(&v).ok_or_else(|| Error::InvalidValue {
            name: MEM_LIMIT_ENV,
            msg: format!("cannot read {v:?} as a byte count (examples: 12GiB, 800MiB, 1.5GB, 4294967296)"),
        }),
        Err(_) => Ok(total_mem.min(DEFAULT_CAP_LIMIT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_byte_counts_with_units() {
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("12GiB"), Some(12 << 30));
        assert_eq!(parse_bytes(" 12 gib "), Some(12 << 30));
        assert_eq!(parse_bytes("800MiB"), Some(800 << 20));
        assert_eq!(parse_bytes("1.5G"), Some(3 << 29));
        assert_eq!(parse_bytes("2GB"), Some(2_000_000_000));
        assert_eq!(parse_bytes("64k"), Some(65536));
        assert_eq!(parse_bytes("12 bananas"), None);
        assert_eq!(parse_bytes("GiB"), None);
        assert_eq!(parse_bytes(""), None);
    }
}
