//! Histograms of per-question values (entropies, weights) for TensorBoard's histogram and
//! distribution dashboards.

use super::proto::Histogram;

/// Buckets of a histogram: `tf.summary.histogram`'s default count.
pub const BUCKETS: usize = 30;

/// The histogram of the finite numbers in `values`: `BUCKETS` buckets of equal width from the
/// least to the greatest, bucket `i` counting the values in `(limit[i-1], limit[i]]` (the
/// first also its lower edge), as a `HistogramProto` reads. All values equal give one bucket.
/// `None` when no value is finite.
pub fn histogram(values: &[f64]) -> Option<Histogram> {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let min = finite.iter().copied().reduce(f64::min)?;
    let max = finite.iter().copied().reduce(f64::max)?;
    let buckets = if max > min { BUCKETS } else { 1 };
    let width = (max - min) / buckets as f64;
    // the last limit is the greatest value itself, whatever the rounding of min + n·width
    let bucket_limit: Vec<f64> = (1..=buckets)
        .map(|i| match i {
            i if i == buckets => max,
            i => min + i as f64 * width,
        })
        .collect();
    let mut bucket = vec![0.0; buckets];
    for &v in &finite {
        bucket[bucket_of(v, min, width, &bucket_limit)] += 1.0;
    }
    Some(Histogram {
        min,
        max,
        num: finite.len() as f64,
        sum: finite.iter().sum(),
        sum_squares: finite.iter().map(|v| v * v).sum(),
        bucket_limit,
        bucket,
    })
}

/// The first bucket whose upper limit is at least `v`: estimated from the width, then moved
/// to agree with the limits exactly where rounding put `v` next to one.
fn bucket_of(v: f64, min: f64, width: f64, limits: &[f64]) -> usize {
    let last = limits.len() - 1;
    let mut i = match width > 0.0 {
        true => (((v - min) / width).ceil() as usize)
            .saturating_sub(1)
            .min(last),
        false => 0,
    };
    while i > 0 && v <= limits[i - 1] {
        i -= 1;
    }
    while i < last && v > limits[i] {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_fall_in_the_bucket_their_upper_limit_closes() {
        // 0..=30 over 30 buckets of width 1: 0 and 1 in the first, k in bucket k-1
        let values: Vec<f64> = (0..=30).map(f64::from).collect();
        let h = histogram(&values).unwrap();
        assert_eq!(h.bucket_limit.len(), 30);
        assert_eq!(h.bucket[0], 2.0);
        assert!(h.bucket[1..].iter().all(|&c| c == 1.0), "{:?}", h.bucket);
        assert_eq!((h.min, h.max, h.num), (0.0, 30.0, 31.0));
        assert_eq!(h.sum, 465.0);
        assert_eq!(h.sum_squares, 9455.0); // n(n+1)(2n+1)/6 for n = 30
        assert_eq!(h.bucket_limit[29], 30.0);
    }

    #[test]
    fn equal_values_make_one_bucket_and_nan_is_left_out() {
        let h = histogram(&[0.5, 0.5, f64::NAN, 0.5]).unwrap();
        assert_eq!(h.bucket_limit, vec![0.5]);
        assert_eq!(h.bucket, vec![3.0]);
        assert_eq!(h.num, 3.0);
        assert!(histogram(&[]).is_none());
        assert!(histogram(&[f64::INFINITY]).is_none());
    }

    #[test]
    fn counts_add_up_for_awkward_widths() {
        let values: Vec<f64> = (0..1000)
            .map(|i| (f64::from(i) * 0.7).sin() * 1e-3)
            .collect();
        let h = histogram(&values).unwrap();
        // the counts of a plain scan for each value's first limit at or above it
        let mut want = vec![0.0; h.bucket_limit.len()];
        for &v in &values {
            want[h.bucket_limit.iter().position(|&l| v <= l).unwrap()] += 1.0;
        }
        assert_eq!(h.bucket, want);
        assert_eq!(h.bucket.iter().sum::<f64>(), 1000.0);
    }
}
