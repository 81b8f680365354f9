"""Support processes: plain scripts kept alive next to the endpoint servers."""
