//! `hybridgrid graph`: the SVG a user opens in a browser, rendered by a real one (Debian's
//! Chromium, headless), and the DOT and JSON forms.

// Helpers of an integration test: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn graph(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hybridgrid"))
        .arg("graph")
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The site boxes' fills, in site order (`graph::SITE_FILLS` of the CLI crate).
const FILLS: [[u8; 3]; 4] = [
    [0xdb, 0xea, 0xfe],
    [0xdc, 0xfc, 0xe7],
    [0xfe, 0xf3, 0xc7],
    [0xfc, 0xe7, 0xf3],
];

#[test]
fn graph_svg_of_three_sites_renders_in_chromium_with_three_site_boxes() {
    let chromium = Path::new("/usr/bin/chromium");
    let svg = graph(&["-f", "examples/three-sites.yaml", "--offline"]);
    assert!(svg.starts_with("<svg"), "{svg}");
    for site in ["bielefeld", "giessen", "heidelberg"] {
        assert!(svg.contains(site), "{site} missing from the SVG");
    }
    if !chromium.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no /usr/bin/chromium (scripts/setup.sh installs it); under CI=true this test fails"
        );
        eprintln!(
            "skipping the browser check: no /usr/bin/chromium (scripts/setup.sh installs it)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("three-sites.svg");
    std::fs::write(&file, &svg).unwrap();
    let shot = dir.path().join("shot.png");
    let out = Command::new("timeout")
        .arg("120")
        .arg(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1600,1200",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", file.display()))
        .output()
        .unwrap();
    assert!(
        shot.exists(),
        "chromium made no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let count = |rgb: [u8; 3]| {
        buf[..info.buffer_size()]
            .chunks(channels)
            .filter(|p| p.iter().zip(rgb).all(|(a, b)| a.abs_diff(b) <= 2))
            .count()
    };
    // Three boxes of 290 px width and > 100 px height each: well over 10,000 pixels of their fill.
    for (i, fill) in FILLS[..3].iter().enumerate() {
        let n = count(*fill);
        assert!(
            n > 10_000,
            "site {i}'s box fill {fill:?}: only {n} pixels in the screenshot"
        );
    }
    assert_eq!(
        count(FILLS[3]),
        0,
        "a fourth site box in a three-site cluster"
    );
}

#[test]
fn graph_dot_and_json_name_every_site_and_tunnel() {
    let dot = graph(&[
        "-f",
        "examples/three-sites.yaml",
        "--offline",
        "--format",
        "dot",
    ]);
    assert!(dot.starts_with("graph \"tri\" {"), "{dot}");
    for edge in [
        "\"bielefeld-master\" -- \"giessen-gw\"",
        "\"bielefeld-master\" -- \"heidelberg-gw\"",
        "\"giessen-gw\" -- \"heidelberg-gw\"",
    ] {
        assert!(dot.contains(edge), "no {edge} in:\n{dot}");
    }
    let json: serde_json::Value = serde_json::from_str(&graph(&[
        "-f",
        "examples/three-sites.yaml",
        "--offline",
        "--json",
    ]))
    .unwrap();
    assert_eq!(json["format_version"], 1);
    assert_eq!(json["observed"], false);
    assert_eq!(json["sites"].as_array().unwrap().len(), 3);
    assert_eq!(json["tunnels"].as_array().unwrap().len(), 3);
    assert!(
        json["tunnels"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["state"] == "unknown")
    );
}
