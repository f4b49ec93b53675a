// Serves and calls protobuf-es service descriptors over @grpc/grpc-js: the
// generated descriptor drives every handler's and every client method's type,
// binary protobuf on the wire, deadlines and cancellation on every call.
import * as grpc from "@grpc/grpc-js";
import {
  create,
  fromBinary,
  toBinary,
  type DescMessage,
  type DescMethod,
  type DescService,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import { RpcError, type StatusFor } from "./errors.js";
import { capText } from "./text.js";
import { identityFromSubjectAltName, type Identity } from "./tls.js";

/** What a handler knows about its call. */
export interface CallContext {
  /** Aborted when the client cancels, its deadline passes or the connection drops. */
  readonly signal: AbortSignal;
  readonly metadata: grpc.Metadata;
  readonly peer: string;
  /** Who the client's certificate names; undefined over plaintext. */
  readonly identity: Identity | undefined;
}

type Handler<M> = M extends { methodKind: "unary"; input: infer I extends DescMessage; output: infer O extends DescMessage }
  ? (request: MessageShape<I>, ctx: CallContext) => Promise<MessageInitShape<O>>
  : M extends { methodKind: "server_streaming"; input: infer I extends DescMessage; output: infer O extends DescMessage }
    ? (request: MessageShape<I>, ctx: CallContext) => AsyncIterable<MessageInitShape<O>>
    : M extends { methodKind: "bidi_streaming"; input: infer I extends DescMessage; output: infer O extends DescMessage }
      ? (requests: AsyncIterable<MessageShape<I>>, ctx: CallContext) => AsyncIterable<MessageInitShape<O>>
      : never;

/** An implementation of every method of a generated service. */
export type ServiceImpl<S extends DescService> = {
  [K in keyof S["method"]]: Handler<S["method"][K]>;
};

/** Options of one client call. */
export interface CallOptions {
  /** Deadline from now; unary calls get `defaultDeadlineMs` when unset. */
  deadlineMs?: number;
  signal?: AbortSignal;
  metadata?: grpc.Metadata;
}

type ClientMethod<M> = M extends { methodKind: "unary"; input: infer I extends DescMessage; output: infer O extends DescMessage }
  ? (request: MessageInitShape<I>, options?: CallOptions) => Promise<MessageShape<O>>
  : M extends { methodKind: "server_streaming"; input: infer I extends DescMessage; output: infer O extends DescMessage }
    ? (request: MessageInitShape<I>, options?: CallOptions) => AsyncIterable<MessageShape<O>>
    : M extends { methodKind: "bidi_streaming"; input: infer I extends DescMessage; output: infer O extends DescMessage }
      ? (requests: AsyncIterable<MessageInitShape<I>>, options?: CallOptions) => AsyncIterable<MessageShape<O>>
      : never;

/** A typed client of a generated service. */
export type ServiceClient<S extends DescService> = {
  [K in keyof S["method"]]: ClientMethod<S["method"][K]>;
} & { close(): void };

/** Deadline of a unary call that names none. */
export const defaultDeadlineMs = 10_000;

// Keepalive, on purpose: an agent must learn within seconds that its
// controller is gone (and a controller that an agent is), even when the
// session carries nothing; pings every 10 s, declared dead after 5 s silence.
const keepaliveOptions: grpc.ChannelOptions = {
  "grpc.keepalive_time_ms": 10_000,
  "grpc.keepalive_timeout_ms": 5_000,
  "grpc.keepalive_permit_without_calls": 1,
};

// Answers may be big (a fleet-wide job lists every target: ~7 MB at 40,000),
// so clients accept up to 64 MiB; servers keep gRPC's 4 MiB for requests.
const clientOptions: grpc.ChannelOptions = {
  ...keepaliveOptions,
  "grpc.max_receive_message_length": 64 * 1024 * 1024,
};

function path(service: DescService, method: DescMethod): string {
  return `/${service.typeName}/${method.name}`;
}

function serializer<D extends DescMessage>(schema: D) {
  return (value: unknown): Buffer => {
    const message = create(schema, value as MessageInitShape<D>) as MessageShape<D>;
    const bytes = toBinary(schema, message);
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  };
}

function deserializer<D extends DescMessage>(schema: D) {
  return (bytes: Buffer): MessageShape<D> => fromBinary(schema, bytes);
}

/**
 * A request whose bytes are no message of its type. grpc-js answers a
 * deserializer that throws with INTERNAL; this stands in for the message
 * instead, and the call ends INVALID_ARGUMENT without reaching the handler.
 */
class MalformedRequest {
  readonly error: RpcError;
  constructor(typeName: string, cause: unknown) {
    const why = cause instanceof Error ? cause.message : String(cause);
    this.error = new RpcError(grpc.status.INVALID_ARGUMENT, `malformed ${typeName}: ${why}`, { cause });
  }
}

function requestDeserializer<D extends DescMessage>(schema: D) {
  return (bytes: Buffer): MessageShape<D> | MalformedRequest => {
    try {
      return fromBinary(schema, bytes);
    } catch (err) {
      return new MalformedRequest(schema.typeName, err);
    }
  };
}

/** A stream's requests; the first malformed one ends the iteration with its error (kept in `malformed`). */
function checkedRequests(call: grpc.ServerDuplexStream<unknown, unknown>): { requests: AsyncIterable<unknown>; malformed: () => RpcError | undefined } {
  let malformed: RpcError | undefined;
  async function* read() {
    try {
      // Not destroyed when the handler stops reading: the call still has to send its status.
      for await (const message of call.iterator({ destroyOnReturn: false })) {
        if (message instanceof MalformedRequest) {
          malformed = message.error;
          throw message.error;
        }
        yield message;
      }
    } catch (err) {
      // A client that goes away mid-stream is a cancelled call, not a fault of the handler.
      if ((err as NodeJS.ErrnoException)?.code === "ERR_STREAM_PREMATURE_CLOSE") throw new RpcError(grpc.status.CANCELLED, "the client closed the stream", { cause: err });
      throw err;
    }
  }
  return { requests: read(), malformed: () => malformed };
}

/**
 * Status details sent to clients are cut to this many bytes: an error that
 * quotes a client's 4 MB string must not become a 4 MB trailer (clients
 * refuse headers past a few KiB, and the status would be lost).
 */
export const maxStatusDetailsBytes = 1024;

/**
 * Details as grpc-js can send them: at most maxStatusDetailsBytes, and no
 * lone surrogate (grpc-js percent-encodes details with encodeURI, which
 * throws on one, and the throw ends the whole server process).
 */
function capDetails(details: string): string {
  return capText(details, maxStatusDetailsBytes);
}

type AnyServerCall = NodeJS.EventEmitter & { readonly metadata: grpc.Metadata; getPeer(): string; getAuthContext(): { sslPeerCertificate?: { subjectaltname?: string } } };

function contextOf(call: AnyServerCall): { ctx: CallContext; done: () => void } {
  const controller = new AbortController();
  const onCancel = () => controller.abort(new RpcError(grpc.status.CANCELLED, "call cancelled"));
  call.on("cancelled", onCancel);
  return {
    ctx: { signal: controller.signal, metadata: call.metadata, peer: call.getPeer(), identity: identityFromSubjectAltName(call.getAuthContext().sslPeerCertificate?.subjectaltname) },
    done: () => call.removeListener("cancelled", onCancel),
  };
}

async function writeAll<T>(call: grpc.ServerWritableStream<unknown, T> | grpc.ServerDuplexStream<unknown, T>, source: AsyncIterable<T>, signal: AbortSignal): Promise<void> {
  for await (const message of source) {
    if (signal.aborted) return;
    if (!call.write(message)) {
      await new Promise<void>((resolve) => {
        const done = () => {
          call.removeListener("drain", done);
          signal.removeEventListener("abort", done);
          resolve();
        };
        call.on("drain", done);
        signal.addEventListener("abort", done);
      });
    }
  }
}

/**
 * Ends a server stream with an error status. grpc-js sends the status from
 * the stream's end, which destroy() skips: the client would never hear it
 * (a standby's UNAVAILABLE kept an agent's session waiting until it gave up).
 * An "error" event records the status and ends the stream.
 */
function failStream(call: grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>, err: grpc.ServiceError): void {
  call.emit("error", err);
}

/**
 * Adds a service to a grpc-js server. `statusFor` is the one table that turns
 * the owner's errors into gRPC statuses; unknown errors become INTERNAL
 * without their text.
 */
export function addService<S extends DescService>(server: grpc.Server, service: S, impl: ServiceImpl<S>, statusFor: StatusFor): void {
  const definition: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  const implementation: grpc.UntypedServiceImplementation = {};
  const fail = (err: unknown): grpc.ServiceError => {
    const status = statusFor(err);
    const code = status.code;
    const details = capDetails(status.details);
    return Object.assign(new Error(details), { code, details, metadata: new grpc.Metadata() });
  };
  for (const method of service.methods) {
    const handler = (impl as Record<string, unknown>)[method.localName] as (...args: unknown[]) => unknown;
    definition[method.localName] = {
      path: path(service, method),
      requestStream: method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming",
      responseStream: method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming",
      requestSerialize: serializer(method.input),
      requestDeserialize: requestDeserializer(method.input),
      responseSerialize: serializer(method.output),
      responseDeserialize: deserializer(method.output),
      originalName: method.localName,
    };
    switch (method.methodKind) {
      case "unary":
        implementation[method.localName] = (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
          if (call.request instanceof MalformedRequest) return callback(fail(call.request.error));
          const { ctx, done } = contextOf(call);
          (handler(call.request, ctx) as Promise<unknown>).then(
            (response) => callback(null, response),
            (err: unknown) => callback(fail(err)),
          ).finally(done);
        };
        break;
      case "server_streaming":
        implementation[method.localName] = (call: grpc.ServerWritableStream<unknown, unknown>) => {
          if (call.request instanceof MalformedRequest) return failStream(call, fail(call.request.error));
          const { ctx, done } = contextOf(call);
          writeAll(call, handler(call.request, ctx) as AsyncIterable<unknown>, ctx.signal).then(
            () => call.end(),
            (err: unknown) => failStream(call, fail(err)),
          ).finally(done);
        };
        break;
      case "bidi_streaming":
        implementation[method.localName] = (call: grpc.ServerDuplexStream<unknown, unknown>) => {
          const { ctx, done } = contextOf(call);
          const { requests, malformed } = checkedRequests(call);
          writeAll(call, handler(requests, ctx) as AsyncIterable<unknown>, ctx.signal).then(
            () => {
              // The handler ended because a request was malformed: the client hears why.
              const err = malformed();
              if (err) failStream(call, fail(err));
              else call.end();
            },
            (err: unknown) => failStream(call, fail(err)),
          ).finally(done);
        };
        break;
      default:
        throw new Error(`${method.methodKind} methods are not supported (${path(service, method)})`);
    }
  }
  server.addService(definition as grpc.ServiceDefinition, implementation);
}

/** A grpc-js server with this project's keepalive settings. */
export function createServer(): grpc.Server {
  return new grpc.Server(keepaliveOptions);
}

/** Binds a server; returns the bound port (useful with port 0). */
export function bindServer(server: grpc.Server, address: string, credentials = grpc.ServerCredentials.createInsecure()): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, credentials, (err, port) => (err ? reject(err) : resolve(port)));
  });
}

function deadlineOf(options: CallOptions | undefined, fallbackMs: number | undefined): grpc.Deadline | undefined {
  const ms = options?.deadlineMs ?? fallbackMs;
  return ms === undefined ? undefined : Date.now() + ms;
}

function toRpcError(err: unknown): unknown {
  if (err && typeof err === "object" && "code" in err && typeof (err as grpc.ServiceError).code === "number") {
    const e = err as grpc.ServiceError;
    return new RpcError(e.code, e.details ?? e.message, { cause: err });
  }
  return err;
}

function bindSignal(call: { cancel(): void }, signal: AbortSignal | undefined): () => void {
  if (!signal) return () => {};
  if (signal.aborted) {
    call.cancel();
    return () => {};
  }
  const onAbort = () => call.cancel();
  signal.addEventListener("abort", onAbort, { once: true });
  return () => signal.removeEventListener("abort", onAbort);
}

async function* readAll<T>(call: AsyncIterable<unknown> & { cancel(): void }, unbind: () => void): AsyncGenerator<T> {
  try {
    for await (const message of call) yield message as T;
  } catch (err) {
    throw toRpcError(err);
  } finally {
    unbind();
    call.cancel();
  }
}

function drainOrClose(stream: NodeJS.EventEmitter): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      stream.removeListener("drain", done);
      stream.removeListener("close", done);
      resolve();
    };
    stream.on("drain", done);
    stream.on("close", done);
  });
}

/** Creates a typed client; `address` is host:port. */
export function createClient<S extends DescService>(service: S, address: string, credentials = grpc.credentials.createInsecure(), channelOptions: grpc.ChannelOptions = {}): ServiceClient<S> {
  const client = new grpc.Client(address, credentials, { ...clientOptions, ...channelOptions });
  const methods: Record<string, unknown> = { close: () => client.close() };
  for (const method of service.methods) {
    const p = path(service, method);
    const ser = serializer(method.input);
    const de = deserializer(method.output);
    switch (method.methodKind) {
      case "unary":
        methods[method.localName] = (request: unknown, options?: CallOptions) =>
          new Promise((resolve, reject) => {
            const call = client.makeUnaryRequest(p, ser, de, request as never, options?.metadata ?? new grpc.Metadata(), { deadline: deadlineOf(options, defaultDeadlineMs) }, (err, response) => {
              unbind();
              if (err) reject(toRpcError(err));
              else resolve(response);
            });
            const unbind = bindSignal(call, options?.signal);
          });
        break;
      case "server_streaming":
        methods[method.localName] = (request: unknown, options?: CallOptions) => {
          const call = client.makeServerStreamRequest(p, ser, de, request as never, options?.metadata ?? new grpc.Metadata(), { deadline: deadlineOf(options, undefined) });
          return readAll(call, bindSignal(call, options?.signal));
        };
        break;
      case "bidi_streaming":
        methods[method.localName] = (requests: AsyncIterable<unknown>, options?: CallOptions) => {
          const call = client.makeBidiStreamRequest(p, ser, de, options?.metadata ?? new grpc.Metadata(), { deadline: deadlineOf(options, undefined) });
          const unbind = bindSignal(call, options?.signal);
          let closed = false;
          call.once("close", () => (closed = true));
          void (async () => {
            try {
              for await (const message of requests) {
                if (closed) return;
                if (!call.write(message as Record<string, unknown>)) await drainOrClose(call);
              }
              if (!closed) call.end();
            } catch {
              call.cancel();
            }
          })();
          return readAll(call, unbind);
        };
        break;
      default:
        throw new Error(`${method.methodKind} methods are not supported (${p})`);
    }
  }
  return methods as ServiceClient<S>;
}

/** Splits `a:1,b:2` into addresses (controllers are given as a list for failover). */
export function parseAddressList(text: string): string[] {
  return text
    .split(",")
    .map((a) => a.trim())
    .filter(Boolean);
}

/**
 * A client over several addresses of the same service (a leader and its
 * standbys): each call goes to the address that answered last, and moves on
 * to the next one when a call fails UNAVAILABLE (unreachable, or a standby
 * naming its leader) before any answer. Other statuses are the answer.
 */
export function createFailoverClient<S extends DescService>(service: S, addresses: readonly string[], credentials = grpc.credentials.createInsecure(), channelOptions: grpc.ChannelOptions = {}): ServiceClient<S> {
  if (addresses.length === 0) throw new RpcError(grpc.status.INVALID_ARGUMENT, "no controller address given");
  if (addresses.length === 1) return createClient(service, addresses[0]!, credentials, channelOptions);
  const clients = addresses.map((a) => createClient(service, a, credentials, channelOptions) as unknown as Record<string, (...args: unknown[]) => unknown> & { close(): void });
  let current = 0;
  const unavailable = (err: unknown) => err instanceof RpcError && err.code === grpc.status.UNAVAILABLE;
  const methods: Record<string, unknown> = { close: () => clients.forEach((c) => c.close()) };
  for (const method of service.methods) {
    const name = method.localName;
    if (method.methodKind === "unary") {
      methods[name] = async (request: unknown, options?: CallOptions) => {
        let last: unknown;
        for (let tried = 0; tried < clients.length; tried++) {
          const index = (current + tried) % clients.length;
          try {
            const response = await (clients[index]![name] as (r: unknown, o?: CallOptions) => Promise<unknown>)(request, options);
            current = index;
            return response;
          } catch (err) {
            if (!unavailable(err)) throw err;
            last = err;
          }
        }
        throw last;
      };
    } else if (method.methodKind === "server_streaming") {
      methods[name] = (request: unknown, options?: CallOptions) =>
        (async function* () {
          let last: unknown;
          for (let tried = 0; tried < clients.length; tried++) {
            const index = (current + tried) % clients.length;
            let received = false;
            try {
              for await (const message of (clients[index]![name] as (r: unknown, o?: CallOptions) => AsyncIterable<unknown>)(request, options)) {
                received = true;
                current = index;
                yield message;
              }
              return;
            } catch (err) {
              if (received || !unavailable(err)) throw err;
              last = err;
            }
          }
          throw last;
        })();
    } else {
      methods[name] = (...args: unknown[]) => (clients[current]![name] as (...a: unknown[]) => unknown)(...args);
    }
  }
  return methods as ServiceClient<S>;
}
