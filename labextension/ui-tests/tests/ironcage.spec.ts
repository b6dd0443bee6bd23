import { expect, Locator, Page, test } from '@playwright/test';

const TOKEN = process.env.IRONCAGE_LAB_TOKEN ?? '';
const ARTIFACTS = process.env.IRONCAGE_ARTIFACTS ?? '../test-artifacts/ui';

test.describe.configure({ mode: 'serial' });

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: `${ARTIFACTS}/${name}.png` });
}

/** Each test cell is found by a fragment of its source (see tests/test_ui_browser.py). */
const CELL_TEXT: Record<string, string> = {
  allowed: 'sum(range(10))',
  denied: 'id_rsa',
  approve: 'approved-%s',
  refuse: 'refused-%s'
};

function cell(page: Page, id: string): Locator {
  return page
    .locator('.jp-Notebook .jp-Cell')
    .filter({ has: page.locator('.jp-InputArea-editor', { hasText: CELL_TEXT[id] }) });
}

async function run(page: Page, id: string): Promise<void> {
  const target = cell(page, id);
  await target.locator('.jp-InputArea-editor').click();
  await page.keyboard.press('Escape'); // command mode: the cell stays selected
  await page.keyboard.press('Control+Enter');
}

test('Iron Cage UI: status, markers, escalation dialog, audit panel', async ({ page }) => {
  page.on('console', msg => {
    if (msg.type() === 'error' || msg.text().includes('Iron Cage')) {
      console.log(`[browser ${msg.type()}] ${msg.text()}`);
    }
  });
  await page.goto(`/lab/tree/ui_test.ipynb?token=${TOKEN}&reset`);

  // 1. the status bar shows the active policy, isolation and counts
  const status = page.locator('.ironcage-status');
  await expect(status).toBeVisible({ timeout: 60_000 });
  await expect(status).toContainText(/Iron Cage: \S+ \u00B7 (all|degraded|unsafe)/);
  if (process.env.IRONCAGE_KERNEL_MODE === 'fixture') {
    await expect(status).toContainText('ui-test');
  }
  await expect(status).toHaveAttribute('title', /Policy: .*\nIsolation: /);
  await shot(page, 'status-bar');

  // an allowed cell runs and gets no marker
  await run(page, 'allowed');
  await expect(cell(page, 'allowed').locator('.jp-OutputArea')).toContainText('total 45');
  await expect(cell(page, 'allowed')).not.toHaveClass(/ironcage-cell-denied/);

  // 2. a denied cell gets its marker, with rule and reason on hover
  await run(page, 'denied');
  const denied = cell(page, 'denied');
  await expect(denied).toHaveClass(/ironcage-cell-denied/);
  const marker = denied.locator('.ironcage-cell-marker');
  await expect(marker).toBeVisible();
  await expect(marker).toHaveAttribute('title', /denied[\s\S]*Rule: \S+[\s\S]*Reason: .+/);
  await expect(denied.locator('.jp-OutputArea')).not.toContainText('PRIVATE KEY');
  await expect(status).toContainText(/denied [1-9]/);
  await marker.hover();
  await shot(page, 'denied-cell');

  // 3a. an escalation dialog: approve once -> the cell runs
  await run(page, 'approve');
  const dialog = page.locator('.ironcage-escalation-dialog');
  await expect(dialog).toBeVisible();
  await expect(dialog.locator('.ironcage-esc-canonical')).not.toBeEmpty();
  await expect(dialog.locator('.ironcage-esc-rule')).not.toHaveText('(none)');
  await expect(dialog.locator('.ironcage-esc-reason')).not.toHaveText('(none)');
  await shot(page, 'escalation-dialog');
  await dialog.getByRole('button', { name: 'Approve once' }).click();
  await expect(dialog).toHaveCount(0);
  const approved = cell(page, 'approve');
  await expect(approved.locator('.jp-OutputArea')).toContainText('approved-42');
  await expect(approved).toHaveClass(/ironcage-cell-escalated/);
  await expect(approved).not.toHaveClass(/ironcage-cell-denied/);
  await expect(approved.locator('.ironcage-cell-marker')).toHaveAttribute('title', /approved once/);

  // 3b. an escalation dialog: deny -> the cell does not run and is marked denied
  await run(page, 'refuse');
  await expect(dialog).toBeVisible();
  await dialog.getByRole('button', { name: 'Deny' }).click();
  await expect(dialog).toHaveCount(0);
  const refused = cell(page, 'refuse');
  await expect(refused).toHaveClass(/ironcage-cell-denied/);
  await expect(refused).toHaveClass(/ironcage-cell-escalated/);
  await expect(refused.locator('.jp-OutputArea')).not.toContainText('refused-42');
  await expect(refused.locator('.ironcage-cell-marker')).toHaveAttribute('title', /denied by the user/);
  await expect(status).toContainText(/escalated [2-9]/);
  await shot(page, 'escalation-denied');

  // 4. the audit panel lists the events and filters them by decision and type
  await status.click();
  const panel = page.locator('#ironcage-audit-panel');
  await expect(panel).toBeVisible();
  const rows = panel.locator('.ironcage-audit-row');
  await expect(rows.first()).toBeVisible();
  const total = await rows.count();
  expect(total).toBeGreaterThanOrEqual(4);
  await expect(panel.locator('.ironcage-audit-row[data-decision="deny"]').first()).toBeVisible();
  await expect(panel.locator('.ironcage-audit-row[data-decision="allow"]').first()).toBeVisible();

  await panel.locator('select.ironcage-audit-decision').selectOption('deny');
  await expect(panel.locator('.ironcage-audit-row[data-decision="allow"]')).toHaveCount(0);
  await expect(panel.locator('.ironcage-audit-row[data-decision="deny"]').first()).toBeVisible();
  const deniedRows = await rows.count();
  expect(deniedRows).toBeLessThan(total);
  await shot(page, 'audit-panel');

  await panel.locator('select.ironcage-audit-decision').selectOption('');
  const firstType = (await rows.first().getAttribute('data-event-type')) ?? '';
  await panel.locator('select.ironcage-audit-type').selectOption(firstType);
  await expect(panel.locator(`.ironcage-audit-row:not([data-event-type="${firstType}"])`)).toHaveCount(0);
  await expect(rows.first()).toBeVisible();
  await shot(page, 'audit-panel-by-type');
});
