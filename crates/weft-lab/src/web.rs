//! The web tests' real peers, from `tests/web` (installed by `.ci/run` with
//! `npm ci --prefix tests/web`): Node.js scripts that run a certified OpenID Provider
//! (`oidc-provider`) and drive Debian's chromium through `playwright-core`. Every browser is
//! started by `tests/web/lib/browser.mjs` (`launch`, `screenshot`), never by a test of its own.
//!
//! A test names what it needs in its first line, so that a machine without them skips (or, with
//! `WEFT_E2E=1`, fails) with a reason:
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use weft_lab::web;
//! let lab = weft_lab::e2e_lab!("node", web::CHROMIUM, web::PLAYWRIGHT);
//! # Ok(()) }
//! ```
//!
//! and runs a script with [`web::script`](script) (an absolute path for `node`), in a namespace
//! or on the host, with `WEFT_WEB_ARTIFACTS` set to where screenshots go.

use std::path::PathBuf;

/// The browser: Debian's chromium (package `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// `tests/web` of this repository: the npm project of the web tests.
pub const WEB_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/web");

/// Present when `npm ci --prefix tests/web` has installed Playwright.
pub const PLAYWRIGHT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/web/node_modules/playwright-core/package.json"
);

/// Present when `npm ci --prefix tests/web` has installed the OpenID Provider.
pub const OIDC_PROVIDER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/web/node_modules/oidc-provider/package.json"
);

/// The absolute path of `tests/web/<name>` (a script to give to `node`).
pub fn script(name: &str) -> PathBuf {
    let dir = PathBuf::from(WEB_DIR);
    dir.canonicalize().unwrap_or(dir).join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_point_into_the_repository() {
        assert!(
            script("package.json").is_file(),
            "{}",
            script("package.json").display()
        );
        assert!(script("lib/browser.mjs").is_file());
        assert!(PLAYWRIGHT.ends_with("playwright-core/package.json"));
    }
}
