"""The bottom layer: what every package shares (the user-error type, config-field docs, the device choice)."""
