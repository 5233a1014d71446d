// File-system checks the tools and the server share.

/** Whether anything (file or directory) exists at `path`. */
export function pathExists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}
