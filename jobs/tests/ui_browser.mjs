// The `kiln ui` pages in a real browser (Debian's chromium driven by playwright-core), run by
// jobs/tests/ui.rs against a `kiln ui` it started on a store of real runs:
//
//   node ui_browser.mjs BASE_URL SCREENSHOT_DIR JOB FAILED_RUN_ID REJECTED_RUN_ID GOOD_RUN_ID
//
// Environment: KILN_NODE_DIR (where `npm install playwright-core` put node_modules),
// KILN_CHROMIUM (the browser, default /usr/bin/chromium).
//
// Asserts what a person sees (computed colours, visible text, drawn charts) and that the
// pages load nothing from anywhere but the ui; writes grid.png, run.png, model.png,
// training.png and dataset.png; prints one JSON line of what it saw.

import { createRequire } from 'node:module';
import path from 'node:path';
import assert from 'node:assert/strict';

const [base, shots, job, failedRun, rejectedRun, goodRun] = process.argv.slice(2);
const require = createRequire(path.join(process.env.KILN_NODE_DIR, 'noop.js'));
const { chromium } = require('playwright-core');

const browser = await chromium.launch({
  executablePath: process.env.KILN_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-background-networking', '--disable-gpu'],
});
const seen = {};
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const foreign = [];
  page.on('request', (r) => {
    if (!r.url().startsWith(base)) foreign.push(r.url());
  });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  const open = async (p) => {
    const resp = await page.goto(base + p, { waitUntil: 'load' });
    assert.equal(resp.status(), 200, `${p}: HTTP ${resp.status()}`);
  };
  const shot = (name) => page.screenshot({ path: path.join(shots, name), fullPage: true });
  const jobUrl = `/jobs/${encodeURIComponent(job)}`;

  // The grid: the failed run's sensor cell is red and says failed; its downstream tasks
  // are orange (upstream_failed); the cell links to the attempt's log.
  await open(jobUrl);
  const failedDate = await page
    .locator(`td.cell.run a[href$="/runs/${failedRun}"]`)
    .locator('xpath=..')
    .getAttribute('data-date');
  const failedCell = page.locator(
    `td.cell[data-task="sensor:next_day"][data-date="${failedDate}"]`,
  );
  await failedCell.waitFor({ state: 'visible' });
  const failedColour = await failedCell.evaluate((e) => getComputedStyle(e).backgroundColor);
  assert.equal(failedColour, 'rgb(211, 47, 47)', 'the failed cell is red');
  const failedText = (await failedCell.innerText()).trim();
  assert.match(failedText, /failed/);
  const upstream = page.locator(`td.cell[data-task="features"][data-date="${failedDate}"]`);
  assert.equal(
    await upstream.evaluate((e) => getComputedStyle(e).backgroundColor),
    'rgb(245, 124, 0)',
    'the tasks after it are upstream_failed (orange)',
  );
  const green = await page
    .locator('td.cell[data-status="success"]')
    .evaluateAll((es) => es.map((e) => getComputedStyle(e).backgroundColor));
  assert.ok(green.length >= 5 && green.every((c) => c === 'rgb(46, 125, 50)'), green.join());
  const logHref = await failedCell.locator('a').getAttribute('href');
  assert.match(logHref, new RegExp(`/runs/${failedRun}/log/\\d+$`));
  seen.grid = { failedDate, failedText, cells: await page.locator('td.cell').count() };
  await shot('grid.png');

  // Clicking the failed cell opens the attempt's log.
  await failedCell.locator('a').click();
  await page.waitForURL(base + logHref);
  assert.match(await page.locator('body').innerText(), /task sensor:next_day · attempt 1 · failed/);

  // The failed run: its error, the failed task.
  await open(`${jobUrl}/runs/${failedRun}`);
  assert.match(await page.locator('#run-error').innerText(), /sensor `next_day`/);
  assert.match(
    await page.locator('#tasks tr[data-task="sensor:next_day"]').innerText(),
    /failed/,
  );

  // The rejected run: the gate's failed rules, the lineage to version 3 (rejected).
  await open(`${jobUrl}/runs/${rejectedRun}`);
  const failedRules = await page.locator('#gate-rules tr[data-outcome="fail"]').count();
  assert.ok(failedRules >= 1, 'a failed gate rule is shown');
  const lineage = await page.locator('#lineage').innerText();
  assert.match(lineage, /Inputs[\s\S]*Dataset[\s\S]*Model/);
  assert.match(lineage, /rejected/);
  seen.run = { failedRules, lineage: lineage.slice(0, 200) };
  await shot('run.png');

  // The model: stable and rejected labels on their versions, metric charts drawn.
  await open(`${jobUrl}/model`);
  const stable = (await page.locator('#stable').innerText()).trim();
  const stableRow = await page.locator(`#versions tr[data-version="${stable.slice(1)}"] .labels`).innerText();
  assert.match(stableRow, /stable/);
  const rejectedRow = await page.locator('#versions tr:has(.badge[data-status="rejected"])').count();
  assert.ok(rejectedRow >= 1, 'a rejected version is labelled');
  const chart = page.locator('.chart[data-metric="auc"] svg');
  await chart.waitFor({ state: 'visible' });
  const box = await chart.boundingBox();
  assert.ok(box.width > 300 && box.height > 150, JSON.stringify(box));
  const series = await page.locator('.chart svg path.series').evaluateAll((ps) =>
    ps.map((p) => p.getAttribute('d')),
  );
  assert.ok(series.length >= 2 && series.every((d) => /^M[\d.]+,[\d.]+( L[\d.]+,[\d.]+)+$/.test(d)), series.join('|'));
  seen.model = { stable, stableRow, series: series.length };
  await shot('model.png');

  // Training curves of the good run: the loss chart is drawn with points.
  await open(`${jobUrl}/runs/${goodRun}/training`);
  const loss = page.locator('.chart[data-tag="train/loss"] svg');
  await loss.waitFor({ state: 'visible' });
  const points = await loss.locator('circle').count();
  assert.ok(points >= 2, `loss points: ${points}`);
  assert.match(await page.locator('#eval').innerText(), /eval\/auc/);
  seen.training = { points };
  await shot('training.png');

  // The dataset: histograms with the previous day's drawn over them.
  await open(`${jobUrl}/runs/${goodRun}/dataset`);
  const hist = await page.locator('tr[data-column="price"] svg.histogram rect.bar').count();
  const baseline = await page.locator('svg.histogram rect.baseline').count();
  assert.ok(hist >= 5 && baseline >= 5, `bars ${hist}, baseline ${baseline}`);
  seen.dataset = { hist, baseline };
  // The first screenful: a page per column would be a tall image.
  await page.screenshot({ path: path.join(shots, 'dataset.png') });

  assert.deepEqual(foreign, [], 'the pages load nothing from elsewhere');
  assert.deepEqual(errors, [], 'no script errors');
  console.log(JSON.stringify(seen));
} finally {
  await browser.close();
}
