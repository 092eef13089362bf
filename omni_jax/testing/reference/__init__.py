"""PyTorch references of parts transformers does not ship, for the parity tests and the
benchmarks (torch comes with the `convert` and `test` extras; nothing else imports this)."""
