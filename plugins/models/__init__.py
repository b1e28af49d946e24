"""Built-in model plugins: cnn (the Keras MNIST tutorial CNN), mlp, resnet."""
