/**
 * `deno doc --lint` over every entry point, failing on every finding except a
 * reference to one of grpc-js's own types: `grpc.ts` takes and returns grpc-js
 * clients, servers, credentials and options, which are grpc-js's to document.
 *
 *   deno run --allow-run .ci/doc_lint.ts
 */
const ENTRY_POINTS = ["mod.ts", "core.ts", "fetch.ts", "testing.ts", "grpc.ts"];
// Types of npm:@grpc/grpc-js that the public API of grpc.ts names.
const GRPC_JS_TYPES = new Set([
  "ChannelCredentials",
  "ChannelOptions",
  "Client",
  "ClientOptions",
  "Server",
  "ServerCredentials",
]);

const { stdout, stderr } = await new Deno.Command(Deno.execPath(), {
  args: ["doc", "--lint", ...ENTRY_POINTS],
  env: { NO_COLOR: "1" },
}).output();
const text = new TextDecoder().decode(stderr) + new TextDecoder().decode(stdout);
// Deno prints a backtrace after its own summary on failure: not part of any finding.
const findings = text.split(/\nerror: Found \d+ documentation lint error|Stack backtrace:/)[0]!
  .split(/\n(?=error\[)/).filter((block) => block.startsWith("error["));
const kept = findings.filter((block) => {
  const ref = /^error\[private-type-ref\]: .* references private type '([^']+)'/.exec(block);
  return !(ref && GRPC_JS_TYPES.has(ref[1]!));
});
for (const block of kept) console.error(block.trim() + "\n");
console.log(
  `doc lint of ${ENTRY_POINTS.join(", ")}: ${kept.length} finding(s); ${
    findings.length - kept.length
  } reference(s) to grpc-js types allowed`,
);
if (kept.length > 0) Deno.exit(1);
