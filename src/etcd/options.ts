/**
 * Checks of the options both etcd clients take (`connect()` and
 * `connectFetch()`): hosts, credentials. Pure.
 *
 * @module
 */

/** An etcd host as given, and as a URL with an explicit port. */
export interface HostUrl {
  /** As the user gave it, for messages. */
  readonly name: string;
  /** `http(s)://host:port`, the port explicit (80 or 443 when not given). */
  readonly origin: string;
}

const HOST_PORT = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$/;

function parseHost(entry: unknown): HostUrl & { secure: boolean } | undefined {
  if (typeof entry !== "string" || entry === "" || entry.trim() !== entry) return undefined;
  const scheme = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(entry);
  if (!scheme && !HOST_PORT.test(entry)) return undefined;
  let url: URL;
  try {
    url = new URL(scheme ? entry : `http://${entry}`);
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
  const secure = url.protocol === "https:";
  const port = url.port || (secure ? "443" : "80");
  return { name: entry, origin: `${url.protocol}//${url.hostname}:${port}`, secure };
}

/**
 * `options.hosts` checked: a non-empty string or array of `host:port` or
 * `http(s)://host[:port]`, all of one scheme.
 *
 * @throws {TypeError} naming the option and the bad value
 */
export function checkHosts(hosts: unknown): { hosts: HostUrl[]; secure: boolean } {
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
  const secure = parsed[0]!.secure;
  if (parsed.some((host) => host.secure !== secure)) {
    throw new TypeError(
      `options.hosts must be all https:// or all http://, got ${JSON.stringify(list)}`,
    );
  }
  return { hosts: parsed.map(({ name, origin }) => ({ name, origin })), secure };
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
