"""The gateway front process: public HTTP API, routing by SIGNATURE."""
