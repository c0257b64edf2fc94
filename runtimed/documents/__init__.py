"""The notebook and runtime documents (Automerge), JSON values, sync wire helpers and output
manifest helpers. Pure: no sockets, no files, no event loop."""
