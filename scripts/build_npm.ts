/**
 * `deno task build:npm`: compiles the module's entry points (deno.json
 * `exports`) with the TypeScript compiler pinned in deno.json into an npm
 * package in `dist/npm/`: ESM JavaScript, `.d.ts` files, a `package.json` with
 * an `exports` entry per entry point and the npm packages the compiled code
 * imports pinned as in deno.json `imports`, the README and the LICENSE.
 *
 *   deno task build:npm            # writes dist/npm/
 *   npm pack ./dist/npm            # the tarball Node and Bun users install
 *
 * The output is generated, never edited: a new entry point in deno.json
 * flows in on the next build. Any type error fails the build, naming the file.
 *
 * @module
 */
import ts from "typescript";
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (this file lives in `scripts/`). */
export const ROOT: string = fileURLToPath(new URL("..", import.meta.url));

/** What {@linkcode buildNpm} wrote. */
export interface NpmBuild {
  /** The package directory. */
  readonly dir: string;
  /** The `package.json` written there. */
  readonly manifest: NpmManifest;
  /** Every file written, relative to `dir`, sorted. */
  readonly files: readonly string[];
}

/** The fields of the generated `package.json`. */
export interface NpmManifest {
  name: string;
  version: string;
  description: string;
  license: string;
  type: "module";
  exports: Record<string, { types: string; default: string } | string>;
  dependencies: Record<string, string>;
}

interface DenoJson {
  name: string;
  version: string;
  license: string;
  exports: string | Record<string, string>;
  imports: Record<string, string>;
}

/** deno.json, as the build reads it. */
export function readDenoJson(root: string = ROOT): DenoJson {
  return JSON.parse(readFileSync(join(root, "deno.json"), "utf8")) as DenoJson;
}

/** deno.json `exports` as `[subpath, "./file.ts"]` pairs (a string means `"."`). */
export function entryPoints(config: { exports: string | Record<string, string> }): [
  string,
  string,
][] {
  const exports = typeof config.exports === "string" ? { ".": config.exports } : config.exports;
  return Object.entries(exports).map(([subpath, file]) => {
    if (!file.endsWith(".ts")) {
      throw new TypeError(`deno.json exports["${subpath}"] must be a .ts file, got "${file}"`);
    }
    return [subpath, file];
  });
}

/**
 * The npm name and version range of an `npm:` specifier from deno.json
 * `imports` (`npm:@grpc/grpc-js@~1.14.7` → `["@grpc/grpc-js", "~1.14.7"]`).
 */
export function npmSpecifier(specifier: string): [string, string] {
  const match = /^npm:(@?[^@/]+(?:\/[^@/]+)?)@([^/]+)$/.exec(specifier);
  if (!match) {
    throw new TypeError(`expected "npm:<name>@<version>" in deno.json imports, got "${specifier}"`);
  }
  return [match[1]!, match[2]!];
}

/** The package name of a bare import specifier (`@grpc/grpc-js/build/x` → `@grpc/grpc-js`). */
function packageName(specifier: string): string {
  const parts = specifier.split("/");
  return specifier.startsWith("@") ? parts.slice(0, 2).join("/") : parts[0]!;
}

/** The first sentence of the README's first paragraph, without Markdown links. */
function description(readme: string): string {
  const paragraph = readme.split(/\n\s*\n/).find((p) => p.trim() && !p.startsWith("#")) ?? "";
  const text = paragraph.replace(/\[([^\]]*)\]\([^)]*\)/g, "$1").replace(/\s+/g, " ").trim();
  return /^.*?\.(?=\s|$)/.exec(text)?.[0] ?? text;
}

/** Compiler options: ESM for Node and Bun, type-checked against Node's types only. */
function compilerOptions(root: string, outDir: string): ts.CompilerOptions {
  return {
    target: ts.ScriptTarget.ES2023,
    lib: ["lib.es2024.d.ts", "lib.esnext.disposable.d.ts"],
    module: ts.ModuleKind.ESNext,
    moduleResolution: ts.ModuleResolutionKind.Bundler,
    rewriteRelativeImportExtensions: true,
    declaration: true,
    strict: true,
    noEmitOnError: true,
    skipLibCheck: true,
    // Node's own types and no others: a Deno or DOM API in the shared code fails the build.
    typeRoots: [join(root, "node_modules/@types")],
    types: ["node"],
    rootDir: root,
    outDir,
    newLine: ts.NewLineKind.LineFeed,
  };
}

/**
 * `rewriteRelativeImportExtensions` rewrites `./x.ts` to `./x.js` in the
 * JavaScript only (microsoft/TypeScript#61037); this does the same in the
 * `.d.ts` files, so that every tool reading them finds the files shipped.
 */
function relativeJsInDeclarations(
  context: ts.TransformationContext,
): (node: ts.SourceFile | ts.Bundle) => ts.SourceFile | ts.Bundle {
  const { factory } = context;
  const rewrite = (specifier: ts.Expression | undefined) =>
    specifier && ts.isStringLiteral(specifier) && /^\.\.?\/.*\.ts$/.test(specifier.text)
      ? factory.createStringLiteral(specifier.text.replace(/\.ts$/, ".js"))
      : undefined;
  const visit = (node: ts.Node): ts.Node => {
    if (ts.isImportDeclaration(node)) {
      const to = rewrite(node.moduleSpecifier);
      if (to) {
        return factory.updateImportDeclaration(
          node,
          node.modifiers,
          node.importClause,
          to,
          node.attributes,
        );
      }
    } else if (ts.isExportDeclaration(node)) {
      const to = rewrite(node.moduleSpecifier);
      if (to) {
        return factory.updateExportDeclaration(
          node,
          node.modifiers,
          node.isTypeOnly,
          node.exportClause,
          to,
          node.attributes,
        );
      }
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument)) {
      const to = rewrite(node.argument.literal);
      if (to) {
        return factory.updateImportTypeNode(
          node,
          factory.updateLiteralTypeNode(node.argument, to),
          node.attributes,
          node.qualifier,
          node.typeArguments,
          node.isTypeOf,
        );
      }
    }
    return ts.visitEachChild(node, visit, context);
  };
  return (node) => ts.isSourceFile(node) ? ts.visitEachChild(node, visit, context) : node;
}

/**
 * Compiles the entry points of deno.json into an npm package.
 *
 * @param options `root`: the repository (default: this one); `outDir`: where to
 *   write (default `<root>/dist/npm`, emptied first)
 * @returns the directory, the manifest and the files written
 * @throws {Error} on any compiler diagnostic (file, line and message), or an
 *   imported npm package that deno.json `imports` does not pin
 */
export function buildNpm(options: { root?: string; outDir?: string } = {}): NpmBuild {
  const root = options.root ?? ROOT;
  const dir = options.outDir ?? join(root, "dist/npm");
  const config = readDenoJson(root);
  const entries = entryPoints(config);

  const compiler = compilerOptions(root, dir);
  const program = ts.createProgram(entries.map(([, file]) => join(root, file)), compiler);
  const written = new Map<string, string>();
  const emitted = program.emit(
    undefined,
    (file, text) => written.set(file, text),
    undefined,
    false,
    { afterDeclarations: [relativeJsInDeclarations] },
  );
  const diagnostics = [...ts.getPreEmitDiagnostics(program), ...emitted.diagnostics];
  if (diagnostics.length > 0 || emitted.emitSkipped) {
    const text = ts.formatDiagnostics(diagnostics, {
      getCanonicalFileName: (f) => f,
      getCurrentDirectory: () => root,
      getNewLine: () => "\n",
    });
    throw new Error(`build:npm: the TypeScript compiler refused the sources:\n${text}`);
  }

  // Every npm package the compiled JavaScript imports, pinned as in deno.json.
  const pins = new Map<string, string>();
  for (const specifier of Object.values(config.imports)) {
    if (specifier.startsWith("npm:")) {
      const [name, range] = npmSpecifier(specifier);
      pins.set(name, range);
    }
  }
  const dependencies: Record<string, string> = {};
  for (const [file, text] of written) {
    if (!file.endsWith(".js")) continue;
    for (const { fileName } of ts.preProcessFile(text, true, true).importedFiles) {
      if (fileName.startsWith(".") || fileName.startsWith("node:")) continue;
      const name = packageName(fileName);
      const alias = config.imports[name];
      const [pinned, range] = alias ? npmSpecifier(alias) : [name, undefined];
      if (!range || pinned !== name) {
        throw new Error(
          `build:npm: ${relative(dir, file)} imports "${fileName}", which deno.json imports ` +
            `does not pin as "npm:${name}@<version>"`,
        );
      }
      dependencies[name] = range;
    }
  }

  const readme = readFileSync(join(root, "README.md"), "utf8");
  const manifest: NpmManifest = {
    name: config.name,
    version: config.version,
    description: description(readme),
    license: config.license,
    type: "module",
    exports: Object.fromEntries([
      ...entries.map(([subpath, file]): [string, { types: string; default: string }] => [
        subpath,
        { types: file.replace(/\.ts$/, ".d.ts"), default: file.replace(/\.ts$/, ".js") },
      ]),
      ["./package.json", "./package.json"],
    ]),
    dependencies: Object.fromEntries(
      Object.entries(dependencies).sort(([a], [b]) => a.localeCompare(b)),
    ),
  };

  rmSync(dir, { recursive: true, force: true });
  for (const [file, text] of written) {
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, text);
  }
  writeFileSync(join(dir, "package.json"), JSON.stringify(manifest, null, 2) + "\n");
  for (const name of ["README.md", "LICENSE"]) copyFileSync(join(root, name), join(dir, name));

  const files = [
    ...[...written.keys()].map((f) => relative(dir, f)),
    "package.json",
    "README.md",
    "LICENSE",
  ].sort();
  return { dir, manifest, files };
}

if (import.meta.main) {
  const build = buildNpm();
  console.log(
    `wrote ${relative(ROOT, build.dir)}/: ${build.manifest.name}@${build.manifest.version}, ` +
      `${build.files.length} files, exports ${Object.keys(build.manifest.exports).join(" ")}, ` +
      `dependencies ${JSON.stringify(build.manifest.dependencies)}`,
  );
}
