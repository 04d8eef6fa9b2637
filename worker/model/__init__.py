"""The model core: providers, the ONNX Runtime session, batching and pooling."""
