// The guest kit tests' stand-in for a Debian mirror: a loopback HTTP server
// (127.0.0.1, a free port), so a test reaches no network.
import { createServer, type RequestListener, type Server } from 'node:http';

/** Listen on loopback with `handler`; `origin` is `http://127.0.0.1:PORT`. */
export async function serveLoopback(handler: RequestListener): Promise<{ server: Server; origin: string }> {
  const server = createServer(handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const a = server.address();
  return { server, origin: `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}` };
}

/** A handler answering each path from `files`, 404 for any other. */
export function serveFiles(files: ReadonlyMap<string, Buffer | string>): RequestListener {
  return (req, res) => {
    const f = files.get(req.url!);
    if (f === undefined) res.writeHead(404).end();
    else res.writeHead(200).end(f);
  };
}
