"""`cram export`: a crammer model folder -> a native Hugging Face folder (`modernbert`, `bert`) or ONNX, each
checked output for output against the crammer model before the command reports success."""
