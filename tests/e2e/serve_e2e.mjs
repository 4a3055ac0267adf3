// Drives `sae serve`'s page in headless Chromium (Debian's /usr/bin/chromium)
// with playwright-core: types text and waits for coloured tokens, opens a
// dashboard and checks its histogram, runs a steered generation and a concept
// search, and saves a screenshot of each page.
// Usage: node serve_e2e.mjs URL OUT_DIR [LATENT]
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const [url, out, latentArg] = process.argv.slice(2);
const latent = latentArg ?? '3';
// Optional overrides (README screenshots): E2E_TEXT (appended to the live text), E2E_SCALE, E2E_CONCEPTS.
const env = process.env;
mkdirSync(out, { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
let failed = false;
const check = (ok, what) => {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failed = true;
};
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById('info').textContent.includes('latents'));
  check(true, 'page loads and reads /api/info');

  // Live visualizer: type, see coloured tokens appear; markup stays text.
  await page.click('#tab-live');
  await page.fill('#live-latent', latent);
  await page.type('#live-text', 'Once upon a time, Lily saw a <script>window.pwned=1</script> dog.' + (env.E2E_TEXT ?? ''), { delay: 15 });
  await page.waitForFunction(() => document.querySelectorAll('#live-tokens .tok').length > 10);
  const live = await page.evaluate(() => {
    const toks = [...document.querySelectorAll('#live-tokens .tok')];
    return {
      n: toks.length,
      coloured: toks.filter((t) => t.style.background && t.style.background !== 'transparent').length,
      text: toks.map((t) => t.textContent).join(''),
      scripts: document.querySelectorAll('#live-tokens script').length,
      pwned: window.pwned === 1,
    };
  });
  check(live.n > 10, `live: ${live.n} tokens shown`);
  check(live.coloured > 0, `live: ${live.coloured} tokens coloured by latent ${latent}`);
  check(live.text.includes('<script>') && live.scripts === 0 && !live.pwned, 'live: "<script>" is shown as text, never run');
  await page.hover('#live-tokens .tok:nth-child(3)');
  await page.waitForSelector('#live-top tr');
  check((await page.locator('#live-top tr').count()) > 0, 'live: hovering a token lists its top latents');
  await page.screenshot({ path: `${out}/live.png`, fullPage: true });

  // Feature browser: open a dashboard, see its histogram.
  await page.click('#tab-features');
  await page.fill('#feature-query', latent);
  await page.click('#feature-go');
  await page.waitForSelector('#hist rect');
  const bars = await page.locator('#hist rect').count();
  check(bars > 0, `dashboard: histogram with ${bars} bars`);
  check((await page.locator('#dashboard .ctx').count()) > 0, 'dashboard: top contexts shown');
  await page.screenshot({ path: `${out}/features.png`, fullPage: true });

  // Steering playground: both columns.
  await page.click('#tab-steer');
  await page.fill('#gen-terms .term-latent', latent);
  await page.fill('#gen-terms .term-scale', env.E2E_SCALE ?? '30');
  await page.fill('#gen-steps', '64');
  await page.click('#gen-run');
  await page.waitForFunction(() => document.getElementById('gen-steered').textContent.length > 20 &&
                                   document.getElementById('gen-unsteered').textContent.length > 20);
  const cols = await page.evaluate(() => [document.getElementById('gen-unsteered').textContent,
                                          document.getElementById('gen-steered').textContent]);
  check(cols[0].startsWith('Once upon a time') && cols[1].startsWith('Once upon a time'), 'steering: both columns start with the prompt');
  check(cols[0] !== cols[1], 'steering: the steered column differs');
  await page.screenshot({ path: `${out}/steering.png`, fullPage: true });

  // Concept search.
  await page.click('#tab-concepts');
  await page.fill('#concept-texts', env.E2E_CONCEPTS ?? 'Lily ran to her mom.\nTom hugged his mom.\nHer mom was happy.');
  await page.fill('#concept-contrast', 'The sun was warm.\nThe bird sang in the tree.');
  await page.click('#concept-run');
  await page.waitForSelector('#concept-table tr:nth-child(2)');
  const rows = await page.locator('#concept-table tr').count();
  check(rows > 1, `concepts: ${rows - 1} ranked latents`);
  check((await page.locator('#concept-results .heat .tok').count()) > 0, 'concepts: heatmaps shown');
  await page.screenshot({ path: `${out}/concepts.png`, fullPage: true });
  check(errors.length === 0, `no page errors ${errors.join('; ')}`);
} catch (e) {
  check(false, String(e));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
