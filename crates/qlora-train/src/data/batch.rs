//! Rows (one sample each, or several packed into `max_len`) served as padded micro-batches.
//! The order is a pure function of the seed and the micro-batch number: epoch `e` visits the
//! rows in a Fisher-Yates permutation drawn from `seed + e`, so a resumed run only needs the
//! number of micro-batches already consumed to continue with exactly the same batches.
//! The PRNG is splitmix64, written here, so the order does not change with a `rand` upgrade.

use super::tokenize::Tokenized;

/// One row of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub ids: Vec<u32>,
    pub targets: Vec<bool>,
}

/// A padded micro-batch, row-major `[rows, seq]`. `labels[r, t]` is the id that position `t`
/// must predict (`ids[r, t+1]`), with `weights[r, t]` 1 where that token is trained, else 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub rows: usize,
    pub seq: usize,
    pub ids: Vec<u32>,
    pub labels: Vec<u32>,
    pub weights: Vec<f32>,
    /// Real (non-padding) tokens in the batch.
    pub tokens: usize,
}

impl Batch {
    /// Tokens that carry loss.
    pub fn target_count(&self) -> usize {
        self.weights.iter().filter(|w| **w > 0.0).count()
    }
}

/// splitmix64: small, fast, and fixed forever.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform float in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A seeded permutation of `0..n`.
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64(seed);
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// One row per sample.
pub fn unpacked(samples: &[&Tokenized]) -> Vec<Row> {
    samples.iter().map(|t| Row { ids: t.ids.clone(), targets: t.targets.clone() }).collect()
}

/// Packs samples (in a seeded order) greedily into rows of at most `max_len` tokens. Each
/// sample's first token is never a target: it would be predicted from the previous sample.
pub fn packed(samples: &[&Tokenized], max_len: usize, seed: u64) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut cur = Row { ids: Vec::new(), targets: Vec::new() };
    for i in permutation(samples.len(), seed) {
        let t = samples[i];
        if !cur.ids.is_empty() && cur.ids.len() + t.ids.len() > max_len {
            rows.push(std::mem::replace(&mut cur, Row { ids: Vec::new(), targets: Vec::new() }));
        }
        cur.ids.extend_from_slice(&t.ids);
        cur.targets.push(false);
        cur.targets.extend_from_slice(&t.targets[1..]);
    }
    if !cur.ids.is_empty() {
        rows.push(cur);
    }
    rows
}

/// Serves micro-batches of rows in the seeded epoch order.
#[derive(Debug, Clone)]
pub struct Batcher {
    rows: Vec<Row>,
    micro_batch: usize,
    seed: u64,
    pad: u32,
}

impl Batcher {
    pub fn new(rows: Vec<Row>, micro_batch: usize, seed: u64, pad: u32) -> Self {
        Self { rows, micro_batch: micro_batch.max(1), seed, pad }
    }

    pub fn row_count(&self) -> usize {
        self.rows.len()
    }

    /// Micro-batches in one pass over the rows.
    pub fn batches_per_epoch(&self) -> usize {
        self.rows.len().div_ceil(self.micro_batch)
    }

    /// The `k`-th micro-batch of the run (0-based), crossing epochs as needed. Rows of one
    /// epoch are never mixed with the next: the last batch of an epoch may be smaller.
    pub fn micro_batch(&self, k: usize) -> (Batch, usize) {
        let per_epoch = self.batches_per_epoch();
        let epoch = k / per_epoch;
        let first = (k % per_epoch) * self.micro_batch;
        let order = permutation(self.rows.len(), self.seed.wrapping_add(epoch as u64));
        let last = (first + self.micro_batch).min(self.rows.len());
        let rows: Vec<&Row> = order[first..last].iter().map(|&i| &self.rows[i]).collect();
        (collate(&rows, self.pad), epoch)
    }

    /// Every row once, in order, in batches (for the validation loss).
    pub fn all_in_order(&self) -> Vec<Batch> {
        self.rows.chunks(self.micro_batch).map(|c| collate(&c.iter().collect::<Vec<_>>(), self.pad)).collect()
    }
}

/// Pads rows on the right to the longest and shifts targets into labels.
pub fn collate(rows: &[&Row], pad: u32) -> Batch {
    let seq = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
    let n = rows.len() * seq;
    let (mut ids, mut labels, mut weights) = (vec![pad; n], vec![0u32; n], vec![0f32; n]);
    for (r, row) in rows.iter().enumerate() {
        let base = r * seq;
        ids[base..base + row.ids.len()].copy_from_slice(&row.ids);
        for t in 0..row.ids.len().saturating_sub(1) {
            if row.targets[t + 1] {
                labels[base + t] = row.ids[t + 1];
                weights[base + t] = 1.0;
            }
        }
    }
    let tokens = rows.iter().map(|r| r.ids.len()).sum();
    Batch { rows: rows.len(), seq, ids, labels, weights, tokens }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(ids: &[u32], targets: &[bool]) -> Tokenized {
        Tokenized { ids: ids.to_vec(), targets: targets.to_vec(), full_len: ids.len() }
    }

    #[test]
    fn permutation_is_seeded_and_complete() {
        let a = permutation(10, 1);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..10).collect::<Vec<_>>());
        assert_eq!(a, permutation(10, 1));
        assert_ne!(a, permutation(10, 2));
    }

    #[test]
    fn collate_shifts_targets_into_labels_and_pads() {
        let a = Row { ids: vec![1, 2, 3], targets: vec![false, false, true] };
        let b = Row { ids: vec![4, 5], targets: vec![false, true] };
        let batch = collate(&[&a, &b], 9);
        assert_eq!(batch.ids, vec![1, 2, 3, 4, 5, 9]);
        assert_eq!(batch.labels, vec![0, 3, 0, 5, 0, 0]);
        assert_eq!(batch.weights, vec![0., 1., 0., 1., 0., 0.]);
        assert_eq!(batch.target_count(), 2);
    }

    #[test]
    fn packing_fills_rows_and_masks_sample_starts() {
        let s = [tok(&[1, 2], &[true, true]), tok(&[3, 4, 5], &[true, true, true]), tok(&[6], &[true])];
        let refs: Vec<&Tokenized> = s.iter().collect();
        let rows = packed(&refs, 4, 0);
        let total: usize = rows.iter().map(|r| r.ids.len()).sum();
        assert_eq!(total, 6);
        assert!(rows.iter().all(|r| r.ids.len() <= 4));
        let starts = rows.iter().flat_map(|r| r.targets.iter()).filter(|t| !**t).count();
        assert_eq!(starts, 3, "each sample's first token is masked");
    }

    #[test]
    fn batches_are_a_function_of_their_index() {
        let rows: Vec<Row> = (0..5).map(|i| Row { ids: vec![i, i + 1], targets: vec![true, true] }).collect();
        let b = Batcher::new(rows, 2, 7, 0);
        assert_eq!(b.batches_per_epoch(), 3);
        let (last, e0) = b.micro_batch(2);
        assert_eq!((last.rows, e0), (1, 0));
        let (_, e1) = b.micro_batch(3);
        assert_eq!(e1, 1);
        assert_eq!(b.micro_batch(4).0, b.clone().micro_batch(4).0);
        // one epoch visits every row once
        let mut firsts: Vec<u32> = (0..3).flat_map(|k| b.micro_batch(k).0.ids.chunks(2).map(|c| c[0]).collect::<Vec<_>>()).collect();
        firsts.sort();
        assert_eq!(firsts, vec![0, 1, 2, 3, 4]);
    }
}
