import { StringDecoder } from 'node:string_decoder';
import { AmbitError } from '../errors/index.js';

/**
 * Splits a byte stream of JSON lines (a watch, the discovery stream) into lines, holding at most `maxLength`
 * characters of an unfinished one: a peer that sends a line without end must not grow memory without bound. UTF-8
 * split across chunks is decoded whole.
 */
export class LineSplitter {
  readonly #decoder = new StringDecoder('utf8');
  readonly #maxLength: number;
  readonly #code: string;
  readonly #what: string;
  /** The pieces of the unfinished line, kept apart: joining them at every chunk would be quadratic in its length. */
  #partial: string[] = [];
  #partialLength = 0;

  /** `code` and `what` name the refusal of an over-long line: `K8S_WATCH_LINE_TOO_LONG`, `a watch line`. */
  constructor(options: { maxLength: number; code: string; what: string }) {
    this.#maxLength = options.maxLength;
    this.#code = options.code;
    this.#what = options.what;
  }

  /** The complete lines the chunk ends, without their newlines; empty lines are dropped. */
  push(chunk: Buffer | string): string[] {
    const text = typeof chunk === 'string' ? chunk : this.#decoder.write(chunk);
    const lines: string[] = [];
    let start = 0;
    for (let end = text.indexOf('\n'); end !== -1; end = text.indexOf('\n', start)) {
      this.#partial.push(text.slice(start, end));
      const line = this.#partial.join('');
      this.#partial = [];
      this.#partialLength = 0;
      if (line.trim() !== '') lines.push(line);
      start = end + 1;
    }
    const rest = text.slice(start);
    if (rest !== '') {
      this.#partial.push(rest);
      this.#partialLength += rest.length;
    }
    if (this.#partialLength > this.#maxLength) throw new AmbitError(this.#code, `${this.#what} is longer than ${this.#maxLength} characters`);
    return lines;
  }

  /** Whether bytes of an unfinished line are held: a stream that ends here was cut. */
  get pending(): boolean {
    return this.#partial.join('').trim() !== '';
  }
}
