//! Kubernetes quantities (`100m`, `1.5Gi`, `2e3`, `512Mi`) as numbers: cores for
//! CPU, bytes for memory and storage, counts for the rest.

/// The value of `text`, or `None` if it is not a quantity.
pub fn parse(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        "Pi" => 1024.0f64.powi(5),
        "Ei" => 1024.0f64.powi(6),
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    value.is_finite().then_some(value * multiplier)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn suffixes_scale_the_number() {
        assert_eq!(parse("100m"), Some(0.1));
        assert_eq!(parse("2"), Some(2.0));
        assert_eq!(parse("1Gi"), Some(1073741824.0));
        assert_eq!(parse("512Mi"), Some(536870912.0));
        assert_eq!(parse("1.5k"), Some(1500.0));
        assert_eq!(parse("2e3"), Some(2000.0));
        assert_eq!(parse("110"), Some(110.0));
        assert_eq!(parse("lots"), None);
        assert_eq!(parse("1Xi"), None);
        assert_eq!(parse(""), None);
    }
}
