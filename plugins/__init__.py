"""jaxforge's built-in plugins, registered through entry points in pyproject.toml exactly as a
third-party package's would be. They import only the public API of `framework`."""
