"""Bring your own model into the repository: `python -m worker.models import|retrain`.

- import (worker/models/importer.py): a Keras .keras/.h5 file, a SavedModel directory, a
  .tflite or an .onnx file becomes the next version of a model, checked first.
- retrain (worker/models/retrain.py): a folder of your photos, one sub-folder per class,
  becomes a new model: the default model's backbone with a new classifier head.

Both write through worker/repository.py's atomic path, so a running worker's hot swap
picks the new version up safely, and a refusal leaves nothing behind.
"""
