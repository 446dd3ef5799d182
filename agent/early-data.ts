import type http2 from 'node:http2';
import { Gauge, type Registry } from 'prom-client';
import { HBONE_EARLY_DATA_STREAM_BYTES } from '../core/hbone/index.js';

/**
 * How many bytes of early data (the first bytes the source sends behind a CONNECT, before the 200) this agent holds
 * over all its streams. Each stream holds at most HBONE_EARLY_DATA_STREAM_BYTES; without a bound over all of them,
 * many sessions each opening their 100 streams could make the agent hold without limit while its pods' connects
 * wait. 256 streams at their own cap, at once.
 */
export const EARLY_DATA_AGENT_BYTES = 16 * 1024 * 1024;

/** The early data this agent holds now, against EARLY_DATA_AGENT_BYTES (exported as ambit_hbone_early_data_bytes). */
export class EarlyDataBudget {
  held = 0;

  constructor(registry: Registry) {
    const held = () => this.held;
    new Gauge({
      name: 'ambit_hbone_early_data_bytes',
      help: 'Bytes the agent holds for HBONE streams it has not answered yet (a client\'s first bytes)',
      registers: [registry],
      collect() {
        this.set(held());
      },
    });
  }
}

type EarlyDataRefusal = 'early_data_limit' | 'early_data_overload';

/**
 * A CONNECT stream's early data, read and counted while the destination connects to the pod: reading it, rather than
 * leaving it in the stream, is what makes the count exact (a stream that is not read still takes in its whole flow
 * control window). A stream past its own cap, or one whose bytes would take the agent past its cap, is refused: the
 * source agent keeps to HBONE_EARLY_DATA_STREAM_BYTES, so only a peer that does not is refused for its own bytes.
 */
export class EarlyData {
  readonly #stream: http2.ServerHttp2Stream;
  readonly #budget: EarlyDataBudget;
  readonly #onRefused: (reason: EarlyDataRefusal) => void;
  #chunks: Buffer[] = [];
  /** Everything the stream sent so far, and the part of it counted against the agent's budget (what is held). */
  #bytes = 0;
  #held = 0;
  #ended = false;
  refused = false;

  constructor(stream: http2.ServerHttp2Stream, budget: EarlyDataBudget, onRefused: (reason: EarlyDataRefusal) => void) {
    this.#stream = stream;
    this.#budget = budget;
    this.#onRefused = onRefused;
    stream.on('data', this.#onData);
    stream.once('end', this.#onEnd);
    stream.once('close', this.#onClose);
  }

  /** Stops holding: the bytes held so far, in order, and whether the client's end came behind them. */
  take(): { chunks: readonly Buffer[]; ended: boolean } {
    const chunks = this.#chunks;
    this.#release();
    return { chunks, ended: this.#ended };
  }

  /** Stops holding and forgets the bytes (a refusal, a failed connect). */
  drop(): void {
    this.#release();
  }

  readonly #onData = (chunk: Buffer) => {
    this.#bytes += chunk.length;
    if (this.#bytes > HBONE_EARLY_DATA_STREAM_BYTES) return this.#refuse('early_data_limit');
    if (this.#budget.held + chunk.length > EARLY_DATA_AGENT_BYTES) return this.#refuse('early_data_overload');
    this.#budget.held += chunk.length;
    this.#held += chunk.length;
    this.#chunks.push(chunk);
  };

  readonly #onEnd = () => {
    this.#ended = true;
  };

  readonly #onClose = () => this.#release();

  #refuse(reason: EarlyDataRefusal): void {
    this.refused = true;
    // What still arrives goes nowhere: the stream keeps flowing with no listener until the peer reads the refusal.
    this.#release();
    this.#onRefused(reason);
  }

  #release(): void {
    this.#stream.off('data', this.#onData);
    this.#stream.off('end', this.#onEnd);
    this.#stream.off('close', this.#onClose);
    this.#budget.held -= this.#held;
    this.#held = 0;
    this.#chunks = [];
  }
}
