import type { Labels } from './types.js';

/** Whether a label selector (matchLabels, or a Service's selector) matches `labels`: every pair must be present. */
export function selectorMatches(selector: Labels, labels: Labels): boolean {
  for (const [key, value] of Object.entries(selector)) {
    if (labels[key] !== value) return false;
  }
  return true;
}
