"""The config file (YAML, the only yaml importer) and the settings of `logvold serve`."""
