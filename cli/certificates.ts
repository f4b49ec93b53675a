// Issues the certificates of a fleet: a CA, and under it one certificate per
// party, each naming its identity as a URI (fleetwatch://agent/db-1). Keys
// are ECDSA P-256, written 0600; the CA key never leaves the directory it
// was made in.
import { webcrypto, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { readFile, writeFile, mkdir } from "node:fs/promises";
import path from "node:path";
import * as x509 from "@peculiar/x509";
import { identityUri, type Identity } from "../proto/index.js";
import { UsageError } from "./errors.js";

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

/** WebCrypto keys as the certificate library takes them. */
type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

const algorithm = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;
const dayMs = 24 * 3600 * 1000;

import { caCertFile, caKeyFile } from "./certificate-files.js";

export { caCertFile, caKeyFile, certificateBaseName } from "./certificate-files.js";

/** A CA able to issue: its certificate and signing key. */
export interface CertificateAuthority {
  readonly cert: x509.X509Certificate;
  readonly key: CryptoKey;
}

/** One issued certificate and its key, PEM. */
export interface Issued {
  readonly identity: Identity;
  readonly certPem: string;
  readonly keyPem: string;
  readonly notAfter: Date;
}

/** Validity of a certificate; tests give past dates to make expired ones. */
export interface Validity {
  notBefore?: Date;
  days?: number;
}

function window(validity: Validity): { notBefore: Date; notAfter: Date } {
  // A minute back: a host whose clock is slightly behind still accepts a new certificate.
  const notBefore = validity.notBefore ?? new Date(Date.now() - 60_000);
  return { notBefore, notAfter: new Date(notBefore.getTime() + (validity.days ?? 365) * dayMs) };
}

function serialNumber(): string {
  // Positive: the top bit clear.
  const bytes = randomBytes(16);
  bytes[0]! &= 0x7f;
  return bytes.toString("hex");
}

async function keyPem(key: CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", key));
  return `-----BEGIN PRIVATE KEY-----\n${der.toString("base64").match(/.{1,64}/g)!.join("\n")}\n-----END PRIVATE KEY-----\n`;
}

async function generateKeys(): Promise<CryptoKeyPair> {
  return webcrypto.subtle.generateKey(algorithm, true, ["sign", "verify"]);
}

/** A new self-signed CA (`name` in its subject). */
export async function createAuthority(name = "fleetwatch CA", validity: Validity = { days: 3650 }): Promise<CertificateAuthority & { certPem: string; keyPem: string }> {
  const keys = await generateKeys();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serialNumber(),
    name: `CN=${name}`,
    ...window(validity),
    keys,
    signingAlgorithm: algorithm,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { cert, key: keys.privateKey, certPem: cert.toString("pem"), keyPem: await keyPem(keys.privateKey) };
}

/**
 * Issues a certificate for one identity, named by a URI in its subject
 * alternative names (clients check a controller by that identity, not by
 * host name). A controller's certificate serves; the others are client
 * certificates only.
 */
export async function issueCertificate(ca: CertificateAuthority, identity: Identity, options: Validity = {}): Promise<Issued> {
  const keys = await generateKeys();
  const names: x509.JsonGeneralName[] = [{ type: "url", value: identityUri(identity) }];
  const serves = identity.kind === "controller";
  const { notBefore, notAfter } = window(options);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serialNumber(),
    subject: `CN=${identity.name}, OU=${identity.kind}`,
    issuer: ca.cert.subject,
    notBefore,
    notAfter,
    signingKey: ca.key,
    publicKey: keys.publicKey,
    signingAlgorithm: algorithm,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement, true),
      new x509.ExtendedKeyUsageExtension(serves ? [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth] : [x509.ExtendedKeyUsage.clientAuth]),
      new x509.SubjectAlternativeNameExtension(names),
      await x509.AuthorityKeyIdentifierExtension.create(ca.cert),
    ],
  });
  return { identity, certPem: cert.toString("pem"), keyPem: await keyPem(keys.privateKey), notAfter };
}

/** Reads the CA of a certificate directory, to issue more certificates under it. */
export async function readAuthority(dir: string): Promise<CertificateAuthority> {
  const certPath = path.join(dir, caCertFile);
  const keyPath = path.join(dir, caKeyFile);
  let certPem: string;
  let keyText: string;
  try {
    [certPem, keyText] = await Promise.all([readFile(certPath, "utf8"), readFile(keyPath, "utf8")]);
  } catch (err) {
    throw new UsageError(`${dir} holds no CA (${caCertFile} and ${caKeyFile}): create one with \`fleetwatch certs init --dir ${dir}\``, { cause: err });
  }
  const der = Buffer.from(keyText.replace(/-----[A-Z ]+-----/g, "").replace(/\s+/g, ""), "base64");
  let key: CryptoKey;
  try {
    key = await webcrypto.subtle.importKey("pkcs8", der, algorithm, false, ["sign"]);
  } catch (err) {
    throw new UsageError(`${keyPath} is not an ECDSA P-256 key made by \`fleetwatch certs init\``, { cause: err });
  }
  return { cert: new x509.X509Certificate(certPem), key };
}

/** Writes a certificate and key; refuses to replace existing files. Returns the paths. */
export async function writeIssued(dir: string, issued: { certPem: string; keyPem: string }, baseName: string): Promise<{ cert: string; key: string }> {
  const cert = path.join(dir, `${baseName}.crt`);
  const key = path.join(dir, `${baseName}.key`);
  for (const file of [cert, key]) if (existsSync(file)) throw new UsageError(`${file} exists already: remove it first to issue it again`);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFile(key, issued.keyPem, { mode: 0o600, flag: "wx" });
  await writeFile(cert, issued.certPem, { mode: 0o644, flag: "wx" });
  return { cert, key };
}
