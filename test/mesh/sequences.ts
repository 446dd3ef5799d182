import fc from 'fast-check';

interface Tap {
  fail(message: string): void;
  equal(found: unknown, wanted: unknown, message: string): void;
}

export interface SequenceCheck<S> {
  readonly step: fc.Arbitrary<S>;
  readonly maxLength: number;
  readonly seed: number;
  readonly cases: number;
  /** The first way a sequence goes wrong, undefined when it does not. */
  readonly failureOf: (steps: readonly S[]) => string | undefined;
  /** What a step is, for the count line: "batches", "changes". */
  readonly what: string;
  readonly size?: fc.SizeForArbitrary;
}

/** Random step sequences from a fixed seed; a failure prints the seed, the shrunk steps and what went wrong. */
export function checkSequences<S>(t: Tap, check: SequenceCheck<S>): void {
  const details = fc.check(
    fc.property(fc.array(check.step, { minLength: 1, maxLength: check.maxLength, ...(check.size === undefined ? {} : { size: check.size }) }), (steps) => check.failureOf(steps) === undefined),
    { seed: check.seed, numRuns: check.cases },
  );
  if (details.failed) {
    const steps = details.counterexample?.[0] ?? [];
    t.fail(
      [
        `AMBIT_PROPERTY_SEED=${details.seed}; shrunk ${details.numShrinks} times to ${steps.length} steps:`,
        ...steps.map((s) => JSON.stringify(s)),
        check.failureOf(steps) ?? String(details.errorInstance),
      ].join('\n'),
    );
  }
  t.equal(details.numRuns, check.cases, `${details.numRuns} sequences of up to ${check.maxLength} ${check.what}`);
}
