"""jaxforge-example: plugins found by jaxforge through the entry points in pyproject.toml.

Importing this package imports no plugin module and starts no JAX backend; jaxforge imports each
module the first time a config names one of its plugins.
"""
