"""WD14 tagging: model files and ONNX session (model, runtime), labels (tags), preprocess, postprocess,
caption files (captions) and the folder pipeline (pipeline). Needs onnxruntime (+ huggingface_hub to download)."""
