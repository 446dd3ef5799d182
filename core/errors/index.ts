/** Typed errors: `AmbitError` with a stable `code` and its `cause`. Imports nothing, so the CNI plugin takes it. */
export { AmbitError, CONFIGURATION_ERROR_CODES, errnoCode, isAmbitError, usageError } from './errors.js';
