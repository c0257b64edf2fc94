// Entry point of the notebook page: load Automerge's wasm (the slim entry: no bundler
// plugin, the .wasm file is served from /static), make the replica, connect, show the view.

import * as A from "@automerge/automerge/slim";
import { openSocket, Replica } from "./replica";
import { NotebookView } from "./view";
import { renderOutput } from "./outputs";
import { installWidgets } from "./widgets";

async function boot(): Promise<void> {
  const root = document.getElementById("app");
  if (!root) return;
  const notebookId = root.dataset.notebookId;
  if (!notebookId) return;
  const version = root.dataset.assetVersion ?? "";
  performance.mark("rt:boot");
  // The wasm (preloaded by the page's <link rel=preload>) compiles while the WebSocket
  // opens and the saved document arrives: neither waits for the other.
  const wasm = A.initializeWasm(fetch(`/static/automerge.wasm?v=${version}`) as any);
  const early = openSocket(notebookId, true);
  await wasm;
  performance.mark("rt:wasm-ready");
  const replica = new Replica(notebookId);
  installWidgets(replica, renderOutput); // widget views follow the runtime document's comms
  const view = new NotebookView(replica, root.dataset.nonce ?? "", root);
  // For tests and benchmarks: the replica, never the view, holds the document.
  (window as any).runtimed = { replica, view, A };
  replica.connect(early);
}

boot().catch((err) => {
  const root = document.getElementById("app");
  if (root) {
    root.replaceChildren();
    const p = document.createElement("p");
    p.className = "boot-error";
    p.textContent = `The notebook page could not start: ${err?.message ?? err}`;
    root.append(p);
  }
});
