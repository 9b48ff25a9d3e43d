"""Model tooling, apart from serving: everything that needs TensorFlow. `python -m
image_cluster.models build|import|retrain` (or `image-cluster models ...`).

- build (image_cluster/models/default_model.py): the default model, EfficientNet-Lite0 with its
  ImageNet weights (efficientnet_lite.py builds the network, torch_legacy.py reads the
  weights without torch); --quantise adds its integer variants (quantise.py).
- import (image_cluster/models/importer.py): a Keras .keras/.h5 file, a SavedModel directory, a
  .tflite or an .onnx file becomes the next version of a model, checked first.
- retrain (image_cluster/models/retrain.py): a folder of your photos, one sub-folder per class,
  becomes a new model: the default model's backbone with a new classifier head.

Import and retrain write through worker/repository.py's atomic path, so a running worker's hot swap
picks the new version up safely, and a refusal leaves nothing behind.
"""
