/** A lean WebSocket client for the realtime bench (RFC 6455: handshake, unmasked server
 * frames in, masked frames out, ping answered).
 *
 * Why not `ws` here: the bench's 1,000 clients share the two cores with what they measure,
 * and `ws` spends most of a client's CPU per message on its stream and event machinery
 * (a Writable per socket, an event and a Buffer per message), which made the clients the
 * largest CPU consumer of the run. This reader walks the frames of each socket read in place
 * and hands the caller a view of each text frame; the gateway and the product use `ws`. */
import { createHash, randomBytes } from 'node:crypto';
import { request } from 'node:http';
import type { Socket } from 'node:net';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

export const enum Opcode {
  Continuation = 0,
  Text = 1,
  Binary = 2,
  Close = 8,
  Ping = 9,
  Pong = 10,
}

export type FrameHandler = (opcode: number, payload: Buffer) => void;

/** Splits a byte stream into frames; `push` each read. Payloads are views of the read (valid
 * during the call) unless a frame spanned reads. */
export class FrameReader {
  private rest: Buffer | null = null;

  constructor(private readonly onFrame: FrameHandler) {}

  push(chunk: Buffer): void {
    const buf = this.rest ? Buffer.concat([this.rest, chunk]) : chunk;
    let at = 0;
    while (buf.length - at >= 2) {
      const opcode = buf[at] & 0x0f;
      const masked = (buf[at + 1] & 0x80) !== 0;
      let length = buf[at + 1] & 0x7f;
      let header = 2;
      if (length === 126) {
        if (buf.length - at < 4) break;
        length = buf.readUInt16BE(at + 2);
        header = 4;
      } else if (length === 127) {
        if (buf.length - at < 10) break;
        length = Number(buf.readBigUInt64BE(at + 2));
        header = 10;
      }
      if (masked) header += 4; // a server must not mask; read past it rather than desync
      if (buf.length - at < header + length) break;
      this.onFrame(opcode, buf.subarray(at + header, at + header + length));
      at += header + length;
    }
    this.rest = at < buf.length ? Buffer.from(buf.subarray(at)) : null;
  }
}

/** One client frame: FIN, `opcode`, masked with a fresh key as RFC 6455 requires. */
export function clientFrame(opcode: number, payload: Buffer): Buffer {
  const length = payload.length;
  const header = length < 126 ? 2 : length < 65536 ? 4 : 10;
  const frame = Buffer.allocUnsafe(header + 4 + length);
  frame[0] = 0x80 | opcode;
  if (header === 2) frame[1] = 0x80 | length;
  else if (header === 4) {
    frame[1] = 0x80 | 126;
    frame.writeUInt16BE(length, 2);
  } else {
    frame[1] = 0x80 | 127;
    frame.writeBigUInt64BE(BigInt(length), 2);
  }
  const mask = randomBytes(4);
  mask.copy(frame, header);
  for (let i = 0; i < length; i++) frame[header + 4 + i] = payload[i] ^ mask[i & 3];
  return frame;
}

export interface LeanSocket {
  sendText(text: string): void;
  close(): void;
  readonly socket: Socket;
}

/** Open `url` (ws://host:port/path) and call `onText` with every text frame's payload;
 * pings are answered, `onClose` is called once when the server closes or the socket ends. */
export function connect(
  url: string,
  headers: Record<string, string>,
  onText: (payload: Buffer, client: LeanSocket) => void,
  onClose: () => void,
): Promise<LeanSocket> {
  const target = new URL(url);
  const key = randomBytes(16).toString('base64');
  const accept = createHash('sha1').update(key + GUID).digest('base64');
  return new Promise((resolve, reject) => {
    const req = request({
      host: target.hostname,
      port: target.port,
      path: target.pathname + target.search,
      headers: { ...headers, connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': key },
    });
    req.on('response', (res) => reject(new Error(`no upgrade: HTTP ${res.statusCode}`)));
    req.on('error', reject);
    req.on('upgrade', (res, socket: Socket, head: Buffer) => {
      if (res.headers['sec-websocket-accept'] !== accept) {
        socket.destroy();
        reject(new Error('bad Sec-WebSocket-Accept'));
        return;
      }
      socket.setNoDelay(true);
      let closed = false;
      const done = () => {
        if (!closed) {
          closed = true;
          onClose();
        }
      };
      const client: LeanSocket = {
        socket,
        sendText: (text) => void socket.write(clientFrame(Opcode.Text, Buffer.from(text))),
        close: () => socket.end(clientFrame(Opcode.Close, Buffer.from([0x03, 0xe8]))),
      };
      const reader = new FrameReader((opcode, payload) => {
        if (opcode === Opcode.Text) onText(payload, client);
        else if (opcode === Opcode.Ping) socket.write(clientFrame(Opcode.Pong, payload));
        else if (opcode === Opcode.Close) {
          done();
          socket.end();
        }
      });
      socket.on('data', (chunk: Buffer) => reader.push(chunk));
      socket.on('close', done);
      socket.on('error', done);
      if (head.length > 0) reader.push(head);
      resolve(client);
    });
    req.end();
  });
}
