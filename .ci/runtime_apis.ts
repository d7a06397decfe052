/**
 * Fails, naming each file and line, when a runtime's own global (`Deno`,
 * `Bun`) appears in a file that every runtime runs: the entry points of
 * deno.json `exports`, `src/` and `harness/`. Tests, benchmarks, examples and
 * the build scripts run on Deno only and may use it.
 *
 *   deno run --allow-read --allow-env .ci/runtime_apis.ts [root]
 *
 * Comments and strings do not count: the files are parsed, and only
 * identifiers in code are looked at.
 *
 * @module
 */
import ts from "typescript";

/** Globals that exist on one runtime only. */
export const RUNTIME_GLOBALS: ReadonlySet<string> = new Set(["Deno", "Bun"]);

/** Directories (relative to the root) whose files run on every runtime. */
export const SHARED_DIRS: readonly string[] = ["src", "harness"];

/** One use of a runtime's global. */
export interface Finding {
  readonly file: string;
  readonly line: number;
  readonly column: number;
  /** The expression, e.g. `Deno.env.get`. */
  readonly code: string;
}

/** The uses of {@linkcode RUNTIME_GLOBALS} in the code of `text`. */
export function findRuntimeApis(file: string, text: string): Finding[] {
  const source = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true);
  const findings: Finding[] = [];
  const visit = (node: ts.Node): void => {
    if (ts.isIdentifier(node) && RUNTIME_GLOBALS.has(node.text)) {
      // Report the whole access (`Deno.env.get`), not just its first name.
      let outer: ts.Node = node;
      while (
        (ts.isPropertyAccessExpression(outer.parent) && outer.parent.expression === outer) ||
        (ts.isQualifiedName(outer.parent) && outer.parent.left === outer) ||
        (ts.isPropertyAccessExpression(outer.parent) && outer.parent.name === outer)
      ) outer = outer.parent;
      const { line, character } = source.getLineAndCharacterOfPosition(node.getStart());
      findings.push({ file, line: line + 1, column: character + 1, code: outer.getText() });
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return findings;
}

/** The shared files under `root`: deno.json's entry points, then every .ts file in {@linkcode SHARED_DIRS}. */
export function sharedFiles(root: string): string[] {
  const config = JSON.parse(Deno.readTextFileSync(`${root}/deno.json`));
  const exports: string[] = typeof config.exports === "string"
    ? [config.exports]
    : Object.values(config.exports);
  const files = exports.map((f) => f.replace(/^\.\//, ""));
  const walk = (dir: string): void => {
    let entries: Deno.DirEntry[];
    try {
      entries = [...Deno.readDirSync(`${root}/${dir}`)];
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return;
      throw error;
    }
    for (const entry of entries.sort((a, b) => a.name.localeCompare(b.name))) {
      const path = `${dir}/${entry.name}`;
      if (entry.isDirectory) walk(path);
      else if (/\.(ts|js|mjs)$/.test(entry.name)) files.push(path);
    }
  };
  for (const dir of SHARED_DIRS) walk(dir);
  return files;
}

if (import.meta.main) {
  const root = Deno.args[0] ?? new URL("..", import.meta.url).pathname.replace(/\/$/, "");
  const files = sharedFiles(root);
  const findings = files.flatMap((f) => findRuntimeApis(f, Deno.readTextFileSync(`${root}/${f}`)));
  for (const f of findings) {
    console.error(
      `${f.file}:${f.line}:${f.column}: ${f.code}: a runtime's own API in a file that Deno, Node ` +
        `and Bun all run; use a web or node: API (tests/, bench/, examples/ and scripts/ may use Deno)`,
    );
  }
  console.log(
    `runtime APIs in shared files (${files.length} files: entry points, ${
      SHARED_DIRS.join("/, ")
    }/): ` +
      `${findings.length} finding(s)`,
  );
  if (findings.length > 0) Deno.exit(1);
}
