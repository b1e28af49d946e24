"""Built-in dataset plugins: digits (scikit-learn's bundled 8x8 digits), synthetic."""
