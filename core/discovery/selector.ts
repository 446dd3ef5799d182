import type { Labels } from './types.js';

/** Whether a label selector (matchLabels, or a Service's selector) matches `labels`: every pair must be present. */
export function selectorMatches(selector: Labels, labels: Labels): boolean {
  // for-in, not Object.entries: it runs for every connection, and labels are plain objects of own keys.
  for (const key in selector) {
    if (labels[key] !== selector[key]) return false;
  }
  return true;
}
