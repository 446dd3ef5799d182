import type { JsonObject } from './types.js';

/**
 * A refusal the double answers with a Kubernetes Status object: `reason` and `code` are what clients match on
 * (client-node's Watch and the reflector look for 410 Expired, kubectl prints `message`).
 */
export class StatusError extends Error {
  readonly code: number;
  readonly reason: string;
  readonly details: JsonObject | undefined;

  constructor(code: number, reason: string, message: string, details?: JsonObject) {
    super(message);
    this.name = 'StatusError';
    this.code = code;
    this.reason = reason;
    this.details = details;
  }

  toStatus(): JsonObject {
    return statusObject(this.code, this.reason, this.message, this.details);
  }
}

export function statusObject(code: number, reason: string, message: string, details?: JsonObject): JsonObject {
  const status: JsonObject = { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code };
  if (details !== undefined) status.details = details;
  return status;
}

export function notFound(resource: string, name: string, group = ''): StatusError {
  const what = group === '' ? resource : `${resource}.${group}`;
  return new StatusError(404, 'NotFound', `${what} "${name}" not found`, { name, group, kind: resource });
}

export function badRequest(message: string): StatusError {
  return new StatusError(400, 'BadRequest', message);
}

/** What an expired resourceVersion or continue token gets: the reflector relists on it. */
export function expired(message: string): StatusError {
  return new StatusError(410, 'Expired', message);
}
