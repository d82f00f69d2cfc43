// Follows a login URL in the browser and signs in at the test IdP (idp.mjs): fills
// oidc-provider's sign-in form, consents, and stops on the first page that is not the IdP's.
//
//   node oidc-login.mjs <url> <login> <password> <shot-prefix>
//
// Screenshots (to $WEFT_WEB_ARTIFACTS): <prefix>-idp-login.png, <prefix>-result.png.
// Prints one JSON line: {"url", "status", "title", "text"} of the final page. Every step is bounded.
import { launch, screenshot } from './lib/browser.mjs';

const [url, login, password, prefix] = process.argv.slice(2);
if (!url || !login || !prefix) {
  console.error('usage: node oidc-login.mjs <url> <login> <password> <shot-prefix>');
  process.exit(2);
}
const idpOrigin = process.env.IDP_ORIGIN || '';
const browser = await launch();
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(15_000);
  let status = null;
  page.on('response', (r) => { if (r.request().isNavigationRequest() && r.request().frame() === page.mainFrame()) status = r.status(); });
  await page.goto(url, { waitUntil: 'load' });
  let shotLogin = false;
  for (let step = 0; step < 6; step++) {
    const onIdp = idpOrigin ? page.url().startsWith(idpOrigin) : page.url().includes('/interaction/');
    if (!onIdp) break;
    if (await page.locator('input[name=login]').count()) {
      if (!shotLogin) { await screenshot(page, `${prefix}-idp-login`); shotLogin = true; }
      await page.fill('input[name=login]', login);
      await page.fill('input[name=password]', password || 'password');
    }
    await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click('button[type=submit]')]);
  }
  await screenshot(page, `${prefix}-result`);
  const title = await page.title();
  const text = (await page.locator('body').innerText()).replace(/\s+/g, ' ').trim();
  console.log(JSON.stringify({ url: page.url(), status, title, text }));
} finally {
  await browser.close();
}
