"""What lives on disk: ``.ipynb`` checkpoints and the persisted Automerge documents."""
