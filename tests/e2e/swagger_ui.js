// Manual end-to-end check of the self-hosted Swagger UI and ReDoc pages in headless Chromium:
// loads /api/v1/docs, uses "Authorize" with a token (TOKEN) and with the OAuth2 password flow
// (USERNAME and PASSWORD), runs "Try it out" on GET /api/v1/tags and GET /api/v1/user after
// each, renders /api/v1/redoc, and fails on any blocked or failed request.
//
//   apt-get install chromium && npm install playwright-core@1
//   BASE=http://127.0.0.1:8000 TOKEN=<jwt from login> USERNAME=<email> PASSWORD=<password> \
//     node tests/e2e/swagger_ui.js
const { chromium } = require('playwright-core');

const base = process.env.BASE || 'http://127.0.0.1:8000';
const token = process.env.TOKEN;
const username = process.env.USERNAME;
const password = process.env.PASSWORD;

async function tryItOut(page, id) {
  const op = page.locator(`#${id}`);
  await op.locator('.opblock-summary').click();
  await op.locator('button.try-out__btn').click();
  await op.locator('button.execute').click();
  const status = op.locator('.live-responses-table tbody .response-col_status').first();
  await status.waitFor({ timeout: 10000 });
  return (await status.innerText()).trim();
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run'],
  });
  let page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  const problems = [];
  // ReDoc's bundle always asks cdn.redoc.ly for its footer logo; the CSP blocks it, as it
  // should: only failures of this server's own assets count.
  const track = (p) =>
    p.on('requestfailed', (r) => r.url().startsWith(base) && problems.push(`failed ${r.url()}`));
  track(page);
  await page.goto(`${base}/api/v1/docs`, { waitUntil: 'networkidle' });
  await page.waitForSelector('.opblock', { timeout: 15000 });
  console.log('operations shown:', await page.locator('.opblock').count());
  console.log('GET /api/v1/tags ->', await tryItOut(page, 'operations-Tags-getTags'));
  if (token) {
    await page.click('button.authorize');
    await page.fill('.auth-container input[type=text]', `Token ${token}`);
    await page.click('.auth-btn-wrapper button.authorize');
    await page.click('button.btn-done');
    console.log('GET /api/v1/user ->',
      await tryItOut(page, 'operations-User_and_Authentication-getCurrentUser'));
  }
  if (username && password) {
    // A fresh page: nothing authorized, no operation expanded.
    page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
    track(page);
    await page.goto(`${base}/api/v1/docs`, { waitUntil: 'networkidle' });
    await page.waitForSelector('.opblock', { timeout: 15000 });
    await page.click('button.authorize');
    const flow = page.locator('.auth-container', { has: page.locator('#oauth_username') });
    await flow.locator('#oauth_username').fill(username);
    await flow.locator('#oauth_password').fill(password);
    // A plain user may not ask for `admin` (invalid_scope): pick the scopes this check needs.
    for (const scope of ['articles:read', 'profile:read']) {
      await flow.locator(`label[for="${scope}-password-checkbox-OAuth2"]`).click();
    }
    await flow.locator('button.authorize').click();
    // Once authorized, the flow's form is replaced by its state and a Logout button.
    await page.locator('.modal-ux-content button.authorize', { hasText: 'Logout' }).first()
      .waitFor({ timeout: 10000 });
    await page.click('button.btn-done');
    console.log('OAuth2 password flow: authorized');
    console.log('GET /api/v1/user (OAuth2) ->',
      await tryItOut(page, 'operations-User_and_Authentication-getCurrentUser'));
  }
  await page.goto(`${base}/api/v1/redoc`, { waitUntil: 'networkidle' });
  await page.waitForSelector('.api-content', { timeout: 15000 });
  console.log('redoc rendered');
  await browser.close();
  if (problems.length) {
    console.error(problems.join('\n'));
    process.exit(1);
  }
})().catch((e) => {
  console.error('FAILED', e.message);
  process.exit(1);
});
