"""Reports of a ``speechprune run``: a self-contained HTML page and the same content as Markdown."""
