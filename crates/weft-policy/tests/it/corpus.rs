//! The parser against a corpus of policies: every file in `corpus/valid`
//! must parse, and every file in `corpus/invalid` must fail with exactly the
//! message in its `.err` file (file:line:column: path: message).
//!
//! `WEFT_BLESS=1 cargo test -p weft-policy --test corpus` rewrites the `.err`
//! files; review the diff before committing.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use weft_policy::Policy;

fn files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hujson"))
        .collect();
    out.sort();
    out
}

#[test]
fn every_valid_policy_parses() {
    let files = files("valid");
    assert!(files.len() >= 5);
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        if let Err(e) = Policy::parse(&text) {
            panic!("{}: {e}", path.display());
        }
    }
}

#[test]
fn every_malformed_policy_gets_its_exact_error() {
    let bless = std::env::var_os("WEFT_BLESS").is_some();
    let files = files("invalid");
    assert!(files.len() >= 40);
    let mut mismatches = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        let got = match Policy::parse_named(name, &text) {
            Ok(_) => format!("{name}: unexpectedly valid"),
            Err(e) => e.to_string(),
        };
        let err_path = path.with_extension("err");
        if bless {
            std::fs::write(&err_path, format!("{got}\n")).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&err_path).unwrap_or_default();
        if got != want.trim_end() {
            mismatches.push(format!(
                "{name}\n  want: {}\n  got:  {got}",
                want.trim_end()
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn the_default_policy_is_valid_and_allows_everything() {
    let p = Policy::default_allow_all();
    assert_eq!(p.text(), weft_policy::DEFAULT_POLICY);
    assert_eq!(p.acls.len(), 1);
    assert!(p.ssh.is_empty());
    assert!(
        p.text().contains("//"),
        "the default policy explains itself in comments"
    );
}
