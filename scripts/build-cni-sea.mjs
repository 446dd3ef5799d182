// `npm run build:cni`: builds dist/ambit-cni, the CNI plugin as a single executable (cni/sea-build.ts does the work).
// Run after `npm run build`; a second run with nothing changed leaves the executable alone.
import { buildCniSea } from '../dist/cni/index.js';

try {
  const { outFile, built } = await buildCniSea({ force: process.argv.includes('--force'), log: (line) => console.log(line) });
  if (!built) console.log(`ambit-cni: nothing to do (${outFile}); --force rebuilds`);
} catch (err) {
  console.error(`ambit-cni: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
}
