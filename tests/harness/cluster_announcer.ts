/**
 * A stand-in for faasd's BGP part, for tests that run it inside a host's network namespace: starts a
 * {@linkcode BirdAnnouncer} and announces what it is told on stdin.
 *
 *     ip netns exec faasd-host1 deno run -A tests/harness/cluster_announcer.ts FRAGMENT STATE_DIR
 *
 * Prints `ready <bird pid>` once BIRD answers. Each stdin line is a JSON array of addresses to announce (all of them:
 * `[]` withdraws everything); each is answered `ok` or `error <message as JSON>`. At the end of stdin it closes the
 * announcer (BIRD stops gracefully) and exits. Killing it with SIGKILL must take BIRD with it.
 *
 * @module
 */

import { BirdAnnouncer } from "../../lib/cluster/bird.ts";

const [operatorConfig, stateDir] = Deno.args;
if (!operatorConfig || !stateDir) {
  console.error("usage: cluster_announcer.ts FRAGMENT STATE_DIR");
  Deno.exit(2);
}

const encoder = new TextEncoder();
const say = (line: string) => Deno.stdout.writeSync(encoder.encode(`${line}\n`));

const bird = await BirdAnnouncer.start({ operatorConfig, stateDir, onLog: (line) => console.error(`bird: ${line}`) });
bird.died.then((err) => {
  console.error(err.message);
  Deno.exit(3);
});
say(`ready ${bird.pid}`);

let partial = "";
for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
  const lines = (partial + chunk).split("\n");
  partial = lines.pop()!;
  for (const line of lines) {
    if (!line.trim()) continue;
    try {
      await bird.announce(JSON.parse(line) as string[]);
      say("ok");
    } catch (e) {
      say(`error ${JSON.stringify(String(e))}`);
    }
  }
}
await bird.close();
