"""Built-in model plugins: cnn (the Keras MNIST tutorial CNN), cnn_nnx (the same in
Flax NNX), mlp, resnet."""
