// Mutual TLS on every gRPC link: who is who (an identity in each
// certificate), loading and checking a CA + certificate + key before any
// connection is tried (so a wrong file is named, not a handshake failure),
// and the grpc-js credentials made from them. Plaintext is the caller's
// explicit choice (see Transport).
import { readFileSync } from "node:fs";
import { X509Certificate, createPrivateKey, type KeyObject } from "node:crypto";
import * as grpc from "@grpc/grpc-js";

/** What a certificate may stand for: the controller, one host's agent, or a person or program using the CLI. */
export type IdentityKind = "controller" | "agent" | "user";

/** Who a certificate identifies: `fleetwatch://agent/db-1`, `fleetwatch://user/alice`. */
export interface Identity {
  readonly kind: IdentityKind;
  readonly name: string;
}

const identityKinds: readonly IdentityKind[] = ["controller", "agent", "user"];
const identityPattern = /^fleetwatch:\/\/(controller|agent|user)\/([A-Za-z0-9_.@-]+)$/;

/** The URI a certificate carries in its subject alternative names. */
export function identityUri(identity: Identity): string {
  return `fleetwatch://${identity.kind}/${identity.name}`;
}

/** Renders an identity for people: `agent db-1`, `user alice`. */
export function describeIdentity(identity: Identity | undefined): string {
  return identity ? `${identity.kind} ${identity.name}` : "an unauthenticated (plaintext) caller";
}

/** The identity named by a subject-alternative-name list as Node renders it (`URI:…, DNS:…`); undefined when there is none or several. */
export function identityFromSubjectAltName(san: string | undefined): Identity | undefined {
  if (!san) return undefined;
  const found = san
    .split(/,\s*/)
    .filter((entry) => entry.startsWith("URI:"))
    .map((entry) => identityPattern.exec(entry.slice(4)))
    .filter((m): m is RegExpExecArray => m !== null);
  if (found.length !== 1) return undefined;
  return { kind: found[0]![1] as IdentityKind, name: found[0]![2]! };
}

/** Where the CA, this party's certificate and its key are. */
export interface TlsPaths {
  ca: string;
  cert: string;
  key: string;
}

/** A CA, certificate and key that were read and checked, with the identity the certificate holds. */
export interface TlsMaterial {
  readonly ca: Buffer;
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly identity: Identity;
  readonly notAfter: Date;
  readonly paths: TlsPaths;
}

/** How a daemon or client talks gRPC: mutual TLS, or plaintext chosen on purpose. */
export type Transport = { readonly tls: TlsMaterial } | { readonly plaintext: true };

/** A CA, certificate or key that cannot be used, with what to do about it. */
export class TlsConfigError extends Error {
  override readonly name = "TlsConfigError";
}

function readPem(what: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new TlsConfigError(`${what} ${file}: ${code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : String(err)}`, { cause: err });
  }
}

function parseCertificate(what: string, file: string, pem: Buffer): X509Certificate {
  try {
    return new X509Certificate(pem);
  } catch (err) {
    throw new TlsConfigError(`${what} ${file} is not a PEM certificate: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Reads and checks a CA, certificate and key: the key belongs to the
 * certificate, the CA signed it, it is valid now, and it names one
 * fleetwatch identity (of kind `expect` when given).
 */
export function loadTls(paths: TlsPaths, expect?: IdentityKind, nowMs = Date.now()): TlsMaterial {
  const caPem = readPem("CA", paths.ca);
  const certPem = readPem("certificate", paths.cert);
  const keyPem = readPem("key", paths.key);
  const ca = parseCertificate("CA", paths.ca, caPem);
  const cert = parseCertificate("certificate", paths.cert, certPem);
  let key: KeyObject;
  try {
    key = createPrivateKey(keyPem);
  } catch (err) {
    throw new TlsConfigError(`key ${paths.key} is not a PEM private key: ${(err as Error).message}`, { cause: err });
  }
  if (!cert.checkPrivateKey(key)) throw new TlsConfigError(`key ${paths.key} does not belong to certificate ${paths.cert}`);
  if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) throw new TlsConfigError(`certificate ${paths.cert} is not signed by the CA ${paths.ca}: use the CA that issued it, or issue a new one with \`fleetwatch certs issue\``);
  const notBefore = new Date(cert.validFrom);
  const notAfter = new Date(cert.validTo);
  if (nowMs > notAfter.getTime()) throw new TlsConfigError(`certificate ${paths.cert} expired on ${notAfter.toISOString()}: issue a new one with \`fleetwatch certs issue\``);
  if (nowMs < notBefore.getTime()) throw new TlsConfigError(`certificate ${paths.cert} is not valid before ${notBefore.toISOString()}: check this host's clock`);
  const identity = identityFromSubjectAltName(cert.subjectAltName);
  if (!identity) throw new TlsConfigError(`certificate ${paths.cert} names no fleetwatch identity (a URI fleetwatch://KIND/NAME, KIND one of ${identityKinds.join(", ")}): issue it with \`fleetwatch certs issue\``);
  if (expect && identity.kind !== expect) throw new TlsConfigError(`certificate ${paths.cert} identifies ${describeIdentity(identity)}, but this needs a ${expect} certificate`);
  return { ca: caPem, cert: certPem, key: keyPem, identity, notAfter, paths };
}

/** Server credentials that require a client certificate signed by the CA. */
export function serverCredentials(transport: Transport): grpc.ServerCredentials {
  if ("plaintext" in transport) return grpc.ServerCredentials.createInsecure();
  const { ca, cert, key } = transport.tls;
  return grpc.ServerCredentials.createSsl(ca, [{ cert_chain: cert, private_key: key }], true);
}

// The TLS server name clients ask for: controllers are known by the identity
// in their certificate (signed by the pinned CA), not by host names, so one
// certificate serves every address a controller is dialled by (IPs included).
const controllerServerName = "fleetwatch-controller";

/**
 * Client credentials that present our certificate, trust only the pinned CA,
 * and accept only a server whose certificate names a controller: an agent's
 * or user's certificate from the same CA cannot stand in for it. Use with
 * {@link channelOptions}.
 */
export function channelCredentials(transport: Transport): grpc.ChannelCredentials {
  if ("plaintext" in transport) return grpc.credentials.createInsecure();
  const { ca, cert, key } = transport.tls;
  return grpc.credentials.createSsl(ca, key, cert, {
    checkServerIdentity: (_serverName, peer) => {
      const identity = identityFromSubjectAltName(peer.subjectaltname);
      if (identity?.kind !== "controller") return new Error(`the server presented a certificate of ${describeIdentity(identity)}, not of a controller`);
      return undefined;
    },
  });
}

/** Channel options that go with {@link channelCredentials}. */
export function channelOptions(transport: Transport): grpc.ChannelOptions {
  return "plaintext" in transport ? {} : { "grpc.ssl_target_name_override": controllerServerName, "grpc.default_authority": controllerServerName };
}

/** Whether a host:port names this machine's loopback (plaintext may stay on it). */
export function isLoopbackAddress(address: string): boolean {
  const host = address.startsWith("[") ? address.slice(1, address.indexOf("]")) : address.slice(0, address.lastIndexOf(":"));
  return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}
