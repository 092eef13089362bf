"""What the tests and the benchmarks share, never imported by the package's jobs: the PyTorch
references of our models, clips made from a real photograph with their exact face boxes, and a
scripted OpenAI-compatible server on localhost."""
