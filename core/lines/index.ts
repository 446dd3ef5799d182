/** Bounded line splitting of JSON-lines streams. */
export { LineSplitter } from './lines.js';
