import { assert, assertEquals, assertRejects, assertStringIncludes } from "../../tests/assert.ts";
import { join } from "node:path";
import { initTemplate, TEMPLATE_LANGUAGES } from "./init.ts";

const TEMPLATES = new URL("../../templates/", import.meta.url);

/** A fresh temporary directory, removed when disposed. */
async function tempDir(): Promise<AsyncDisposable & { path: string }> {
  const path = await Deno.makeTempDir({ prefix: "faasd-init-test-" });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

Deno.test("initTemplate() knows exactly the languages templates/ has folders for", async () => {
  const folders: string[] = [];
  for await (const e of Deno.readDir(TEMPLATES)) if (e.isDirectory) folders.push(e.name);
  assertEquals([...TEMPLATE_LANGUAGES].sort(), folders.sort());
});

for (const lang of TEMPLATE_LANGUAGES) {
  Deno.test(`initTemplate() writes the ${lang} template with the name filled in and build.sh executable`, async () => {
    await using tmp = await tempDir();
    const dir = join(tmp.path, "my-fn");
    const result = await initTemplate(lang, "my-fn", { dir });
    assertEquals(result.dir, dir);
    for (const required of ["Containerfile", "Containerfile.local", "README.md", "build.sh"]) {
      assert(result.files.includes(required), `${lang}: ${required} missing from ${result.files}`);
    }
    const written: string[] = [];
    for await (const e of Deno.readDir(dir)) written.push(e.name);
    assertEquals(written.sort(), result.files);
    for (const file of result.files) {
      const text = await Deno.readTextFile(join(dir, file));
      assert(!text.includes("{{"), `${lang}/${file} still has a placeholder`);
    }
    assertStringIncludes(await Deno.readTextFile(join(dir, "build.sh")), "TAG=${TAG:-localhost/my-fn:latest}");
    assertStringIncludes(
      await Deno.readTextFile(join(dir, "README.md")),
      `faas new localhost/my-fn:latest --name my-fn${lang === "http" ? " --http-port 8080" : ""}`,
    );
    assertEquals((await Deno.stat(join(dir, "build.sh"))).mode! & 0o111, 0o111);
  });
}

Deno.test("initTemplate() writes ./NAME by default", async () => {
  await using tmp = await tempDir();
  const cwd = Deno.cwd();
  Deno.chdir(tmp.path);
  try {
    const { dir, files } = await initTemplate("c", "hello");
    assertEquals(dir, "hello");
    assert(files.includes("handler.c"));
    assertStringIncludes(await Deno.readTextFile(join(tmp.path, "hello", "handler.c")), `"hello"`);
  } finally {
    Deno.chdir(cwd);
  }
});

Deno.test("initTemplate() creates missing parent directories", async () => {
  await using tmp = await tempDir();
  const { files } = await initTemplate("python", "fn", { dir: join(tmp.path, "a", "b", "fn") });
  assert(files.includes("handler.py"));
  assertStringIncludes(await Deno.readTextFile(join(tmp.path, "a", "b", "fn", "handler.py")), `"fn"`);
});

Deno.test("initTemplate() refuses an unknown language, listing the known ones", async () => {
  await using tmp = await tempDir();
  const err = await assertRejects(() => initTemplate("cobol", "fn", { dir: join(tmp.path, "fn") }), TypeError);
  for (const lang of TEMPLATE_LANGUAGES) assertStringIncludes(err.message, lang);
  assertStringIncludes(err.message, "cobol");
  assertEquals([...Deno.readDirSync(tmp.path)], []);
});

Deno.test("initTemplate() refuses a language that only names a path", async () => {
  await using tmp = await tempDir();
  for (const lang of ["", "..", "../templates/c", "C"]) {
    await assertRejects(() => initTemplate(lang, "fn", { dir: join(tmp.path, "fn") }), TypeError);
  }
});

Deno.test("initTemplate() refuses an invalid name", async () => {
  await using tmp = await tempDir();
  for (const name of ["", "Hello", "-fn", "fn-", "a_b", "a/b", "x".repeat(64), "{{name}}"]) {
    const err = await assertRejects(() => initTemplate("go", name, { dir: join(tmp.path, "fn") }), TypeError);
    assertStringIncludes(err.message, "invalid function name");
  }
  assertEquals([...Deno.readDirSync(tmp.path)], []);
});

Deno.test("initTemplate() refuses a directory that exists, leaving its content alone", async () => {
  await using tmp = await tempDir();
  const dir = join(tmp.path, "fn");
  await Deno.mkdir(dir);
  await Deno.writeTextFile(join(dir, "build.sh"), "mine");
  const err = await assertRejects(() => initTemplate("c", "fn", { dir }), Deno.errors.AlreadyExists);
  assertStringIncludes(err.message, "already exists");
  assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["build.sh"]);
  assertEquals(await Deno.readTextFile(join(dir, "build.sh")), "mine");
});

Deno.test("initTemplate() refuses a file where the directory would go", async () => {
  await using tmp = await tempDir();
  const path = join(tmp.path, "fn");
  await Deno.writeTextFile(path, "mine");
  await assertRejects(() => initTemplate("http", "fn", { dir: path }), Deno.errors.AlreadyExists);
  assertEquals(await Deno.readTextFile(path), "mine");
});
