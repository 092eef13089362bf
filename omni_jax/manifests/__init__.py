"""Manifests of the public benchmarks: `omni-jax manifest` reads a dataset's own label files
(`readers`, one per layout; `formats`, the table of layouts and class tables) and writes the
manifest of one phase (`job`) in the project's words (`vocabulary`). docs/data.md."""
