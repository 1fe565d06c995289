//! Trends of a series: the least-squares slope of its points (a volume or a
//! filesystem filling up, a rule's prediction).

/// The least-squares slope of `points` (x, y); `None` below two distinct x.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in points {
        num += (x - mean_x) * (y - mean_y);
        den += (x - mean_x) * (x - mean_x);
    }
    (den > 0.0).then(|| num / den)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trend_is_a_least_squares_slope() {
        assert_eq!(slope(&[]), None);
        assert_eq!(slope(&[(1.0, 5.0)]), None);
        assert_eq!(slope(&[(0.0, 10.0), (10.0, 0.0)]), Some(-1.0));
        assert_eq!(slope(&[(3.0, 1.0), (3.0, 2.0)]), None, "one x only");
        let noisy = [(0.0, 100.0), (1.0, 99.0), (2.0, 97.0), (3.0, 97.0)];
        let s = slope(&noisy).unwrap();
        assert!((s - -1.1).abs() < 1e-9, "{s}");
    }
}
