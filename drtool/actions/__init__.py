"""One module per action: each orchestrates one user-facing job and returns a result dict."""
