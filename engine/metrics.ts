// Counters and latency histograms the engine keeps; `/metrics` renders them with the cache
// manager's figures in Prometheus' text format (server/prometheus.ts).

/** A cumulative histogram with fixed upper bounds (seconds), as Prometheus expects. */
export class Histogram {
  readonly counts: number[];
  sum = 0;
  count = 0;

  constructor(readonly bounds: readonly number[]) {
    this.counts = new Array(bounds.length).fill(0);
  }

  observe(v: number): void {
    this.sum += v;
    this.count++;
    for (let i = 0; i < this.bounds.length; i++) if (v <= this.bounds[i]) this.counts[i]++;
  }
}

const LATENCY = [
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  25,
  50,
  100,
];
const PER_TOKEN = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5];

export class EngineMetrics {
  readonly timeToFirstToken = new Histogram(LATENCY);
  readonly timePerOutputToken = new Histogram(PER_TOKEN);
  readonly e2eLatency = new Histogram(LATENCY);
  readonly queueTime = new Histogram(LATENCY);
  promptTokens = 0;
  generationTokens = 0;
  /** Finished requests by finish reason. */
  readonly finished = new Map<string, number>();
  /** Requests refused at submission, by reason. */
  readonly rejected = new Map<string, number>();
  /** Decode readbacks (one `runner.decode` call each) and the sequences they carried. */
  decodeCalls = 0;
  decodeRows = 0;
  /** Of those, decodes queued behind one in flight (overlapped decode: the GPU did not wait). */
  decodeOverlapped = 0;
  /** Prompt tokens looked up in the prefix cache, and those found (vLLM's prefix_cache_queries
   * and prefix_cache_hits, in tokens). */
  prefixCacheQueries = 0;
  prefixCacheHits = 0;

  countFinished(reason: string): void {
    this.finished.set(reason, (this.finished.get(reason) ?? 0) + 1);
  }

  countRejected(reason: string): void {
    this.rejected.set(reason, (this.rejected.get(reason) ?? 0) + 1);
  }
}
