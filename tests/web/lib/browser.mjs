// The one way the web tests start a browser: Debian's chromium (never a downloaded one), driven
// by playwright-core, headless, with everything that would reach outside the test's network off
// (background networking, component updates, sync, QUIC), a fresh profile per launch.
//
//   import { launch, screenshot } from './lib/browser.mjs';
//   const browser = await launch();
//   const page = await browser.newPage();
//   ...
//   await screenshot(page, 'console-machines');   // $WEFT_WEB_ARTIFACTS/console-machines.png
//   await browser.close();
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

export const CHROMIUM = process.env.WEFT_CHROMIUM || '/usr/bin/chromium';

export async function launch(options = {}) {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-dev-shm-usage',
    ],
    timeout: 30_000,
    ...options,
  });
}

// Saves a full-page PNG as $WEFT_WEB_ARTIFACTS/<name>.png (when that variable is set) and
// returns its path, or null.
export async function screenshot(page, name) {
  const dir = process.env.WEFT_WEB_ARTIFACTS;
  if (!dir) return null;
  mkdirSync(dir, { recursive: true });
  const path = join(dir, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}
