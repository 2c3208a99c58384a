//! Kubernetes quantities (`500m`, `2`, `1.5Gi`, `1e3`), parsed exactly.
//!
//! Values are held in nano-units in a `u128` (8Ei is about 9.2e27 nano-units,
//! far below the 3.4e38 a `u128` holds), so comparisons are exact across
//! binary and decimal suffixes (`1Gi` vs `1073741824`), which float-based
//! parsers get wrong at the edges.

/// The value of a non-negative Kubernetes quantity in nano-units, rounded up
/// (as Kubernetes rounds up below its precision); `None` when `s` is not a
/// quantity or its value does not fit.
pub fn quantity_nanos(s: &str) -> Option<u128> {
    if s.len() > 64 {
        return None;
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(num_end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    let mut mantissa: u128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        mantissa = mantissa
            .checked_mul(10)?
            .checked_add(u128::from(b - b'0'))?;
    }
    let (pow2, pow10): (u32, i32) = match suffix {
        "" => (0, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        other => {
            let exp = other.strip_prefix(['e', 'E'])?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (0, exp.parse().ok()?)
        }
    };
    let exp10 = pow10
        .checked_add(9)?
        .checked_sub(i32::try_from(frac.len()).ok()?)?;
    let value = mantissa.checked_mul(1u128.checked_shl(pow2)?)?;
    let scale = 10u128.checked_pow(exp10.unsigned_abs())?;
    if exp10 >= 0 {
        value.checked_mul(scale)
    } else {
        Some(value.div_ceil(scale))
    }
}

#[cfg(test)]
mod tests {
    use super::quantity_nanos;

    #[test]
    fn parses_the_kubernetes_grammar_exactly() {
        assert_eq!(quantity_nanos("1"), Some(1_000_000_000));
        assert_eq!(quantity_nanos("500m"), Some(500_000_000));
        assert_eq!(quantity_nanos("1Gi"), Some(1_073_741_824_000_000_000));
        assert_eq!(quantity_nanos("1.5Ki"), Some(1_536_000_000_000));
        assert_eq!(quantity_nanos("1e3"), Some(1_000_000_000_000));
        assert_eq!(
            quantity_nanos("8589934593"),
            Some(8_589_934_593_000_000_000)
        );
        assert!(quantity_nanos("8589934593") > quantity_nanos("8Gi"));
        assert_eq!(quantity_nanos("1Qi"), None);
        assert_eq!(quantity_nanos(""), None);
        assert_eq!(quantity_nanos("."), None);
    }
}
