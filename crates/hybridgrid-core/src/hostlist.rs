//! Slurm's host lists (`a-worker-[1-3,5],b-gw`), expanded as `scontrol show hostnames` does:
//! the controller's agent reads its partitions' members without a process per partition.

/// The names `list` stands for, in its order. Items are separated by commas outside brackets;
/// each bracket group (`[1-3,5]`, `[01-10]`: a range keeps its start's zero padding) multiplies
/// the names, several groups in one item as their product. A group that does not parse is
/// kept as written.
pub fn expand(list: &str) -> Vec<String> {
    items(list).into_iter().flat_map(expand_item).collect()
}

/// `list` split at the commas outside brackets.
fn items(list: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&list[start..]);
    out.into_iter().filter(|i| !i.is_empty()).collect()
}

/// One item: its first bracket group expanded, the rest of it recursively.
fn expand_item(item: &str) -> Vec<String> {
    let Some((open, close)) = item.find('[').zip(item.find(']')) else {
        return vec![item.to_owned()];
    };
    let Some(numbers) = (open < close)
        .then(|| group(&item[open + 1..close]))
        .flatten()
    else {
        return vec![item.to_owned()];
    };
    let (prefix, rest) = (&item[..open], &item[close + 1..]);
    let tails = expand_item(rest);
    numbers
        .iter()
        .flat_map(|n| tails.iter().map(move |t| format!("{prefix}{n}{t}")))
        .collect()
}

/// `1-3,5` or `01-10`: the numbers, as written (padded to the range start's width).
fn group(ranges: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for range in ranges.split(',') {
        let (from, to) = range.split_once('-').unwrap_or((range, range));
        let width = from.len();
        let (a, b): (u64, u64) = (from.parse().ok()?, to.parse().ok()?);
        if b < a || b - a > 1_000_000 {
            return None;
        }
        out.extend((a..=b).map(|n| format!("{n:0width$}")));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn ranges_lists_padding_and_products() {
        assert_eq!(
            expand("s0-worker-[1-3]"),
            ["s0-worker-1", "s0-worker-2", "s0-worker-3"]
        );
        assert_eq!(
            expand("a-worker-[1-2,5],b-gw"),
            ["a-worker-1", "a-worker-2", "a-worker-5", "b-gw"]
        );
        assert_eq!(expand("n[08-10]"), ["n08", "n09", "n10"]);
        assert_eq!(expand("r[1-2]n[1-2]"), ["r1n1", "r1n2", "r2n1", "r2n2"]);
        assert_eq!(expand("single"), ["single"]);
        assert_eq!(expand(""), Vec::<String>::new());
        assert_eq!(expand("odd[x-y]"), ["odd[x-y]"]);
    }
}
