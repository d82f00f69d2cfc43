// The web console walk-through in Debian's chromium (driven by the Rust test
// crates/weft-control/tests/it/console_browser.rs, which starts weft-control and checks the
// results through the API and the CLI). Prints one JSON line with what it saw.
//
// Environment: WEFT_URL, WEFT_API_KEY, WEFT_NODE_ID, WEFT_NEW_NAME, WEFT_BAD_POLICY,
// WEFT_GOOD_POLICY, WEFT_EXPLAIN_SRC, WEFT_EXPLAIN_DST, WEFT_EXPLAIN_PROTO, WEFT_WEB_ARTIFACTS.
import { launch, screenshot } from './lib/browser.mjs';

const env = (k) => {
  const v = process.env[k];
  if (v === undefined) throw new Error(`${k} is not set`);
  return v;
};
const base = env('WEFT_URL');
const apiKey = env('WEFT_API_KEY');
const out = {};

async function api(path) {
  const r = await fetch(`${base}/api/v1${path}`, {
    headers: { Authorization: `Bearer ${apiKey}` },
    signal: AbortSignal.timeout(10_000),
  });
  if (!r.ok) throw new Error(`GET ${path}: ${r.status} ${await r.text()}`);
  return r.json();
}

// Clicks a submit button and waits for the page it leads to.
async function submit(page, selector) {
  await Promise.all([page.waitForNavigation({ waitUntil: 'load', timeout: 15_000 }), page.click(selector)]);
}

const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.setDefaultTimeout(15_000);
  const cspViolations = [];
  page.on('console', (m) => {
    if (m.type() === 'error') cspViolations.push(m.text());
  });
  page.on('response', (r) => {
    if (r.status() === 404) cspViolations.push(`404 ${r.url()}`);
  });

  // Sign in with the admin API key.
  await page.goto(`${base}/admin`);
  if (!page.url().endsWith('/admin/signin')) throw new Error(`not sent to sign-in: ${page.url()}`);
  await screenshot(page, 'console-signin');
  await page.fill('input[name=api_key]', apiKey);
  await submit(page, 'button[type=submit]');
  if (!page.url().endsWith('/admin/machines')) throw new Error(`after sign-in: ${page.url()}`);
  const cookies = await page.context().cookies();
  out.cookie = cookies.find((c) => c.name === '__Host-weft-console') || null;

  // Rename a node.
  const row = `tr[data-node="${env('WEFT_NODE_ID')}"]`;
  await page.fill(`${row} input[name=name]`, env('WEFT_NEW_NAME'));
  await submit(page, `${row} form[action$="/rename"] button`);
  out.renameNotice = (await page.textContent('#notice')).trim();
  out.shownName = (await page.textContent(`${row} .name`)).trim();
  await screenshot(page, 'console-machines');

  // Create a pre-auth key: its secret is shown once.
  await page.goto(`${base}/admin/keys`);
  await page.selectOption('#new-key select[name=user]', 'alice');
  await page.check('#new-key input[name=reusable]');
  await submit(page, '#new-key button[type=submit]');
  out.secret = (await page.textContent('#secret')).trim();
  await screenshot(page, 'console-keys-created');
  await page.goto(`${base}/admin/keys`);
  out.secretShownAgain = (await page.content()).includes(out.secret);

  // Edit the policy with an error: shown at its line, nothing saved.
  const before = await api('/policy');
  await page.goto(`${base}/admin/policy`);
  out.highlighted = await page.locator('.editor.js pre.hl span.tk-s').count();
  await page.fill('#policy', env('WEFT_BAD_POLICY'));
  await submit(page, '#check');
  out.errorLine = Number(await page.getAttribute('#policy-error', 'data-line'));
  out.errorColumn = Number(await page.getAttribute('#policy-error', 'data-column'));
  out.errorText = (await page.textContent('#policy-error .marker')).trim();
  out.saveOfferedForBad = (await page.locator('#save').count()) > 0;
  await screenshot(page, 'console-policy-error');
  const afterError = await api('/policy');
  out.versionBefore = before.version;
  out.versionAfterError = afterError.version;

  // Fix it: the check passes, the diff shows, save.
  await page.fill('#policy', env('WEFT_GOOD_POLICY'));
  await submit(page, '#check');
  out.checkResult = (await page.textContent('#check-result')).trim();
  out.diffAdded = await page.locator('#diff .add').allTextContents();
  out.diffRemoved = await page.locator('#diff .del').allTextContents();
  await screenshot(page, 'console-policy-diff');
  await submit(page, '#save');
  out.saveNotice = (await page.textContent('#notice')).trim();
  out.savedVersion = (await api('/policy')).version;

  // Roll back to the version before.
  await submit(page, `#history tr[data-version="${before.version}"] button`);
  out.rollbackNotice = (await page.textContent('#notice')).trim();
  const rolled = await api('/policy');
  out.rolledBackVersion = rolled.version;
  out.rolledBackText = rolled.policy;

  // Explain a flow.
  await page.fill('#explain input[name=src]', env('WEFT_EXPLAIN_SRC'));
  await page.fill('#explain input[name=dst]', env('WEFT_EXPLAIN_DST'));
  await page.fill('#explain input[name=proto]', env('WEFT_EXPLAIN_PROTO'));
  await submit(page, '#explain button');
  out.verdict = (await page.textContent('#verdict')).trim();
  out.explanation = await page.textContent('#explanation');
  await screenshot(page, 'console-policy');

  for (const p of ['users', 'apikeys', 'dns', 'audit']) {
    await page.goto(`${base}/admin/${p}`);
    await screenshot(page, `console-${p}`);
  }
  out.auditRows = await page.locator('#audit tr').count() - 1;

  // Sign out: the console is closed again.
  await submit(page, 'header form button');
  await page.goto(`${base}/admin/machines`);
  out.afterSignOut = new URL(page.url()).pathname;
  out.consoleErrors = cspViolations;
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(out) + '\n');
