/** Typed errors: `AmbitError` with a stable `code` and its `cause`. Imports only Node's own modules, so the CNI plugin takes it. */
export { AmbitError, CONFIGURATION_ERROR_CODES, errnoCode, isAmbitError, parseFlags, usageError } from './errors.js';
