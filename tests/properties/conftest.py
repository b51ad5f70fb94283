"""Configuration of the oracle's own tests: pytester for the plugin tests."""

pytest_plugins = ["pytester"]
