//! Inputs for the fuzz properties.

use proptest::prelude::*;

/// Tokens that matter to YAML and to the cluster file's values.
const TOKENS: &[&str] = &[
    ":",
    ": ",
    "- ",
    "\n",
    "\n  ",
    "\n    - ",
    "  ",
    "\t",
    "[",
    "]",
    "{",
    "}",
    ",",
    "'",
    "\"",
    "#",
    "&a ",
    "*a",
    "<<: *a",
    "!!str ",
    "!!binary ",
    "? ",
    "|\n",
    ">\n",
    "---\n",
    "...\n",
    "~",
    "null",
    "true",
    "no",
    "0",
    "-1",
    "0x10",
    "1e9",
    ".inf",
    "99999999999999999999",
    "65536",
    "10.0.0.0/8",
    "10.1.0.0/33",
    "300.1.2.3/24",
    "::1/128",
    "fe80::/10",
    "169.254.0.0/16",
    "198.51.100.0/24",
    "0.0.0.0/0",
    "auto",
    "openstack",
    "local",
    "master",
    "workers",
    "count",
    "subnet",
    "sites",
    "name",
    "tunnel",
    "mtu",
    "datasets",
    "slurm",
    "ñ",
    "🚀",
    "\u{0}",
    "\u{feff}",
];

#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    Replace(usize, usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(a, n)| Edit::Delete(a, n)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(a, t)| Edit::Insert(a, t)),
        any::<usize>().prop_map(Edit::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        (any::<usize>(), 0usize..12, 0..TOKENS.len()).prop_map(|(a, n, t)| Edit::Replace(a, n, t)),
    ]
}

fn at_char(s: &str, i: usize) -> usize {
    if s.is_empty() {
        return 0;
    }
    let mut i = i % (s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(mut s: String, e: &Edit) -> String {
    match *e {
        Edit::Delete(a, n) => {
            let a = at_char(&s, a);
            let b = at_char(&s, a.saturating_add(n).min(s.len()));
            if b > a {
                s.replace_range(a..b, "");
            }
            s
        }
        Edit::Insert(a, t) => {
            let a = at_char(&s, a);
            s.insert_str(a, TOKENS[t]);
            s
        }
        Edit::Replace(a, n, t) => {
            let a = at_char(&s, a);
            let b = at_char(&s, a.saturating_add(n).min(s.len())).max(a);
            s.replace_range(a..b, TOKENS[t]);
            s
        }
        Edit::DuplicateLine(i) => {
            let mut lines: Vec<&str> = s.lines().collect();
            if !lines.is_empty() {
                let i = i % lines.len();
                lines.insert(i, lines[i]);
            }
            lines.join("\n")
        }
        Edit::SwapLines(i, j) => {
            let mut lines: Vec<&str> = s.lines().collect();
            if !lines.is_empty() {
                let (i, j) = (i % lines.len(), j % lines.len());
                lines.swap(i, j);
            }
            lines.join("\n")
        }
    }
}

/// A fixture or example with up to 8 random edits, or arbitrary text.
pub fn mutated_cluster_file(seeds: Vec<String>) -> impl Strategy<Value = String> {
    let n = seeds.len().max(1);
    prop_oneof![
        8 => (0..n, prop::collection::vec(edit(), 1..8)).prop_map(move |(i, edits)| {
            let seed = seeds.get(i).cloned().unwrap_or_default();
            edits.iter().fold(seed, apply)
        }),
        1 => any::<String>(),
        1 => prop::collection::vec(prop::sample::select(TOKENS), 0..60).prop_map(|t| t.concat()),
    ]
}

/// A value of a relay's `hg_peer_<node>` metadata item: `<key> <endpoint> <allowed-ips>
/// <keepalive> <site>`, fields drawn from good, bad and odd ones.
pub fn peer_value() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=".to_owned()),
        Just("-".to_owned()),
        "[A-Za-z0-9+/=]{0,50}",
    ];
    let endpoint = prop_oneof![
        Just("203.0.113.10:51820".to_owned()),
        Just("-".to_owned()),
        Just("[::1]:1".to_owned()),
        "[0-9.:]{0,25}",
    ];
    let ips = prop_oneof![
        Just("10.0.0.2/32,10.20.0.0/24".to_owned()),
        Just("0.0.0.0/0".to_owned()),
        "[0-9./,]{0,40}",
    ];
    let field = "[ -~]{0,12}";
    prop_oneof![
        4 => (key, endpoint, ips, prop_oneof![Just("25".to_owned()), field.prop_map(String::from)], "[a-z-]{0,10}")
            .prop_map(|(k, e, a, ka, s)| format!("{k} {e} {a} {ka} {s}")),
        1 => any::<String>(),
    ]
}

/// A `meta_data.json` document (or something near one).
pub fn metadata_items() -> impl Strategy<Value = String> {
    let item = (
        prop_oneof![
            Just("hg_peer_a-master".to_owned()),
            Just("hg_config_version".to_owned()),
            "[a-z_-]{0,20}",
        ],
        peer_value(),
    );
    prop_oneof![
        4 => prop::collection::vec(item, 0..6).prop_map(|items| {
            let meta: serde_json::Map<String, serde_json::Value> = items
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
            serde_json::json!({ "uuid": "x", "meta": meta }).to_string()
        }),
        1 => any::<String>(),
        1 => "[{}\\[\\]\":, a-z0-9]{0,60}",
    ]
}
