// The public socket. Deno's HTTP/1.1 server does not tell a handler that its client went away once
// the request body has been read in more than one piece (measured on Deno 2.9.6: a 70-byte body's
// `request.signal` fires at the client's close, 500 B and more never do until the response is
// written), so a non-streamed generation would run to its end for nobody. The fix watches the
// connection itself: clients connect here, each connection is relayed byte for byte to the HTTP
// server listening on loopback, and the relay aborts the connection's signal when the client's
// side ends (EOF or reset). The handler finds its connection's signal by the relay's local port,
// which is the remote port the HTTP server reports.
//
// A client that half-closes its side after sending a request counts as gone (as nginx's
// client-abort detection does); HTTP clients do not do that while awaiting a response.

export type Handler = (req: Request, clientGone: AbortSignal) => Response | Promise<Response>;

export class WatchedListener {
  readonly #inner: Deno.HttpServer<Deno.NetAddr>;
  readonly #outer: Deno.TcpListener;
  /** Each relayed connection's abort controller, by the relay's local port. */
  readonly #byPort = new Map<number, AbortController>();
  /** Each relayed connection, with the promise that settles when its relay has ended. */
  readonly #relays = new Map<Deno.TcpConn, { upstream: Deno.TcpConn; ended: Promise<unknown> }>();
  readonly #accepting: Promise<void>;
  /** The signal of a connection that reached the HTTP server around the relay: never fires. */
  readonly #never = new AbortController().signal;

  constructor(hostname: string, port: number, handler: Handler) {
    // The public socket first: a port in use fails before anything else is started.
    this.#outer = Deno.listen({ hostname, port });
    this.#inner = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen: () => {} },
      (req, info) => handler(req, this.#byPort.get(info.remoteAddr.port)?.signal ?? this.#never),
    );
    this.#accepting = this.#accept();
  }

  /** The public address. */
  get addr(): Deno.NetAddr {
    return this.#outer.addr;
  }

  /** Connections being relayed now. */
  get connections(): number {
    return this.#relays.size;
  }

  async #accept(): Promise<void> {
    try {
      for await (const client of this.#outer) this.#relay(client).catch(() => {});
    } catch {
      // The listener was closed.
    }
  }

  async #relay(client: Deno.TcpConn): Promise<void> {
    let upstream: Deno.TcpConn;
    try {
      upstream = await Deno.connect({ hostname: "127.0.0.1", port: this.#inner.addr.port });
    } catch {
      closeQuietly(client);
      return;
    }
    // Registered before any byte is sent, so the handler always finds it.
    const port = (upstream.localAddr as Deno.NetAddr).port;
    const gone = new AbortController();
    this.#byPort.set(port, gone);
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    // Responses flow until the HTTP server closes its side; the client's side ending is the
    // disconnect. Whichever comes first ends the relay.
    const down = upstream.readable.pipeTo(client.writable, { preventClose: true })
      .then(() => "server", () => "server");
    const up = client.readable.pipeTo(upstream.writable, { preventClose: true })
      .then(() => "client", () => "client");
    this.#relays.set(client, { upstream, ended: Promise.all([up, down]) });
    if (await Promise.race([up, down]) === "client") {
      gone.abort(new Error("the client closed the connection"));
    }
    closeQuietly(upstream);
    closeQuietly(client);
    await Promise.all([up, down]);
    this.#byPort.delete(port);
    this.#relays.delete(client);
  }

  /** Stops accepting, lets responses being written finish and reach their clients (within
   * `drainMs`), then drops every connection. */
  async shutdown(drainMs = 2000): Promise<void> {
    closeQuietly(this.#outer);
    await this.#accepting;
    // Waits for responses in progress, then closes the HTTP server's side of every connection.
    await this.#inner.shutdown();
    // The relays end once they have passed on what the server wrote.
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      Promise.all([...this.#relays.values()].map((r) => r.ended)),
      new Promise((r) => (timer = setTimeout(r, drainMs))),
    ]);
    clearTimeout(timer);
    for (const [client, { upstream }] of this.#relays) {
      closeQuietly(upstream);
      closeQuietly(client);
    }
  }
}

function closeQuietly(c: { close(): void }): void {
  try {
    c.close();
  } catch {
    // Already closed.
  }
}
