// axe-core (pinned in package-lock.json) run inside a page: the browser tests fail on
// any serious or critical violation. The source is evaluated through the DevTools
// protocol, which the page's Content-Security-Policy does not apply to.

import axe from 'axe-core';

/** Runs axe on the page as it is now; returns its serious and critical violations. */
export async function seriousViolations(page) {
  const loaded = await page.evaluate(() => typeof window.axe?.run === 'function');
  if (!loaded) await page.evaluate(axe.source);
  const violations = await page.evaluate(async () => {
    const results = await window.axe.run(document, { resultTypes: ['violations'] });
    return results.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.slice(0, 5).map((n) => ({ target: n.target.join(' '), html: n.html, summary: n.failureSummary })),
    }));
  });
  return violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
}

/** Throws, listing them, when axe finds a serious or critical violation. */
export async function expectAccessible(page, screen) {
  const bad = await seriousViolations(page);
  if (bad.length > 0) {
    throw new Error(`axe-core ${axe.version}: ${bad.length} serious or critical violation(s) on ${screen}:\n${JSON.stringify(bad, null, 2)}`);
  }
}
