/** What a program's process does around its life: waiting for the signal to stop. */
export { untilStopSignal } from './signals.js';
