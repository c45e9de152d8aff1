"""What a board or a phone runs: never TensorFlow, Keras, tf2onnx or training code (the import
contract edge-without-tensorflow in .importlinter checks it). ``core`` is the TF-free core that the
training side builds on too; ``bench`` measures exported artifacts; ``app`` is the demo web app."""
