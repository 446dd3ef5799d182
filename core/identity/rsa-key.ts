import { constants, generateKeyPair, privateEncrypt, type KeyObject } from 'node:crypto';
import { promisify } from 'node:util';
import type forge from 'node-forge';
import pLimit from 'p-limit';
import { AmbitError } from '../errors/index.js';

const generateKeyPairAsync = promisify(generateKeyPair);
/**
 * Keys generated at once, at most: each holds one of libuv's four threads for 50-400 ms, and the rest of the process
 * needs them too (zlib inflating the discovery stream, file reads). An agent that starts with 50 workloads queued 50
 * keys, and its snapshot's inflate waited behind them for seconds (bench/scale.ts).
 */
const KEYGEN_CONCURRENCY = 2;
const keygenSlots = pLimit(KEYGEN_CONCURRENCY);

// forge cannot sign with EC keys, so every key in the mesh is RSA of this size.
const RSA_MODULUS_BITS = 2048;
// DER of DigestInfo { sha256, NULL } without its 32-byte digest (RFC 8017 section 9.2, note 1).
const SHA256_DIGEST_INFO_PREFIX = Buffer.from('3031300d060960864801650304020105000420', 'hex');

export interface RsaKey {
  privateKey: KeyObject;
  /** PKCS#8 PEM, for `tls.createSecureContext({ key })`. */
  keyPem: string;
  /** SPKI PEM, for forge, which wants the public key as its own object. */
  publicKeyPem: string;
}

/** A fresh RSA key from OpenSSL, generated on libuv's thread pool (typically 50-400 ms, occasionally more). */
export async function generateRsaKey(): Promise<RsaKey> {
  const { privateKey, publicKey } = await keygenSlots(() => generateKeyPairAsync('rsa', { modulusLength: RSA_MODULUS_BITS }));
  return {
    privateKey,
    keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
  };
}

/**
 * What forge needs to sign a certificate or CSR with `key`: an object whose `sign(md)` returns the PKCS#1 v1.5
 * signature of the digest. forge's own RSA runs in JavaScript and blocks the event loop for about 30 ms per
 * signature; OpenSSL does it in about 1 ms, which matters for a CA answering every node at once. The key also
 * stays a Node KeyObject instead of being copied into forge's big integers.
 */
export function forgeSigner(key: KeyObject): forge.pki.rsa.PrivateKey {
  const signer = {
    sign(md: forge.md.MessageDigest): string {
      if (md.algorithm !== 'sha256') {
        throw new AmbitError('UNSUPPORTED_DIGEST', `cannot sign a ${md.algorithm} digest: Ambit signs with sha256 only`);
      }
      const digest = Buffer.from(md.digest().getBytes(), 'binary');
      const digestInfo = Buffer.concat([SHA256_DIGEST_INFO_PREFIX, digest]);
      return privateEncrypt({ key, padding: constants.RSA_PKCS1_PADDING }, digestInfo).toString('binary');
    },
  };
  // forge only ever calls sign() on the key it is given when it signs a certificate or a CSR.
  return signer as unknown as forge.pki.rsa.PrivateKey;
}
