// A line-oriented remote control for one headless Chromium page, used by the Rust browser tests
// (tests/src/browser.rs). Each line on stdin is a JSON command {"id", "op", ...}; each answer is
// one JSON line {"id", "ok": true, "value"} or {"id", "ok": false, "error"} on stdout. The page's
// uncaught errors and console messages (CSP violations among them) are kept for `problems`.
//
// Needs `playwright-core` (scripts/ensure-deps installs it; found through NODE_PATH) and
// Debian's chromium (CHROMIUM, default /usr/bin/chromium). Nothing is downloaded.
'use strict';

const readline = require('readline');
const { chromium } = require('playwright-core');

const TIMEOUT_MS = Number(process.env.DRIVER_TIMEOUT_MS || 20000);

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  const problems = { page_errors: [], console: [] };
  page.on('pageerror', (e) => problems.page_errors.push(String(e && e.message)));
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') problems.console.push(`${m.type()}: ${m.text()}`);
  });

  const ops = {
    goto: async (c) => { const r = await page.goto(c.url); return r ? r.status() : null; },
    fill: async (c) => { await page.fill(c.selector, c.value); return null; },
    click: async (c) => { await page.click(c.selector); return null; },
    check: async (c) => { await page.check(c.selector); return null; },
    wait: async (c) => {
      await page.waitForSelector(c.selector, { state: c.state || 'visible', timeout: c.timeout_ms || TIMEOUT_MS });
      return null;
    },
    wait_text: async (c) => {
      await page.waitForFunction(
        ([sel, want]) => { const n = document.querySelector(sel); return Boolean(n && n.textContent.includes(want)); },
        [c.selector, c.contains],
        { timeout: c.timeout_ms || TIMEOUT_MS },
      );
      return page.textContent(c.selector);
    },
    text: async (c) => page.textContent(c.selector),
    attr: async (c) => page.getAttribute(c.selector, c.name),
    count: async (c) => page.locator(c.selector).count(),
    visible: async (c) => page.isVisible(c.selector),
    screenshot: async (c) => { await page.screenshot({ path: c.path, fullPage: Boolean(c.full_page) }); return c.path; },
    problems: async () => problems,
    close: async () => { await browser.close(); return null; },
  };

  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (!line.trim()) continue;
    let cmd = {};
    let answer;
    try {
      cmd = JSON.parse(line);
      const op = ops[cmd.op];
      if (!op) throw new Error(`unknown op ${cmd.op}`);
      answer = { id: cmd.id, ok: true, value: await op(cmd) };
    } catch (e) {
      answer = { id: cmd.id, ok: false, error: String((e && e.message) || e) };
    }
    process.stdout.write(JSON.stringify(answer) + '\n');
    if (cmd.op === 'close') break;
  }
  await browser.close().catch(() => {});
}

main().catch((e) => {
  process.stderr.write(`driver: ${(e && e.stack) || e}\n`);
  process.exit(1);
});
