//! Timed rounds: the order of a round's commands from a balanced Latin square, their times
//! and medians, and each round's destinations.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::backup;

/// Writes every dirty page back (`sync`), so that the next timed step does not pay for the
/// write-back of the one before.
pub(crate) fn write_back() -> anyhow::Result<()> {
    backup::timed(&mut std::process::Command::new("sync")).map(|_| ())
}

/// The median of `times` (the mean of the middle two for an even count).
pub(crate) fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    (times[(n - 1) / 2] + times[n / 2]) / 2.0
}

/// Round `round`'s destinations under `root`: `names`, numbered.
pub(crate) fn numbered<const N: usize>(
    root: &Path,
    names: [&str; N],
    round: usize,
) -> [PathBuf; N] {
    names.map(|name| root.join(format!("{name}-{round}")))
}

/// Round `round`'s destinations, the round before's removed (timed, no longer needed).
pub(crate) fn next_round<const N: usize>(
    root: &Path,
    names: [&str; N],
    round: usize,
) -> anyhow::Result<[PathBuf; N]> {
    if let Some(before) = round.checked_sub(1) {
        for d in numbered(root, names, before) {
            if d.exists() {
                std::fs::remove_dir_all(&d).with_context(|| format!("removing {}", d.display()))?;
            }
        }
    }
    Ok(numbered(root, names, round))
}

/// A timed command of a round.
pub(crate) type Timed<'a> = Box<dyn FnMut() -> anyhow::Result<std::time::Duration> + 'a>;

/// The order of `n` commands in round `round` of a balanced Latin square (Williams' design):
/// over [`square_rounds`]`(n)` rounds every command takes every position equally often, and
/// every command directly follows every other equally often.
pub(crate) fn balanced_order(n: usize, round: usize) -> Vec<usize> {
    // The first row 0, 1, n-1, 2, n-2, ...; row r adds r to each (mod n); for odd n the
    // rows are followed by their reverses.
    let first: Vec<usize> = (0..n)
        .map(|i| {
            if i == 0 {
                0
            } else if i % 2 == 1 {
                i.div_ceil(2)
            } else {
                n - i / 2
            }
        })
        .collect();
    let r = round % square_rounds(n);
    let mut row: Vec<usize> = first.iter().map(|c| (c + r % n) % n).collect();
    if r >= n {
        row.reverse();
    }
    row
}

/// Rounds in one whole balanced Latin square of `n` commands.
pub(crate) fn square_rounds(n: usize) -> usize {
    if n.is_multiple_of(2) { n } else { 2 * n }
}

/// Rounds of a phase of `n` commands: `--backup-rounds`, or one whole square.
pub(crate) fn rounds_of(args_rounds: Option<usize>, n: usize) -> usize {
    args_rounds.unwrap_or_else(|| square_rounds(n))
}

/// Runs a round's timed commands in the order [`balanced_order`] gives round `round`, adds
/// each time to its list in `times`, and prints them.
pub(crate) fn timed_round<const N: usize>(
    round: usize,
    names: [&str; N],
    mut steps: [Timed<'_>; N],
    times: &mut [Vec<f64>; N],
) -> anyhow::Result<()> {
    let mut took = Vec::new();
    for i in balanced_order(N, round) {
        let t = steps[i]()?.as_secs_f64();
        times[i].push(t);
        took.push(format!("{} {t:.3} s", names[i]));
    }
    say!("  in this order: {}", took.join(", "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command in every position, and directly after every other command, equally
    /// often over one whole square; the count of commands odd and even.
    #[test]
    fn balanced_order_is_a_balanced_latin_square() {
        for n in 1..=7 {
            let rounds = square_rounds(n);
            let mut position = vec![vec![0; n]; n];
            let mut follows = vec![vec![0; n]; n];
            for r in 0..rounds {
                let row = balanced_order(n, r);
                let mut sorted = row.clone();
                sorted.sort();
                assert_eq!(
                    sorted,
                    (0..n).collect::<Vec<_>>(),
                    "n {n} round {r}: {row:?}"
                );
                for (p, &c) in row.iter().enumerate() {
                    position[c][p] += 1;
                }
                for w in row.windows(2) {
                    follows[w[0]][w[1]] += 1;
                }
            }
            let per_position = rounds / n;
            assert!(
                position.iter().flatten().all(|&k| k == per_position),
                "n {n}: {position:?}"
            );
            if n > 1 {
                let per_pair = rounds / n;
                for (a, row) in follows.iter().enumerate() {
                    for (b, &k) in row.iter().enumerate() {
                        let want = if a == b { 0 } else { per_pair };
                        assert_eq!(k, want, "n {n}: {a} before {b} {k} times: {follows:?}");
                    }
                }
            }
            // The square repeats past its last round.
            assert_eq!(balanced_order(n, rounds), balanced_order(n, 0));
        }
    }
}
