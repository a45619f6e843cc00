//! "Did you mean …" for misspelt keys and values.

/// The candidate closest to `input` by edit distance, if it is close enough to
/// be a plausible typo (at most a third of the word, and at least 1 edit allowed).
pub fn nearest<'a>(input: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let input_lower = input.to_ascii_lowercase();
    let budget = (input.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (distance(&input_lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, _)| *d <= budget)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance counting an adjacent transposition as one edit (optimal
/// string alignment), since swapped letters are the commonest typo.
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// Rewrites serde's "unknown field `x`, expected one of `a`, `b`" (and the
/// same for variants) into a message that leads with the likely intended name.
pub(crate) fn improve_serde_message(message: &str) -> String {
    let Some((kind, rest)) = message
        .strip_prefix("unknown field `")
        .map(|r| ("key", r))
        .or_else(|| message.strip_prefix("unknown variant `").map(|r| ("value", r)))
    else {
        return message.to_owned();
    };
    let Some((name, tail)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
    let listed = expected.iter().map(|e| format!("`{e}`")).collect::<Vec<_>>().join(", ");
    match nearest(name, expected.iter().copied()) {
        Some(best) => {
            format!("unknown {kind} `{name}`, did you mean `{best}`? (expected one of {listed})")
        }
        None if expected.is_empty() => {
            format!("unknown {kind} `{name}`, no {kind}s are allowed here")
        }
        None => format!("unknown {kind} `{name}`, expected one of {listed}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("same", "same"), 0);
        assert_eq!(distance("stael", "steal"), 1);
    }

    #[test]
    fn nearest_picks_typo_and_rejects_unrelated() {
        let keys = ["header_filter", "path_filter", "method_filter", "ports"];
        assert_eq!(nearest("heder_filter", keys), Some("header_filter"));
        assert_eq!(nearest("Path_Filter", keys), Some("path_filter"));
        assert_eq!(nearest("banana", keys), None);
    }

    #[test]
    fn serde_messages() {
        let m = improve_serde_message("unknown field `heder_filter`, expected one of `header_filter`, `path_filter`");
        assert_eq!(
            m,
            "unknown key `heder_filter`, did you mean `header_filter`? (expected one of `header_filter`, `path_filter`)"
        );
        let m = improve_serde_message("unknown variant `stael`, expected one of `mirror`, `steal`, `off`");
        assert!(m.starts_with("unknown value `stael`, did you mean `steal`?"), "{m}");
        assert_eq!(improve_serde_message("missing field `x`"), "missing field `x`");
    }
}
