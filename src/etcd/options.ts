/**
 * Checks of the options both etcd clients take (`connect()` and
 * `connectFetch()`): hosts, credentials. Pure.
 *
 * @module
 */

/** An etcd host as given, parsed. */
export interface HostUrl {
  /** As the user gave it, for messages. */
  readonly name: string;
  /** The scheme given, if any (`host:port` has none). */
  readonly scheme: "http" | "https" | undefined;
  /** `host:port`, the port explicit (80 or 443 by the scheme when not given). */
  readonly hostPort: string;
}

/** `http(s)://host:port` of a host: its own scheme, else `https` when `secure`. */
export function originOf(host: HostUrl, secure: boolean): string {
  return `${host.scheme ?? (secure ? "https" : "http")}://${host.hostPort}`;
}

const HOST_PORT = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$/;

function parseHost(entry: unknown): HostUrl | undefined {
  if (typeof entry !== "string" || entry === "" || entry.trim() !== entry) return undefined;
  const given = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(entry);
  if (!given && !HOST_PORT.test(entry)) return undefined;
  let url: URL;
  try {
    url = new URL(given ? entry : `http://${entry}`);
  } catch {
    return undefined;
  }
  if (
    (url.protocol !== "http:" && url.protocol !== "https:") || url.username || url.password ||
    url.search || url.hash || entry.endsWith("?") || entry.endsWith("#") ||
    (url.pathname !== "/" && url.pathname !== "") || url.hostname === "" || url.port === "0"
  ) {
    return undefined;
  }
  const scheme = url.protocol === "https:" ? "https" : "http";
  // new URL() drops a port that is the scheme's default: put it back, explicitly.
  const port = url.port || HOST_PORT.exec(entry)?.[2] || (scheme === "https" ? "443" : "80");
  return { name: entry, scheme: given ? scheme : undefined, hostPort: `${url.hostname}:${port}` };
}

/**
 * `options.hosts` checked: a non-empty string or array of `host:port` or
 * `http(s)://host[:port]`, not mixing `https://` with `http://` or `host:port`.
 *
 * @throws {TypeError} naming the option and the bad value
 */
export function checkHosts(hosts: unknown): { hosts: HostUrl[]; https: boolean } {
  const list = typeof hosts === "string" ? [hosts] : hosts;
  if (!Array.isArray(list) || list.length === 0) {
    throw new TypeError(
      `options.hosts must be a non-empty string or array of etcd client URLs, got ${
        JSON.stringify(hosts)
      }`,
    );
  }
  const parsed = list.map((entry) => {
    const host = parseHost(entry);
    if (!host) {
      throw new TypeError(
        `options.hosts entries must be "http(s)://host[:port]" or "host:port", got ${
          JSON.stringify(entry)
        }`,
      );
    }
    return host;
  });
  const https = parsed.filter((host) => host.scheme === "https").length;
  if (https > 0 && https < parsed.length) {
    throw new TypeError(
      `options.hosts must be all https:// or all http://, got ${JSON.stringify(list)}`,
    );
  }
  return { hosts: parsed, https: https > 0 };
}

/** User name and password for etcd's auth. */
export interface Credentials {
  /** The user name (not empty). */
  readonly username: string;
  /** The password. */
  readonly password: string;
}

/**
 * `options.auth` checked: `undefined`, or `{ username, password }` with a
 * non-empty user name (copied, so later changes to the object do not count).
 *
 * @throws {TypeError} naming the option, without the password
 */
export function checkAuth(auth: unknown): Credentials | undefined {
  if (auth === undefined) return undefined;
  const given = auth as Partial<Credentials> | null;
  if (
    typeof given !== "object" || given === null || typeof given.username !== "string" ||
    given.username === "" || typeof given.password !== "string"
  ) {
    throw new TypeError(
      `options.auth must be { username, password } with a non-empty username, got ${
        given === null || typeof given !== "object"
          ? String(given)
          : `{ username: ${JSON.stringify(given.username)}, password: … }`
      }`,
    );
  }
  return { username: given.username, password: given.password };
}
