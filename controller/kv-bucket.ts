// Opening the controller's KV buckets when several controllers start at once.
import type { JetStreamClient, KV } from "nats";

/**
 * Opens (or creates) a KV bucket keeping only the current value of each key.
 * Controllers starting together race to create it, and the server refuses
 * all but one ("subjects overlap with an existing stream"); the stream exists
 * by then, so another attempt finds it.
 */
export async function openBucket(js: JetStreamClient, bucket: string): Promise<KV> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await js.views.kv(bucket, { history: 1 });
    } catch (err) {
      if (attempt >= 3) throw err;
      await new Promise((resolve) => setTimeout(resolve, 50 * attempt));
    }
  }
}
