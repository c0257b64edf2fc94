// The code editor (CodeMirror, two thirds of the page's code) is a separate chunk
// (build.mjs): the page loads and shows its replica first, then imports the editor once.

export type EditorModule = typeof import("./editor");

let loaded: EditorModule | null = null;
let loading: Promise<EditorModule> | null = null;

/** The editor module if it has been loaded, else null (call loadEditor). */
export function editorModule(): EditorModule | null {
  return loaded;
}

export function loadEditor(): Promise<EditorModule> {
  // The other bundle (build.mjs), at the same version as this one (app.js?v=<hash>).
  const url = new URL("./editor.js" + new URL(import.meta.url).search, import.meta.url).href;
  loading ??= (import(url) as Promise<EditorModule>).then(
    (m) => (loaded = m),
    (err) => {
      loading = null; // a later use tries again
      throw err;
    },
  );
  return loading;
}
