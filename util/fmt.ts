// Formats generated Markdown, JSON and SVG the way `deno fmt` (and `deno task check`) wants them, so
// committed results and the README's generated section pass `deno fmt --check`. Falls back to the
// text as given when the formatter cannot run.

const ROOT = new URL("../", import.meta.url).pathname;

export async function denoFmt(text: string, ext: "md" | "json" | "svg"): Promise<string> {
  try {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["fmt", "--ext", ext, "-"],
      cwd: ROOT,
      stdin: "piped",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(text));
    await writer.close();
    const out = await child.output();
    return out.success ? new TextDecoder().decode(out.stdout) : text;
  } catch {
    return text;
  }
}
