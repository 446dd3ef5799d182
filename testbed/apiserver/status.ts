import { AmbitError } from '../../core/errors/index.js';
import type { JsonObject } from './types.js';

/**
 * A refusal the double answers with a Kubernetes Status object: `reason` and `httpStatus` are what clients match on
 * (client-node's Watch and the reflector look for 410 Expired, kubectl prints `message`). As every refusal of the
 * project it is an AmbitError, its stable code made from the reason: `KUBE_EXPIRED`, `KUBE_ALREADY_EXISTS`.
 */
export class StatusError extends AmbitError {
  readonly httpStatus: number;
  readonly reason: string;
  readonly details: JsonObject | undefined;

  constructor(httpStatus: number, reason: string, message: string, details?: JsonObject) {
    super(`KUBE_${reason.replace(/([a-z])([A-Z])/g, '$1_$2').toUpperCase()}`, message);
    this.name = 'StatusError';
    this.httpStatus = httpStatus;
    this.reason = reason;
    this.details = details;
  }

  toStatus(): JsonObject {
    return statusObject(this.httpStatus, this.reason, this.message, this.details);
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
