import assert from "node:assert/strict";
import {
  decodeEndpoint,
  encodeEndpoint,
  EndpointDecodeError,
  endpointKey,
  servicePrefix,
} from "../mod.ts";
import { addrProblem, checkService, MAX_VALUE_BYTES } from "../src/endpoint.ts";

Deno.test("encodeEndpoint() writes the bytes Go's encoding/json writes for endpoints.Update", async (t) => {
  const cases: [unknown, string][] = [
    [undefined, '{"Op":0,"Addr":"10.0.0.1:8080","Metadata":null}'],
    [null, '{"Op":0,"Addr":"10.0.0.1:8080","Metadata":null}'],
    ["v1", '{"Op":0,"Addr":"10.0.0.1:8080","Metadata":"v1"}'],
    [42, '{"Op":0,"Addr":"10.0.0.1:8080","Metadata":42}'],
    // Go sorts map keys and escapes <, >, & and U+2028/9 for HTML safety.
    [
      { zone: "a<b>&c", weight: 3, tags: ["x", { b: 1, a: 2 }] },
      '{"Op":0,"Addr":"10.0.0.1:8080","Metadata":{"tags":["x",{"a":2,"b":1}],"weight":3,"zone":"a\\u003cb\\u003e\\u0026c"}}',
    ],
    ["\u2028", '{"Op":0,"Addr":"10.0.0.1:8080","Metadata":"\\u2028"}'],
  ];
  for (const [metadata, expected] of cases) {
    await t.step(JSON.stringify(metadata) ?? "undefined", () => {
      assert.equal(encodeEndpoint({ addr: "10.0.0.1:8080", metadata }), expected);
    });
  }
});

Deno.test("decodeEndpoint() reads Go's values, field names in any case, and ignores Op", () => {
  assert.deepEqual(
    decodeEndpoint("s/a", '{"Op":0,"Addr":"10.0.0.1:8080","Metadata":null}'),
    { addr: "10.0.0.1:8080" },
  );
  assert.deepEqual(
    decodeEndpoint("s/a", '{"op":1,"ADDR":"[::1]:80","metaDATA":{"w":2}}'),
    { addr: "[::1]:80", metadata: { w: 2 } },
  );
  assert.deepEqual(
    decodeEndpoint("s/a", new TextEncoder().encode('{"Addr":"host-1.example:65535"}')),
    { addr: "host-1.example:65535" },
  );
  const roundTrip = { addr: "127.0.0.1:1", metadata: { a: [1, "<&>"] } };
  assert.deepEqual(decodeEndpoint("s/a", encodeEndpoint(roundTrip)), roundTrip);
});

Deno.test("decodeEndpoint() returns an EndpointDecodeError naming the key for bad values", async (t) => {
  const bad: [string, string | Uint8Array, RegExp][] = [
    ["not JSON", "{oops", /not JSON/],
    ["invalid UTF-8", new Uint8Array([0x7b, 0xff, 0x7d]), /not JSON in UTF-8/],
    ["a JSON array", "[1,2]", /not a JSON object/],
    ["JSON null", "null", /not a JSON object/],
    ["no Addr", '{"Metadata":1}', /Addr must be a string/],
    ["Addr not a string", '{"Addr":8080}', /Addr must be a string/],
    ["no port", '{"Addr":"10.0.0.1"}', /host:port/],
    ["port 0", '{"Addr":"10.0.0.1:0"}', /port from 1 to 65535/],
    ["port 65536", '{"Addr":"10.0.0.1:65536"}', /port from 1 to 65535/],
    ["hostile host", '{"Addr":"evil host/../x:80"}', /hostname/],
    ["empty host", '{"Addr":":80"}', /host:port/],
    ["over 64 KiB", `{"Addr":"a:1","Metadata":"${"x".repeat(MAX_VALUE_BYTES)}"}`, /over 65536/],
  ];
  for (const [name, value, reason] of bad) {
    await t.step(name, () => {
      const result = decodeEndpoint("svc/k1", value);
      assert.ok(result instanceof EndpointDecodeError, `expected an error for ${name}`);
      assert.equal(result.key, "svc/k1");
      assert.match(result.message, /"svc\/k1"/);
      assert.match(result.message, reason);
    });
  }
});

Deno.test("checkService() rejects names that break the key layout, naming the value", async (t) => {
  for (const bad of ["", "svc/", "a b", "tab\t", "nl\n", "nul\0", 7, undefined, "x".repeat(513)]) {
    await t.step((JSON.stringify(bad) ?? "undefined").slice(0, 24), () => {
      assert.throws(() => checkService(bad), (e: Error) => {
        assert.ok(e instanceof TypeError);
        assert.match(e.message, /^service /);
        return true;
      });
    });
  }
  assert.equal(checkService("svc/echo"), "svc/echo");
  assert.equal(checkService("/services/echo"), "/services/echo");
});

Deno.test("addrProblem() accepts host:port with port 1-65535 only", () => {
  for (
    const ok of ["a:1", "10.0.0.1:65535", "[::1]:50051", "[fe80::1%eth0]:80", "my-host.local:8080"]
  ) {
    assert.equal(addrProblem(ok), undefined, ok);
  }
  for (const bad of ["", "a", "a:", ":1", "a:0", "a:65536", "a:1x", "a b:1", "::1:80", "a:-1", 1]) {
    assert.notEqual(addrProblem(bad), undefined, String(bad));
  }
});

Deno.test("servicePrefix() and endpointKey() follow Go's <service>/<addr> layout", () => {
  assert.equal(servicePrefix("svc/echo"), "svc/echo/");
  assert.equal(endpointKey("svc/echo", "10.0.0.1:1"), "svc/echo/10.0.0.1:1");
  assert.throws(
    () => endpointKey("svc/echo", "nope"),
    /^TypeError: addr must be host:port, got "nope"$/,
  );
});

Deno.test("encodeEndpoint() rejects metadata that is not JSON", () => {
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  assert.throws(
    () => encodeEndpoint({ addr: "a:1", metadata: cyclic }),
    /endpoint.metadata must be serialisable/,
  );
  assert.throws(() => encodeEndpoint({ addr: "a:1", metadata: 1n }), TypeError);
});
