/**
 * `faas init LANG NAME`: writes a ready-to-build handler directory from `templates/LANG/`. Each template holds the
 * handler's source, a `Containerfile` for hosts that can pull base images, a `Containerfile.local` with an executable
 * `build.sh` that builds `localhost/NAME:latest` offline with the host's tools and podman, and a README saying how to
 * build and deploy it. Every `{{name}}` in a template file becomes the function name.
 *
 * The templates are read at run time, from beside this module (`../../templates/`).
 *
 * @example
 * ```ts
 * const { dir, files } = await initTemplate("go", "hello");
 * // dir === "hello"; files: ["Containerfile", "Containerfile.local", "README.md", "build.sh", "go.mod", "main.go"]
 * ```
 *
 * @module
 */

import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { isValidName } from "../names.ts";

/** The languages `faas init` has templates for: each is a folder of `templates/`. */
export const TEMPLATE_LANGUAGES: readonly string[] = Object.freeze(["c", "go", "http", "python"]);

/** Options of {@linkcode initTemplate}. */
export interface InitOptions {
  /** The directory to create; default `./NAME`. It must not exist yet. */
  dir?: string;
}

/** What {@linkcode initTemplate} wrote. */
export interface InitResult {
  /** The directory created: `opts.dir` as given, else `NAME`. */
  dir: string;
  /** The files written, as paths relative to `dir`, sorted. */
  files: string[];
}

const TEMPLATES_DIR = fileURLToPath(new URL("../../templates/", import.meta.url));
const PLACEHOLDER = /\{\{name\}\}/g;

/**
 * Writes the handler template for `lang` into a new directory, with `name` in place of every `{{name}}`. File modes
 * are kept (`build.sh` stays executable). Nothing is overwritten: the directory must not exist, and it is removed
 * again when writing fails half-way.
 *
 * @param lang one of {@linkcode TEMPLATE_LANGUAGES}
 * @param name the function name: 1-63 lowercase letters, digits and inner hyphens
 * @param opts the directory to create (default `./NAME`; missing parent directories are created)
 * @returns the directory and the files written in it
 * @throws {TypeError} for an unknown language (the message lists the known ones) or an invalid name
 * @throws {Deno.errors.AlreadyExists} when the directory (or a file by that name) already exists
 * @throws {Deno.errors.NotFound} when the template files are not beside this module
 */
export async function initTemplate(lang: string, name: string, opts: InitOptions = {}): Promise<InitResult> {
  if (!TEMPLATE_LANGUAGES.includes(lang)) {
    throw new TypeError(`unknown language ${JSON.stringify(lang)}: use one of ${TEMPLATE_LANGUAGES.join(", ")}`);
  }
  if (!isValidName(name)) {
    throw new TypeError(
      `invalid function name ${JSON.stringify(name)}: use 1-63 lowercase letters, digits and inner hyphens`,
    );
  }
  const dir = opts.dir ?? name;
  const source = join(TEMPLATES_DIR, lang);
  const files = await listFiles(source);

  await Deno.mkdir(dirname(resolve(dir)), { recursive: true });
  try {
    // Not recursive: creating the directory is the check that it did not exist, with no race.
    await Deno.mkdir(dir);
  } catch (err) {
    if (err instanceof Deno.errors.AlreadyExists) {
      throw new Deno.errors.AlreadyExists(`${JSON.stringify(dir)} already exists: not overwriting it`, { cause: err });
    }
    throw err;
  }
  try {
    for (const file of files) {
      const from = join(source, file);
      const to = join(dir, file);
      const text = (await Deno.readTextFile(from)).replace(PLACEHOLDER, name);
      await Deno.mkdir(dirname(to), { recursive: true });
      await Deno.writeTextFile(to, text, { createNew: true });
      const mode = (await Deno.stat(from)).mode;
      if (mode !== null) await Deno.chmod(to, mode & 0o777);
    }
  } catch (err) {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw err;
  }
  return { dir, files };
}

/** The regular files under `root`, as sorted relative paths. */
async function listFiles(root: string, at = root): Promise<string[]> {
  const files: string[] = [];
  for await (const entry of Deno.readDir(at)) {
    const path = join(at, entry.name);
    if (entry.isDirectory) files.push(...await listFiles(root, path));
    else if (entry.isFile) files.push(relative(root, path));
  }
  return files.sort();
}
