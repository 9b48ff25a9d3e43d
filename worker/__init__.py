"""The worker: loads a model once, decodes and batches images, serves them over HTTP."""
