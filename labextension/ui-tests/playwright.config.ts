import { defineConfig } from '@playwright/test';

/**
 * Browser UI tests against a running JupyterLab (started by tests/test_ui_browser.py, which
 * passes IRONCAGE_LAB_URL / IRONCAGE_LAB_TOKEN). Browsers cannot be downloaded here: Debian's
 * chromium is used through executablePath; Playwright gives each launch a fresh temporary profile
 * (its own --user-data-dir).
 */
export default defineConfig({
  testDir: './tests',
  timeout: 180_000,
  expect: { timeout: 60_000 },
  fullyParallel: false,
  workers: 1,
  retries: 0,
  reporter: [['list']],
  outputDir: process.env.IRONCAGE_ARTIFACTS
    ? `${process.env.IRONCAGE_ARTIFACTS}/playwright-output`
    : '../../test-artifacts/ui/playwright-output',
  use: {
    baseURL: process.env.IRONCAGE_LAB_URL,
    headless: true,
    viewport: { width: 1400, height: 900 },
    screenshot: 'only-on-failure',
    trace: 'off',
    launchOptions: {
      executablePath: process.env.IRONCAGE_CHROMIUM || '/usr/bin/chromium',
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync'
      ]
    }
  }
});
