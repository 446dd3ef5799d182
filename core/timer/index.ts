/** The injectable timer that components take, so tests move time. */
export { realTimer, type SetTimer } from './timer.js';
