export { SerialRuns } from './serial-runs.js';
