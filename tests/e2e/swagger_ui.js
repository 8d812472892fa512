// Manual end-to-end check of the self-hosted Swagger UI and ReDoc pages in headless Chromium:
// loads /api/v1/docs, uses "Authorize" with a token, runs "Try it out" on GET /api/v1/tags and
// GET /api/v1/user, renders /api/v1/redoc, and fails on any blocked or failed request.
//
//   apt-get install chromium && npm install playwright-core@1
//   BASE=http://127.0.0.1:8000 TOKEN=<jwt from login> node tests/e2e/swagger_ui.js
const { chromium } = require('playwright-core');

const base = process.env.BASE || 'http://127.0.0.1:8000';
const token = process.env.TOKEN;

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
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  const problems = [];
  // ReDoc's bundle always asks cdn.redoc.ly for its footer logo; the CSP blocks it, as it
  // should: only failures of this server's own assets count.
  page.on('requestfailed', (r) => r.url().startsWith(base) && problems.push(`failed ${r.url()}`));
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
